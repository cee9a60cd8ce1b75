"""``ablations bench``: throughput, latency, peak memory, parameters and multiply-adds of any config — and of the
peers' DeepLabs (torchvision, segmentation-models-pytorch) in the same process, on the same settings.

Files, each importing only those above it (:mod:`ablations.hardware` below all): ``method`` (a step, its timing,
peak memory, MAC and FLOP counts), ``runner`` (prepared, warmed up, timed interleaved), ``models`` (ours, the peers,
the standard configs), ``devices`` (the device, its defaults, its fast path), ``trials`` (a config as it trains and
evaluates), ``tables`` (what is printed and written); this module runs configs and peers and re-exports them.

The timing method, step by step (synchronised steps, interleaved repeats, what peak memory and MFU count):
``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablations.bench.devices import (
    CPU_INPUT,
    GPU_INPUT,
    default_counts,
    default_input,
    environment,
    fast_method,
    resolve_device,
)
from ablations.bench.method import (
    MODES,
    PRECISIONS,
    BenchError,
    Method,
    PeakMemory,
    Stepper,
    count_forward_macs,
    count_step_flops,
    make_step,
    peak_flops,
    peak_flops_and_source,
    summarise,
    tf32_enabled,
    time_steps,
)
from ablations.bench.models import (
    PEERS,
    STANDARD_CONTEXTS,
    EvalProtocol,
    LogitsOnly,
    build_evaluated,
    build_ours,
    build_peer,
    standard_configs,
)
from ablations.bench.runner import bench_model, bench_models
from ablations.bench.tables import (
    bench_frame,
    format_report,
    format_row,
    format_table,
    peer_frame,
    peer_ratio,
)
from ablations.bench.trials import TORCH_PRECISION, bench_arms, inference_figures, trial_method
from ablations.config import ExperimentConfig, load_config

__all__ = [
    "CPU_INPUT",
    "GPU_INPUT",
    "MODES",
    "PEERS",
    "PRECISIONS",
    "STANDARD_CONTEXTS",
    "TORCH_PRECISION",
    "BenchError",
    "EvalProtocol",
    "LogitsOnly",
    "Method",
    "PeakMemory",
    "Stepper",
    "bench_arms",
    "bench_frame",
    "bench_model",
    "bench_models",
    "build_evaluated",
    "build_ours",
    "build_peer",
    "configs_from",
    "count_forward_macs",
    "count_step_flops",
    "default_counts",
    "default_input",
    "environment",
    "fast_method",
    "format_report",
    "format_row",
    "format_table",
    "inference_figures",
    "make_step",
    "peak_flops",
    "peak_flops_and_source",
    "peer_frame",
    "peer_ratio",
    "resolve_device",
    "run",
    "standard_configs",
    "summarise",
    "tf32_enabled",
    "time_steps",
    "trial_method",
]


def run(
    configs: Sequence[tuple[str, ExperimentConfig]],
    *,
    device: torch.device,
    input_size: tuple[int, int],
    batch_sizes: Sequence[int],
    methods: Sequence[Method],
    peers: bool | Sequence[str] = False,
    printer: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bench every config under every method (interleaved, see :func:`bench_models`) and, with ``peers`` (True:
    all of :data:`PEERS`; or the names of some), every peer interleaved with its equivalent config of ours;
    returns ``{"environment", "rows", "peer_ratios"}``."""
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    groups: list[tuple[list[tuple[str, Callable[[], nn.Module], Method]], int, str | None]] = []
    for label, config in configs:
        build = lambda c=config: build_ours(c)  # noqa: E731
        groups.append(([(label, build, m) for m in methods], config.head.num_classes, None))
    if peers:
        classes = 21
        for peer in list(PEERS) if peers is True else peers:
            overrides = PEERS[peer]
            ours = load_config(None, [*overrides.items(), ("head.num_classes", classes)])
            entries = []
            for m in methods:
                entries.append((f"ours ≡ {peer}", lambda c=ours: build_ours(c), m))
                entries.append((peer, lambda p=peer: build_peer(p, classes), m))
            groups.append((entries, classes, peer))
    for batch in batch_sizes:
        for entries, classes, peer in groups:
            group_rows = bench_models(
                entries, device=device, input_size=input_size, batch_size=batch, num_classes=classes
            )
            for row in group_rows:
                printer(format_row(row))
            rows += group_rows
            if peer is not None:
                ratios += [peer_ratio(group_rows[i], group_rows[i + 1]) for i in range(0, len(group_rows), 2)]
    return {"environment": environment(device), "rows": rows, "peer_ratios": ratios}


def configs_from(
    config_file: str | None, overrides: Sequence[str], profile: str | None, standard: bool
) -> list[tuple[str, ExperimentConfig]]:
    """The configs to bench: the standard set (on top of the options), or the one config the options describe."""
    if standard:
        return [
            (label, load_config(config_file, [*overrides, *changes.items()], profile=profile))
            for label, changes in standard_configs()
        ]
    config = load_config(config_file, list(overrides), profile=profile)
    return [(Path(config_file).stem if config_file else "config", config)]
