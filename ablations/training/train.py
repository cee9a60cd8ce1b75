"""One training run: config → checked data → Lightning Trainer → ``out_dir`` with the resolved config, the best
checkpoint(s), the last checkpoint (``train.checkpoint_every``) and ``metrics.json``; every run is also a Weights &
Biases run (offline without credentials). A run whose folder holds a last checkpoint of the same config resumes
from it and continues its W&B run (``ablations.training.checkpoints``)."""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ablations import hardware
from ablations.config import ConfigError, ExperimentConfig, TrainConfig
from ablations.geometry.analysis import count_flops, count_params
from ablations.hardware import cpu_name, synchronize
from ablations.ioutil import check_writable_dir
from ablations.results import names
from ablations.results.jsonable import json_safe
from ablations.training import checkpoints as resume
from ablations.training.datamodule import SegmentationDataModule
from ablations.training.faults import InjectFault
from ablations.training.system import SegmentationSystem


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; otherwise online with credentials (``WANDB_API_KEY`` or a netrc entry), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def make_logger(
    config: ExperimentConfig,
    out_dir: Path,
    *,
    name: str | None,
    group: str | None,
    extra: dict[str, Any] | None,
    run_id: str | None = None,
) -> WandbLogger:
    mode = wandb_mode()
    save_dir = Path(os.environ.get("WANDB_DIR") or out_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=os.environ.get("WANDB_PROJECT", "ablations"),
        name=name,
        group=group,
        id=run_id,
        resume="allow" if run_id else None,
        save_dir=str(save_dir),
        offline=mode == "offline",
        mode=mode,
        config={"config": config.to_dict(), **(extra or {})},
        job_type="train",
    )


