"""The training *system*: loss, optimiser, schedule, evaluation protocol and metrics. No architecture here —
the network comes from :func:`ablations.model.build_model`, and everything it is comes from the config."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ablations.config import ExperimentConfig
from ablations.data import IGNORE_INDEX
from ablations.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ablations.model import build_model
from ablations.results import names
from ablations.training import crf
from ablations.training.inference import predict_probabilities, rescale
from ablations.training.metrics import SegmentationMetrics


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, hard_pixel_fraction: float = 1.0) -> torch.Tensor:
    """Cross-entropy over labelled pixels; with ``hard_pixel_fraction`` < 1 only the hardest pixels count
    (TF DeepLab ``top_k_percent_pixels``, detectron2 ``DeepLabCE``)."""
    losses = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    losses = losses[target != IGNORE_INDEX]
    if losses.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph; a crop of only ignore pixels teaches nothing
    if hard_pixel_fraction < 1.0:
        losses = losses.topk(max(1, int(losses.numel() * hard_pixel_fraction))).values
    return losses.mean()


def poly_schedule(step: int, *, max_steps: int, power: float, warmup_steps: int = 0) -> float:
    """Learning-rate factor: linear warm-up, then (1 − step/max_steps)^power (DeepLab v2 §4.1, TPAMI Table 2)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (1.0 - min(step, max_steps) / max_steps) ** power


def step_schedule(step: int, *, every: int, gamma: float, warmup_steps: int = 0) -> float:
    """Learning-rate factor of the step policy: linear warm-up, then ×``gamma`` every ``every`` iterations
    (DeepLab v1/v2 §4.1: ×0.1 every 2,000; TPAMI Table 2's "step")."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** (step // every)


def lr_factor(step: int, t) -> float:
    """The learning-rate factor at ``step`` under ``train.lr_policy`` (a :class:`~ablations.config.TrainConfig`)."""
    if t.lr_policy == "step":
        return step_schedule(step, every=t.resolved_lr_step, gamma=t.lr_gamma, warmup_steps=t.warmup_steps)
    return poly_schedule(step, max_steps=t.max_steps, power=t.poly_power, warmup_steps=t.warmup_steps)


def multi_scale_logits(
    network: nn.Module, images: torch.Tensor, scales: tuple[float, ...], *, upsample: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DeepLab v2's multi-scale input training (MSC, TPAMI §4.3, Table 4): the network (shared weights) on the
    input resized to each scale; each scale's score map brought to the scale-1 map's grid (bilinear); and their
    element-wise maximum, the fused map. Returns (the per-scale maps on that grid, the fused map)."""
    outputs = [network(rescale(images, scale), upsample=upsample) for scale in scales]
    grid = outputs[list(scales).index(1.0)].shape[-2:]
    outputs = [
        o if o.shape[-2:] == grid else F.interpolate(o, size=grid, mode="bilinear", align_corners=False)
        for o in outputs
    ]
    return outputs, torch.stack(outputs).amax(0)


