"""``ablations bench``: throughput, latency, peak memory, parameters and multiply-adds of any config — and of the
peers' DeepLabs (torchvision, segmentation-models-pytorch) in the same process, on the same settings.

The package, imports flowing one way (each file imports only those above it; :mod:`ablations.hardware` below all):

* ``method``: the method below — a step, its timing, peak memory, multiply-add and FLOP counts;
* ``runner``: models prepared, warmed up and timed interleaved, a row each (``bench_models``);
* ``models``: ours as built and as evaluated, the peers, the standard configs;
* ``devices``: the device, its environment, its default counts and input, its fast path;
* ``trials``: a config as it trains and evaluates (a sweep trial's figures, a study's arms);
* ``tables``: the printed lines, the tables and the report;
* this module: the command's run over configs and peers; every public name above, re-exported.

Method (MMSegmentation's FPS protocol, tightened; ``reference/peers.md``):

* the model and ``rotate`` distinct random inputs are on the device before timing starts: data loading and
  host-to-device copies are **excluded**; the final bilinear resize to the input size is **included** (every
  model here returns logits at the input resolution); argmax is not;
* ``warmup`` steps run first and are not timed (cuDNN autotuning, ``torch.compile`` and allocator growth happen
  there); the time of the first one is reported separately;
* every timed step is bracketed by device synchronisations — ``sync; t0; step; sync; t1`` — so a GPU's
  asynchronous launches cannot make a step look faster than it is;
* ``repeats`` repeats of ``iters`` steps: images/s is the median over repeats of (images / time of the repeat),
  latency the median and 90th percentile over every timed step;
* models compared with each other (a config under several methods, ours and a peer) are all prepared and
  warmed up, then timed **interleaved**, repeat by repeat (A, B, A, B, …), so that a shared machine that slows
  down mid-run shifts all of them alike;
* peak memory on a GPU is the model's weights and inputs plus the most that ``torch.cuda.max_memory_allocated``
  rose above the allocation at the start of any of its warm-up or timed segments (activations, and in training
  gradients and optimiser state); on a CPU it is the most resident memory its steps added above the resident
  memory at the start of a segment (Linux ``VmHWM`` after resetting it, freed heap returned to the system
  first), so weights and inputs are not in it;
* multiply-adds are counted per image of one forward pass (``torch.utils.flop_counter`` on a meta copy, so
  nothing is computed); on a GPU the model FLOP utilisation is the FLOPs of one step (training: forward and
  backward) over the step's median time over the device's dense peak at the row's precision
  (:mod:`ablations.hardware`' datasheet table, else Lightning's ``get_available_flops``; ``peak_flops_source`` says
  which); an fp32 row on a GPU runs its convolutions in TF32 when ``torch.backends.cudnn.allow_tf32`` is on
  (PyTorch's default): its ``tf32`` field says so, its label reads "fp32 (TF32 on)" and its peak is TF32's.
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
