"""A config timed as it trains and evaluates on this machine: a sweep trial's inference figures and a study's
arms, interleaved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ablations.bench.devices import environment
from ablations.bench.method import Method
from ablations.bench.models import build_evaluated, build_ours
from ablations.bench.runner import bench_model, bench_models
from ablations.config import ExperimentConfig
from ablations.results import names

TORCH_PRECISION = {"32-true": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16"}


def trial_method(config: ExperimentConfig, mode: str = "infer", *, warmup: int = 3, iters: int = 10, repeats: int = 1):
    """How ``config`` trains and evaluates on this machine (its device, precision, layout, cuDNN autotuning)."""
    t = config.train
    gpu = t.uses_gpu()
    return Method(
        mode=mode,
        precision=TORCH_PRECISION[t.resolved_precision(gpu)],
        channels_last=t.resolved_channels_last(gpu),
        cudnn_benchmark=t.resolved_cudnn_benchmark(gpu),
        warmup=warmup,
        iters=iters,
        repeats=repeats,
    )


def _crop(config: ExperimentConfig) -> tuple[int, int]:
    crop = config.data.crop_size or config.data.image_size
    return crop, crop


def inference_figures(config: ExperimentConfig, *, warmup: int = 3, iters: int = 10) -> dict[str, Any]:
    """Inference images/s, latency and peak memory of ``config`` as trained and evaluated (its device, precision,
    layout, eval output stride, scales and flip) at the training crop and evaluation batch — the figures each
    sweep trial stores next to its mIoU."""
    row = bench_model(
        "trial",
        build_evaluated(config),
        device=torch.device("cuda" if config.train.uses_gpu() else "cpu"),
        input_size=_crop(config),
        batch_size=config.data.val_batch_size or config.data.batch_size,
        method=trial_method(config, warmup=warmup, iters=iters),
        num_classes=config.head.num_classes,
    )
    if "error" in row:
        return {names.INFER_ERROR: row["error"]}
    return {
        names.INFER_IPS: row["images_per_s"],
        names.INFER_LATENCY_MS: row["latency_ms"],
        names.INFER_PEAK_MB: row["peak_memory_mb"],
        names.INFER_MACS: row["macs"],
    }


def bench_arms(
    configs: Sequence[tuple[str, ExperimentConfig]], *, warmup: int = 3, iters: int = 10, repeats: int = 5
) -> dict[str, Any]:
    """The speed of a study's arms, comparable with each other: every arm's training step (at its crop and
    batch) and its evaluation (eval output stride, scales, flip, at the evaluation batch) in one process,
    interleaved repeat by repeat (:func:`bench_models`), so the ratios between arms hold whatever else the
    machine is doing. Returns ``{"environment", "rows"}``; a row per arm and mode."""
    first = configs[0][1]
    device = torch.device("cuda" if first.train.uses_gpu() else "cpu")
    rows: list[dict[str, Any]] = []
    for mode in ("train", "infer"):
        entries = [
            (arm, (lambda c=c: build_ours(c)) if mode == "train" else (lambda c=c: build_evaluated(c)),
             trial_method(c, mode, warmup=warmup, iters=iters, repeats=repeats))
            for arm, c in configs
        ]  # fmt: skip
        d = first.data
        batch = d.batch_size if mode == "train" else (d.val_batch_size or d.batch_size)
        rows += bench_models(
            entries, device=device, input_size=_crop(first), batch_size=batch, num_classes=first.head.num_classes
        )
    return {"environment": environment(device), "rows": rows}