def subsample_labels(target: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """Labels ``(B, H, W)`` on a logits grid of ``size`` at ``stride``: every s-th pixel (nearest; cell i is
    centred on pixel i·s), ignore labels kept — v2's loss on labels subsampled by the output stride."""
    sampled = target[:, ::stride, ::stride][:, : size[0], : size[1]]
    if sampled.shape[-2:] != tuple(size):
        raise ValueError(f"labels of {tuple(target.shape[-2:])} do not subsample onto logits of {tuple(size)}")
    return sampled


class SegmentationSystem(pl.LightningModule):
    """Trains and evaluates one point of the design space.

    Args:
        config: the experiment config as a plain dict (so checkpoints restore it with ``load_from_checkpoint``).
        class_names: the dataset's class names, for per-class IoU keys.
        size_buckets: whether validation batches carry the synthetic benchmark's size map.
    """

    def __init__(self, config: dict[str, Any], class_names: tuple[str, ...], size_buckets: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = ExperimentConfig.from_dict(config)
        self.model = build_model(self.config)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = self.config.train.bn_momentum
                if self.config.train.freeze_bn:
                    module.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.val_metrics = SegmentationMetrics(
            self.config.head.num_classes, class_names=tuple(class_names), size_buckets=size_buckets
        )
        # eval.crf: the metrics of the same predictions before the CRF, and the CRF's time per image.
        self.pre_crf_metrics = (
            SegmentationMetrics(self.config.head.num_classes, class_names=tuple(class_names), size_buckets=size_buckets)
            if self.config.eval.crf
            else None
        )
        self._crf: crf.CrfRunner | None = None
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.channels_last = False
        self.resumed_from_step: int | None = None
        self.__dict__["network"] = self.model  # what runs: the model, or its torch.compile wrapper (unregistered)

    def train(self, mode: bool = True) -> SegmentationSystem:
        """``train.freeze_bn``: BatchNorm layers stay in eval mode (running statistics fixed) while training."""
        super().train(mode)
        if mode and self.config.train.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def on_train_start(self) -> None:
        # Lightning trains the modules in the mode they are in (it calls no train()): put frozen BatchNorm in eval.
        if self.config.train.freeze_bn:
            self.train()

    def on_fit_start(self) -> None:
        # The fast path, once the device is known (train.channels_last, train.compile).
        t = self.config.train
        self.channels_last = t.resolved_channels_last(self.device.type == "cuda")
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if t.compile:
            self.__dict__["network"] = torch.compile(self.model)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] → (B, C, H, W) logits
        return self.__dict__["network"](self._normalise(images))

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        # Masks travel as uint8 where the classes fit (training.datamodule); cross_entropy takes int64 targets.
        target = batch["mask"].long()
        t = self.config.train
        network, images = self.__dict__["network"], self._normalise(batch["image"])
        upsample = t.loss_at == "logits"
        if len(t.msc_scales) > 1:  # v2 MSC: every scale's score map and their maximum each carry a loss
            per_scale, fused = multi_scale_logits(network, images, t.msc_scales, upsample=upsample)
            maps = [*per_scale, fused]
        else:
            maps = [network(images, upsample=upsample)]
        if not upsample:
            stride = 4 if self.model.decoder is not None else self.model.output_stride
            target = subsample_labels(target, maps[0].shape[-2:], stride)
        losses = [segmentation_loss(m, target, hard_pixel_fraction=t.hard_pixel_fraction) for m in maps]
        loss = losses[0] if len(losses) == 1 else sum(losses) / len(losses)
        batch_size = batch["image"].shape[0]
        # A diverged run stops here with the step and value. Checked every step on a CPU (free) and every
        # log_every steps on an accelerator, where reading the loss waits for the device.
        if (loss.device.type == "cpu" or self.global_step % self.config.train.log_every == 0) and not bool(
            torch.isfinite(loss)
        ):
            raise DivergedError(f"training diverged: loss is {loss.item()} at step {self.global_step}")
        self.log(names.TRAIN_LOSS, loss, prog_bar=True, batch_size=batch_size)
        self.log(names.TRAIN_LR, self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    # Evaluation runs at eval.output_stride with rescaled rates (v3 Table 10) and eval.scales / eval.flip.
    def on_validation_epoch_start(self) -> None:
        self._train_output_stride = self.model.output_stride
        self.model.set_output_stride(self.config.eval_output_stride)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        probabilities = predict_probabilities(
            self.__dict__["network"],
            self._normalise(batch["image"]),
            scales=self.config.eval.scales,
            flip=self.config.eval.flip,
            fusion=self.config.eval.fusion,
        )
        target, sizes = batch["mask"].long(), batch.get("size")
        if self.config.eval.crf:  # v1/v2: the dense CRF on the fused softmax, with the image's own RGB
            self._ensure_pre_crf_metrics()
            self.pre_crf_metrics.update(probabilities.max(1).indices, target, sizes)
            if self._crf is None:
                e = self.config.eval
                processes = e.crf_processes if e.crf_processes is not None else self.config.data.num_workers
                self._crf = crf.CrfRunner(crf.CrfSettings.from_eval(e), processes)
            probabilities = self._crf(probabilities, batch["image"])
        # max(1).indices: argmax's first-maximum rule, 20× faster over the class dimension on a CPU.
        self.val_metrics.update(probabilities.max(1).indices, target, sizes)

    def _ensure_pre_crf_metrics(self) -> None:
        # `ablations evaluate --set eval.crf=true` turns the CRF on after the system was built.
        if self.pre_crf_metrics is None:
            m = self.val_metrics
            self.pre_crf_metrics = SegmentationMetrics(
                m.num_classes, class_names=m.class_names, size_buckets=m.size_buckets
            ).to(self.device)

    def on_validation_epoch_end(self) -> None:
        self.model.set_output_stride(self._train_output_stride)
        results = {f"{names.VAL}{k}": v for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        if self.config.eval.crf and self.pre_crf_metrics is not None:
            results.update({f"{names.BEFORE_CRF}{k}": v for k, v in self.pre_crf_metrics.compute().items()})
            self.pre_crf_metrics.reset()
            results[names.CRF_MS] = self._crf.take_ms_per_image() if self._crf is not None else math.nan
        self.log_dict({k: v for k, v in results.items() if not math.isnan(v)})  # NaN: class absent from both
        results["step"] = self.global_step
        self.history.append(results)
        if not self.best or results[names.MIOU] > self.best[names.MIOU]:
            self.best = results

    def teardown(self, stage: str) -> None:
        if self._crf is not None:  # the CRF's process pool, if it started one
            self._crf.close()
            self._crf = None

    # A resumed run continues the validation history of the run it resumes (ablations.training.checkpoints).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ablations"] = {"best": self.best, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ablations", {})
        self.best, self.history = dict(state.get("best", {})), list(state.get("history", []))
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    def configure_optimizers(self):
        t = self.config.train
        trained = [p for p in self.parameters() if p.requires_grad]  # frozen BatchNorm's affine excluded
        optimizer = torch.optim.SGD(trained, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