class Throughput(pl.Callback):
    """Where a run's time goes, and how fast it trains. Every optimisation step (forward, backward and update) is
    timed between device synchronisations: their sum is ``train_time_s`` (warm-up steps included); the time
    between the end of one step and the start of the next (the loader's wait and the hooks in between: logging,
    ``last.ckpt`` writes; validation and the best checkpoint's write excluded) sums to ``data_wait_s``. Training
    images/s and the median step time are of the steps after the first ``warmup``. On a GPU, model FLOP
    utilisation: the FLOPs of a step (:func:`ablations.geometry.analysis.count_flops`, forward and backward on a
    meta build) over the median step time over the device's dense peak
    (:func:`ablations.hardware.device_peak_flops`: the project's datasheet table, else Lightning's figure)."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.step_times: list[float] = []
        self.images = 0
        self.train_time_s = 0.0
        self.data_wait_s = 0.0
        self._start = 0.0
        self._last_end: float | None = None
        self.flops_per_step: int | None = None
        self.available_flops: float | None = None
        self.peak_source: str | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            from ablations.model import build_model

            d = module.config.data
            crop = d.crop_size or d.image_size
            with torch.device("meta"):  # a meta build of its own: the backward pass leaves gradients on it
                meta = build_model(module.config, load_weights=False)
            self.flops_per_step = count_flops(meta, (crop, crop), batch=d.batch_size, backward=True)
            self.set_peak(module.device, trainer.precision)

    def set_peak(self, device: torch.device, precision: str) -> None:
        self.available_flops, self.peak_source = hardware.device_peak_flops(device, precision)

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        synchronize(module.device)
        self._start = time.perf_counter()
        if self._last_end is not None:
            self.data_wait_s += self._start - self._last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        synchronize(module.device)
        self._last_end = time.perf_counter()
        elapsed = self._last_end - self._start
        self.train_time_s += elapsed
        if trainer.global_step > self.warmup:
            self.step_times.append(elapsed)
            # Every DDP rank trains a batch of the same size in the same (gradient-synchronised) step.
            self.images += batch["image"].shape[0] * trainer.world_size
            if len(self.step_times) % trainer.log_every_n_steps == 0:
                module.log_dict(self.speed(), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, module) -> None:
        self._last_end = None  # validation is not a wait for data

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn == "fit":
            self._last_end = time.perf_counter()  # after the best checkpoint's write (ModelCheckpoint runs first)

    def speed(self) -> dict[str, float]:
        """Images/s, median step time and (on a GPU with a known peak) MFU of the steps after warm-up."""
        if not self.step_times:
            return {}
        total = sum(self.step_times)
        result = {names.TRAIN_IPS: self.images / total, names.TRAIN_STEP_S: statistics.median(self.step_times)}
        if self.flops_per_step and self.available_flops:
            result[names.TRAIN_MFU] = self.flops_per_step / result[names.TRAIN_STEP_S] / self.available_flops
        return result

    def summary(self) -> dict[str, Any]:
        """:meth:`speed`, the time in steps and between them, and the peak MFU is taken against (and its source)."""
        busy = self.data_wait_s + self.train_time_s
        result: dict[str, Any] = {
            **self.speed(),
            names.TRAIN_TIME_S: self.train_time_s,
            names.DATA_WAIT_S: self.data_wait_s,
            names.DATA_WAIT_SHARE: self.data_wait_s / busy if busy > 0 else None,
        }
        if self.available_flops:
            result[names.PEAK_FLOPS] = self.available_flops
            result[names.PEAK_FLOPS_SOURCE] = self.peak_source
        return result


def check_devices(t: TrainConfig) -> None:
    """Refuse, in one line, an accelerator this machine lacks or more GPUs than it has, before any work: Lightning
    would refuse them at ``Trainer(...)`` with a traceback (``MisconfigurationException``). Checked here, where the
    run starts, not in the config: a study resolved for a GPU machine is also read (reports) on CPU-only ones."""
    if t.accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ConfigError(f"train.accelerator={t.accelerator!r}: no CUDA GPU is visible here; use auto or cpu")
    elif t.accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("train.accelerator='mps': no Apple MPS device is available here; use auto or cpu")
        available = 1
    else:
        available = torch.cuda.device_count() if t.accelerator == "auto" and torch.cuda.is_available() else None
    if available is not None and t.devices > available:
        raise ConfigError(f"train.devices={t.devices}: allowed 1 … {available}, the {t.accelerator} devices here")


def check_attention_memory(config: ExperimentConfig) -> None:
    """Refuse, in one line and before any work, a non-local block (``context.kind=nonlocal|aspp+nonlocal``) whose
    attention matrices alone — B·(h·w)² fp32 values for one training batch at the training crop (Wang et al. 2018,
    :mod:`ablations.model.nonlocal_block`) — exceed the memory of the device the run trains on: the CUDA GPU's
    total memory (``torch.cuda.get_device_properties``), else the machine's RAM (``os.sysconf``). The backward pass
    keeps them too, so a run that passes may still run out; one that fails cannot run at all."""
    c = config.context
    if c.kind not in ("nonlocal", "aspp+nonlocal"):
        return
    from ablations.geometry.describe import feature_size
    from ablations.model.nonlocal_block import attention_bytes

    crop = config.data.crop_size or config.data.image_size
    height, width = feature_size(config, (crop, crop))
    batch = config.data.batch_size
    need = attention_bytes(height, width, batch)
    if config.train.uses_gpu():
        index = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        where = f"the GPU's memory ({torch.cuda.get_device_name(index)})"
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = "this machine's RAM"
    if need > total:
        raise ConfigError(
            f"context.kind={c.kind!r}: the non-local attention matrices of one training batch need "
            f"{need / 2**30:,.1f} GiB (data.batch_size={batch} × ({height}·{width})² fp32 at data.crop_size={crop}, "
            f"output stride {config.backbone.output_stride}), more than the {total / 2**30:,.1f} GiB of {where}; "
            "use a smaller crop or batch, or a larger backbone.output_stride"
        )


def lightning_deterministic(t: TrainConfig, gpu: bool) -> bool | str:
    """Lightning's ``deterministic=`` for ``train.deterministic`` resolved: deterministic algorithms, warning (not
    failing) at an op that has none (bilinear upsampling's backward on CUDA), or none of that."""
    return "warn" if t.resolved_deterministic(gpu) else False


def gpu_settings(t: TrainConfig, gpu: bool) -> dict[str, Any]:
    """How the run's kernels were chosen: determinism, cuDNN autotuning and (on a GPU) whether fp32 convolutions
    and matmuls may run in TF32 (None on a CPU, where TF32 does not exist)."""
    tf32 = hardware.tf32_state() if gpu else {"cudnn": None, "matmul": None}
    return {
        names.DETERMINISTIC: t.resolved_deterministic(gpu),
        names.CUDNN_BENCHMARK: t.resolved_cudnn_benchmark(gpu),
        names.TF32_CUDNN: tf32["cudnn"],
        names.TF32_MATMUL: tf32["matmul"],
    }


def device_name(module: pl.LightningModule) -> str:
    if module.device.type == "cuda":
        return torch.cuda.get_device_name(module.device)
    return cpu_name()


def peak_memory_mb(module: pl.LightningModule) -> float:
    if module.device.type == "cuda":
        return torch.cuda.max_memory_allocated(module.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak resident set of this process (KiB)


def train(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    name: str | None = None,
    group: str | None = None,
    wandb_extra: dict[str, Any] | None = None,
    callbacks: Sequence[pl.Callback] = (),
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train ``config``; return (and write to ``out_dir/metrics.json``) the metrics of the last validation (the
    result; the best validation's step, mIoU and checkpoint are kept as a record, ``history`` holds every one).

    When ``out_dir`` holds a last checkpoint of this config, training resumes from it; one from another config,
    or one that does not load, is left alone and the run starts clean in a new folder (``metrics["out_dir"]``).
    """
    started = time.perf_counter()
    check_writable_dir("out_dir", out_dir, ConfigError)  # before any work (the CLI checks --out the same way)
    check_devices(config.train)
    check_attention_memory(config)
    if config.train.threads is not None:  # a fixed float path: the same thread count, the same summation order
        torch.set_num_threads(config.train.threads)
    torch.backends.mkldnn.enabled = config.train.onednn  # set every run: a sweep's next trial must not inherit it
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    data = SegmentationDataModule(config)
    data.setup("fit")  # checks the dataset now, before a logger, a Trainer or a step exists
    out_dir, ckpt_path = _resume_decision(config, Path(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP's launcher re-runs this function in every process
        (out_dir / "config.yaml").write_text(config.to_yaml())
    system = SegmentationSystem(config.to_dict(), data.class_names, size_buckets=data.has_size_buckets)
    t = config.train
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step}-mIoU{val/mIoU:.4f}",
        auto_insert_metric_name=False,
        monitor=names.MIOU,
        mode="max",
        save_top_k=t.checkpoints,
    )
    gpu = t.uses_gpu()
    precision = t.resolved_precision(gpu)
    throughput = Throughput()
    run_id = resume.wandb_run_id(out_dir, ckpt_path is not None) if rank_zero_only.rank == 0 else None
    logger = make_logger(config, out_dir, name=name, group=group, extra=wandb_extra, run_id=run_id)
    val_interval = t.val_every or t.max_steps
    last = resume.LastCheckpoint(out_dir, t.checkpoint_every, val_interval) if t.checkpoint_every else None
    extra_callbacks = [c for c in (last, *InjectFault.from_env(out_dir)) if c is not None]
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        val_check_interval=val_interval,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=precision,
        benchmark=t.resolved_cudnn_benchmark(gpu),
        logger=logger,
        callbacks=[checkpoint, throughput, resume.RandomState(), *extra_callbacks, *callbacks],
        plugins=[resume.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # both loaders give each rank its share themselves (data.module)
        log_every_n_steps=t.log_every,
        deterministic=lightning_deterministic(t, gpu),
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    try:
        trainer.fit(system, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except BaseException:
        # Close this W&B run as failed, so that the next run in this process starts clean (sweeps).
        run = getattr(logger, "_experiment", None)
        if run is not None and hasattr(run, "finish"):
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
        raise
    rank_zero = trainer.is_global_zero  # every rank returns the metrics; only rank 0 touches W&B and files
    wall_time_s = time.perf_counter() - started
    timing = throughput.summary()
    final = system.history[-1] if system.history else {}
    metrics = {
        **final,  # the result: the last validation (train.val_every divides max_steps, so the last step's)
        names.FINAL_STEP: final.get("step"),
        names.BEST_STEP: system.best.get("step"),
        names.BEST_MIOU: system.best.get(names.MIOU),
        names.THREADS: torch.get_num_threads(),
        names.ONEDNN: torch.backends.mkldnn.enabled,
        **timing,
        names.OVERHEAD_S: wall_time_s - timing[names.TRAIN_TIME_S],
        "peak_memory_mb": peak_memory_mb(system),
        "params": count_params(system.model),
        "device": device_name(system),
        "precision": precision,
        "channels_last": system.channels_last,
        "compile": t.compile,
        **gpu_settings(t, gpu),
        "seed": t.seed,
        "best_checkpoint": checkpoint.best_model_path,
        "wall_time_s": wall_time_s,
        "resumed_from_step": system.resumed_from_step,
        "out_dir": str(out_dir),
        # Another rank's logger.experiment is Lightning's stand-in, whose every attribute is a no-op function.
        "wandb_run_dir": getattr(logger.experiment, "dir", None) if rank_zero else None,
        "history": system.history,
    }
    metrics.pop("step", None)
    if rank_zero:  # one W&B run and one file per run, whatever the number of processes
        # The run's summary holds the last validation's metrics (the result), with the best one's step and mIoU
        # as a record; never a maximum over steps.
        summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if metrics.get(names.PEAK_FLOPS_SOURCE):
            summary[names.PEAK_FLOPS_SOURCE] = metrics[names.PEAK_FLOPS_SOURCE]
        logger.experiment.summary.update(summary)
        logger.finalize("success")
        if hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
        (out_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    return metrics


_DECISION = "ABLATIONS_RESUME_DECISION"


def _resume_decision(config: ExperimentConfig, out_dir: Path) -> tuple[Path, Path | None]:
    """Where this run trains and what it resumes from, decided once per run: DDP's launcher re-runs ``train`` in
    every rank, and the ranks must agree (a new folder made by rank 0 must not send rank 1 to another)."""
    decided = json.loads(os.environ.get(_DECISION, "{}"))
    # Only a rank the launcher started (LOCAL_RANK > 0) takes rank 0's decision; rank 0 decides afresh each run.
    if os.environ.get("LOCAL_RANK", "0") != "0" and decided.get("asked") == str(out_dir):
        return Path(decided["out"]), (Path(decided["ckpt"]) if decided["ckpt"] else None)
    chosen, ckpt, message = resume.resume_point(config.to_dict(), out_dir)
    if message:
        print(f"ablations: {message}", flush=True)
    os.environ[_DECISION] = json.dumps({"asked": str(out_dir), "out": str(chosen), "ckpt": ckpt and str(ckpt)})
    return chosen, ckpt


def evaluate(checkpoint: str | Path, overrides: Sequence[str] = (), *, progress_bar: bool = False) -> dict[str, Any]:
    """Validate a checkpoint written by :func:`train` with its own config (``overrides`` on top, e.g.
    ``train.devices=2`` or ``eval.output_stride=8``); returns the ``val/*`` metrics. With several devices each
    image is evaluated by one process exactly once and the confusion matrices are summed, so the metrics equal
    a single process's."""
    from ablations.config import ExperimentConfig, apply_override

    checkpoint = Path(checkpoint)
    system = SegmentationSystem.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    data_dict = system.config.to_dict()
    for override in overrides:
        apply_override(data_dict, override)
    config = ExperimentConfig.from_dict(data_dict)
    system.config = config
    system.hparams["config"] = data_dict
    data = SegmentationDataModule(config)
    data.setup("validate")
    t = config.train
    check_devices(t)
    gpu = t.uses_gpu()
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.resolved_precision(gpu),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        benchmark=t.resolved_cudnn_benchmark(gpu),
        deterministic=lightning_deterministic(t, gpu),
    )
    trainer.validate(system, datamodule=data, verbose=False)
    results = dict(system.history[-1])
    results.pop("step", None)
    results["processes"] = trainer.world_size
    return results
