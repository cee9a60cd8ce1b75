"""``ablations bench``: throughput, latency, peak memory, parameters and multiply-adds of any config — and of the
peers' DeepLabs (torchvision, segmentation-models-pytorch) in the same process, on the same settings.

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
  backward) over the step's median time over the device's peak (Lightning's ``get_available_flops``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ablations.config import ExperimentConfig, load_config
from ablations.results import names
from ablations.timing import cpu_name, synchronize

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("infer", "train")
CPU_INPUT = (256, 256)  # default input side on a CPU, where 513² at output stride 8 takes seconds per image
GPU_INPUT = (513, 513)  # the papers' evaluation crop


class BenchError(ValueError):
    """Settings that cannot be benchmarked; the message names the option, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Method:
    """How to time: what runs (mode, precision, layout, compile) and how often."""

    mode: str = "infer"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    warmup: int = 5
    iters: int = 20
    repeats: int = 3
    rotate: int = 3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"--mode {self.mode!r}: allowed {list(MODES)}")
        if self.precision not in PRECISIONS:
            raise BenchError(f"--precision {self.precision!r}: allowed {list(PRECISIONS)}")
        for name in ("iters", "repeats", "rotate"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name} {getattr(self, name)}: must be ≥ 1")
        if self.warmup < 1:
            raise BenchError(f"--warmup {self.warmup}: must be ≥ 1, so that first-step costs are not timed")

    def label(self) -> str:
        parts = [self.mode, self.precision]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("compiled")
        if self.cudnn_benchmark:
            parts.append("cudnn-autotuned")
        return " ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Timing


class Stepper:
    """A step function and its inputs, taken in rotation, run under the timing protocol."""

    def __init__(
        self,
        step: Callable[[Any], Any],
        inputs: Sequence[Any],
        device: torch.device,
        *,
        sync: Callable[[torch.device], None] = synchronize,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.step, self.inputs, self.device, self.sync, self.clock = step, inputs, device, sync, clock
        self.calls = 0

    def _next(self) -> Any:
        value = self.inputs[self.calls % len(self.inputs)]
        self.calls += 1
        return value

    def warm_up(self, steps: int) -> float:
        """Run ``steps`` untimed steps; returns the time of the first one (compilation, autotuning…)."""
        self.sync(self.device)
        start = self.clock()
        self.step(self._next())
        self.sync(self.device)
        first = self.clock() - start
        for _ in range(steps - 1):
            self.step(self._next())
        self.sync(self.device)
        return first

    def timed(self, iters: int) -> list[float]:
        """``iters`` steps, each between two device synchronisations; their times in seconds."""
        times = []
        for _ in range(iters):
            x = self._next()
            self.sync(self.device)
            start = self.clock()
            self.step(x)
            self.sync(self.device)
            times.append(self.clock() - start)
        return times


def summarise(times: Sequence[float], per_repeat: Sequence[float], first_step: float) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "images_per_s": statistics.median(per_repeat),
        "images_per_s_repeats": list(per_repeat),
        "latency_ms": 1000 * statistics.median(times),
        "latency_p90_ms": 1000 * ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
        "first_step_s": first_step,
        "step_times_s": list(times),
    }


def time_steps(
    step: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    device: torch.device,
    images_per_step: int,
    warmup: int,
    iters: int,
    repeats: int,
    sync: Callable[[torch.device], None] = synchronize,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run ``step`` on ``inputs`` in rotation: ``warmup`` untimed steps, then ``repeats`` × ``iters`` timed ones,
    each between two device synchronisations. Returns the per-step times and the summary figures."""
    stepper = Stepper(step, inputs, device, sync=sync, clock=clock)
    first = stepper.warm_up(warmup)
    times: list[float] = []
    per_repeat: list[float] = []
    for _ in range(repeats):
        repeat = stepper.timed(iters)
        times += repeat
        per_repeat.append(images_per_step * iters / sum(repeat))
    return summarise(times, per_repeat, first)


class PeakMemory:
    """Memory the steps inside the ``with`` block add at their peak above what was allocated (GPU) or resident
    (CPU) when it began, in MiB; see the module docstring."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.extra_mb: float | None = None
        self._before: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system, so it is not counted as free
        before = _proc_status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            return self  # not Linux, or not allowed: no CPU figure
        self._before = None if before is None else before / 1024
        return self

    def __exit__(self, *exc) -> None:
        if self._before is None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            kb = _proc_status_kb("VmHWM")
            peak = None if kb is None else kb / 1024
        self.extra_mb = None if peak is None else max(0.0, peak - self._before)


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------------------------
# Counting


def count_forward_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-adds of one forward pass of one image (:func:`ablations.analysis.count_macs`), counted on a
    meta-device copy of ``model`` so that nothing is computed."""
    from ablations.analysis import count_macs

    return count_macs(copy.deepcopy(model).to("meta"), input_size)


def count_step_flops(model: nn.Module, input_size: tuple[int, int], batch: int, mode: str) -> int:
    """FLOPs of one benchmark step (inference: forward; training: forward and backward), on a meta copy."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    x = torch.zeros(batch, 3, *input_size, device="meta")
    if mode == "infer":
        meta.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(x)
    else:
        meta.train()
        with FlopCounterMode(display=False) as counter:
            meta(x).float().sum().backward()
    return counter.get_total_flops()


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = PRECISIONS[precision] or torch.float32
    with contextlib.suppress(Exception):
        return get_available_flops(device, dtype)
    return None


# --------------------------------------------------------------------------------------------------------------
# One model


class LogitsOnly(nn.Module):
    """torchvision's segmentation models return ``{"out": logits, …}``; this returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_step(model: nn.Module, method: Method, device: torch.device) -> Callable[[Any], None]:
    """The function one timed step calls: a forward pass (inference) or forward, loss, backward and an SGD
    update (training)."""
    if method.mode == "infer":
        model.eval()

        def infer(x: torch.Tensor) -> None:
            with torch.inference_mode(), _autocast(device, method.precision):
                model(x)

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=method.precision == "fp16" and device.type == "cuda")

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, target = batch
        with _autocast(device, method.precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return train_step


@dataclasses.dataclass
class _Entry:
    row: dict[str, Any]
    method: Method
    stepper: Stepper | None = None
    flops_per_step: int = 0
    resident_mb: float = 0.0
    first_step: float = 0.0
    times: list[float] = dataclasses.field(default_factory=list)
    per_repeat: list[float] = dataclasses.field(default_factory=list)
    peak_mb: float | None = None

    def fail(self, error: BaseException) -> None:
        if isinstance(error, torch.OutOfMemoryError):
            self.row["error"] = "out of memory"
        else:
            text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            self.row["error"] = f"{type(error).__name__}: {text}"
        self.stepper = None

    def segment(self, device: torch.device, run: Callable[[Stepper], Any]) -> Any:
        """Run part of the protocol under a peak-memory meter; keep the largest peak. None on a failure."""
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = self.method.cudnn_benchmark  # per segment: entries may differ
        try:
            with PeakMemory(device) as memory:
                result = run(self.stepper)
        except (RuntimeError, ValueError) as error:
            self.fail(error)
            return None
        if memory.extra_mb is not None:
            peak = memory.extra_mb + (self.resident_mb if device.type == "cuda" else 0.0)
            self.peak_mb = peak if self.peak_mb is None else max(self.peak_mb, peak)
        return result


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _base_row(name: str, method: Method, batch_size: int, input_size: tuple[int, int], params: int) -> dict:
    return {
        "name": name,
        "mode": method.mode,
        "batch": batch_size,
        "input": list(input_size),
        "precision": method.precision,
        "channels_last": method.channels_last,
        "compile": method.compile,
        "cudnn_benchmark": method.cudnn_benchmark,
        "params": params,
    }


def _prepare(
    name: str,
    model: nn.Module,
    method: Method,
    *,
    device: torch.device,
    input_size: tuple[int, int],
    batch_size: int,
    num_classes: int,
) -> _Entry:
    params = sum(p.numel() for p in model.parameters())
    entry = _Entry(row=_base_row(name, method, batch_size, input_size, params), method=method)
    try:
        entry.row["macs"] = count_forward_macs(model, input_size)
        entry.flops_per_step = count_step_flops(model, input_size, batch_size, method.mode)
        generator = torch.Generator().manual_seed(0)
        format_ = torch.channels_last if method.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=format_)
        images = [
            torch.rand(batch_size, 3, *input_size, generator=generator).to(device).contiguous(memory_format=format_)
            for _ in range(method.rotate)
        ]
        resident = [*model.parameters(), *model.buffers(), *images]
        if method.mode == "train":
            targets = [torch.randint(0, num_classes, (batch_size, *input_size), generator=generator) for _ in images]
            inputs: list[Any] = [(x, t.to(device)) for x, t in zip(images, targets, strict=True)]
            resident += [t for _, t in inputs]
        else:
            inputs = images
        entry.resident_mb = _tensor_mb(resident)
        runnable = torch.compile(model) if method.compile else model
        entry.stepper = Stepper(make_step(runnable, method, device), inputs, device)
    except (RuntimeError, ValueError) as error:
        entry.fail(error)
    return entry


def _finish(entry: _Entry, device: torch.device) -> dict[str, Any]:
    row = entry.row
    if "error" in row or not entry.times:
        return row
    row.update(
        {k: v for k, v in summarise(entry.times, entry.per_repeat, entry.first_step).items() if k != "step_times_s"}
    )
    row["peak_memory_mb"] = entry.peak_mb
    step_s = row["latency_ms"] / 1000
    available = peak_flops(device, entry.method.precision)
    row["tflops"] = entry.flops_per_step / step_s / 1e12
    row["mfu"] = entry.flops_per_step / step_s / available if available else None
    return row


def bench_models(
    entries: Sequence[tuple[str, Callable[[], nn.Module], Method]],
    *,
    device: torch.device,
    input_size: tuple[int, int],
    batch_size: int,
    num_classes: int,
) -> list[dict[str, Any]]:
    """Bench several models (or one model several ways) **interleaved**: all are prepared and warmed up, then
    timed repeat by repeat in turn (A, B, A, B, …), so that a machine that slows down or speeds up during the
    run (other jobs, clocks, heat) shifts all of them alike and their ratios stay fair. One row each; a model
    that fails (out of memory, a shape it cannot take) gets its ``error`` and the others go on."""
    prepared: list[_Entry] = []
    for name, build, method in entries:
        try:
            model = build()
        except (RuntimeError, ValueError) as error:
            entry = _Entry(row=_base_row(name, method, batch_size, input_size, 0), method=method)
            entry.fail(error)
        else:
            entry = _prepare(
                name, model, method, device=device, input_size=input_size, batch_size=batch_size,
                num_classes=num_classes,
            )  # fmt: skip
            del model
        prepared.append(entry)
    for entry in prepared:
        if entry.stepper is not None:
            first = entry.segment(device, lambda s, n=entry.method.warmup: s.warm_up(n))
            entry.first_step = first or 0.0
    for repeat in range(max((e.method.repeats for e in prepared), default=0)):
        for entry in prepared:
            if entry.stepper is None or repeat >= entry.method.repeats:
                continue
            times = entry.segment(device, lambda s, n=entry.method.iters: s.timed(n))
            if times:
                entry.times += times
                entry.per_repeat.append(batch_size * len(times) / sum(times))
    rows = [_finish(entry, device) for entry in prepared]
    prepared.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_model(
    name: str,
    model: nn.Module,
    *,
    device: torch.device,
    input_size: tuple[int, int],
    batch_size: int,
    method: Method,
    num_classes: int,
) -> dict[str, Any]:
    """Time one model (an ``nn.Module`` returning ``(B, classes, H, W)`` logits); one table row. A failure (out
    of memory, a shape the model cannot take) is returned as the row's ``error``."""
    return bench_models(
        [(name, lambda: model, method)],
        device=device,
        input_size=input_size,
        batch_size=batch_size,
        num_classes=num_classes,
    )[0]


def build_ours(config: ExperimentConfig) -> nn.Module:
    from ablations.model import build_model

    torch.manual_seed(0)
    return build_model(config, load_weights=config.backbone.weights is not None)


class EvalProtocol(nn.Module):
    """A model evaluated the way its config says: at ``eval.output_stride`` (rates rescaled), over
    ``eval.scales`` and, with ``eval.flip``, their mirror images, softmax averaged."""

    def __init__(self, model: nn.Module, scales: Sequence[float], flip: bool) -> None:
        super().__init__()
        self.model, self.scales, self.flip = model, tuple(scales), flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ablations.inference import predict_probabilities

        return predict_probabilities(self.model, x, scales=self.scales, flip=self.flip)


def build_evaluated(config: ExperimentConfig) -> nn.Module:
    """Our model as its config evaluates it (eval output stride, scales, flip)."""
    model = build_ours(config)
    model.set_output_stride(config.eval_output_stride)
    e = config.eval
    return EvalProtocol(model, e.scales, e.flip) if tuple(e.scales) != (1.0,) or e.flip else model


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


# --------------------------------------------------------------------------------------------------------------
# Peers and the standard configs

# Each peer with the overrides that make our config the same network (same encoder, output stride, first-unit
# convention, rates, pooling-branch norm, head); the table shows both multiply-add counts, so the match is checked.
_TORCHVISION_DEEPLABV3 = {
    "backbone.name": "resnet50",
    "backbone.output_stride": 8,
    "backbone.first_unit": "previous",
    "context.kind": "aspp",
    "context.preset": "v3",
    "context.pooling_norm": "batch",
    "context.dropout": 0.5,
    "decoder.enabled": False,
    "head.style": "torchvision",
}
PEERS: dict[str, dict[str, Any]] = {
    "torchvision deeplabv3_resnet50": _TORCHVISION_DEEPLABV3,
    # smp dilates every conv of a dilated stage, the first unit's included, at the full rate (smp #183).
    "smp DeepLabV3 (resnet50)": {**_TORCHVISION_DEEPLABV3, "backbone.first_unit": "full"},
    "smp DeepLabV3Plus (resnet50)": {
        "backbone.name": "resnet50",
        "backbone.output_stride": 16,
        "backbone.first_unit": "full",
        "context.kind": "aspp",
        "context.rates": [12, 24, 36],
        "context.reference_output_stride": 16,
        "context.separable": True,
        "context.pooling_norm": "batch",
        "context.dropout": 0.5,
        "decoder.enabled": True,
        "decoder.low_level_channels": 48,
        "decoder.convs": 1,
        "decoder.separable": True,
        "head.style": "deeplab",
    },
}


def build_peer(name: str, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("torchvision"):
        from torchvision.models.segmentation import deeplabv3_resnet50

        return LogitsOnly(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes))
    import segmentation_models_pytorch as smp

    if name.startswith("smp DeepLabV3Plus"):
        return smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=num_classes)
    return smp.DeepLabV3(encoder_name="resnet50", encoder_weights=None, classes=num_classes)


STANDARD_CONTEXTS = {
    "ASPP v3": {"context.kind": "aspp", "context.preset": "v3"},
    "LargeFOV": {"context.kind": "largefov", "context.merge": "concat"},  # features (256), so a decoder can follow
}


def standard_configs() -> list[tuple[str, dict[str, Any]]]:
    """ResNet-50, 21 classes: output stride 8/16/32 × {ASPP v3 with image pooling, LargeFOV (one 3×3 at rate 12
    @ OS 8, rescaled with the stride)} × decoder off / on (48 low-level channels)."""
    configs = []
    for output_stride in (8, 16, 32):
        for context, overrides in STANDARD_CONTEXTS.items():
            for decoder in (False, True):
                label = f"OS {output_stride} · {context} · {'decoder 48' if decoder else 'no decoder'}"
                configs.append(
                    (
                        label,
                        {
                            "backbone.name": "resnet50",
                            "backbone.output_stride": output_stride,
                            **overrides,
                            "decoder.enabled": decoder,
                            "head.num_classes": 21,
                        },
                    )
                )
    return configs


# --------------------------------------------------------------------------------------------------------------
# Runs and tables


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible to torch")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r}: allowed ['auto', 'cpu', 'cuda']")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    with contextlib.suppress(ImportError):
        import segmentation_models_pytorch as smp

        env["segmentation_models_pytorch"] = smp.__version__
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device"] = cpu_name()
    return env


def run(
    configs: Sequence[tuple[str, ExperimentConfig]],
    *,
    device: torch.device,
    input_size: tuple[int, int],
    batch_sizes: Sequence[int],
    methods: Sequence[Method],
    peers: bool = False,
    printer: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bench every config under every method (interleaved, see :func:`bench_models`) and, with ``peers``, every
    peer interleaved with its equivalent config of ours; returns ``{"environment", "rows", "peer_ratios"}``."""
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    groups: list[tuple[list[tuple[str, Callable[[], nn.Module], Method]], int, str | None]] = []
    for label, config in configs:
        build = lambda c=config: build_ours(c)  # noqa: E731
        groups.append(([(label, build, m) for m in methods], config.head.num_classes, None))
    if peers:
        classes = 21
        for peer, overrides in PEERS.items():
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


def peer_ratio(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    both = "images_per_s" in ours and "images_per_s" in peer
    return {
        "peer": peer["name"],
        "mode": ours["mode"],
        "precision": ours["precision"],
        "channels_last": ours["channels_last"],
        "compile": ours["compile"],
        "cudnn_benchmark": ours.get("cudnn_benchmark"),
        "batch": ours["batch"],
        "ours_images_per_s": ours.get("images_per_s"),
        "peer_images_per_s": peer.get("images_per_s"),
        "speed_ratio": ours["images_per_s"] / peer["images_per_s"] if both else None,
        "ours_macs": ours.get("macs"),
        "peer_macs": peer.get("macs"),
        "ours_peak_memory_mb": ours.get("peak_memory_mb"),
        "peer_peak_memory_mb": peer.get("peak_memory_mb"),
    }


def _num(value: Any, fmt: str, missing: str = "–") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_row(row: dict[str, Any]) -> str:
    head = f"{row['name']} [{row['mode']} {row['precision']}{' cl' if row['channels_last'] else ''}"
    head += f"{' compiled' if row['compile'] else ''}, batch {row['batch']}]"
    if "error" in row:
        return f"{head}: FAILED ({row['error']})"
    return (
        f"{head}: {row['images_per_s']:.2f} img/s, latency {row['latency_ms']:.1f} ms "
        f"(p90 {row['latency_p90_ms']:.1f}), peak {_num(row['peak_memory_mb'], '.0f')} MiB, "
        f"{row['macs'] / 1e9:.1f} GMACs/img"
    )


def _mode(row: dict[str, Any]) -> str:
    parts = [row["mode"], row["precision"]]
    parts += ["channels-last"] * bool(row["channels_last"]) + ["compiled"] * bool(row["compile"])
    return " ".join(parts + ["cudnn-autotuned"] * bool(row.get("cudnn_benchmark")))


def _giga(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def bench_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows of a bench run as a display frame (strings, fixed digits)."""
    gpu = any(r.get("mfu") is not None for r in rows)
    out = []
    for r in rows:
        row = {"Config": r["name"], "Mode": _mode(r), "Batch": str(r["batch"])}
        failed = "error" in r
        row["Images/s"] = f"failed: {r['error']}" if failed else f"{r['images_per_s']:.2f}"
        row["Latency ms (median / p90)"] = "" if failed else f"{r['latency_ms']:.1f} / {r['latency_p90_ms']:.1f}"
        row["Peak memory MiB"] = "" if failed else _num(r["peak_memory_mb"], ".0f")
        row["Params M"] = f"{r['params'] / 1e6:.1f}"
        row["GMACs/img"] = _num(_giga(r.get("macs")), ".1f")
        if gpu:
            row["MFU"] = "" if failed else f"{_num(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')} %"
        out.append(row)
    return pd.DataFrame(out)


def peer_frame(ratios: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Peer": q["peer"],
                "Mode": _mode(q),
                "Batch": str(q["batch"]),
                "Ours img/s": _num(q["ours_images_per_s"], ".2f"),
                "Peer img/s": _num(q["peer_images_per_s"], ".2f"),
                "Ours / peer": f"**{_num(q['speed_ratio'], '.3f')}**",
                "GMACs ours / peer": f"{_num(_giga(q['ours_macs']), '.1f')} / {_num(_giga(q['peer_macs']), '.1f')}",
                "Peak MiB ours / peer": (
                    f"{_num(q['ours_peak_memory_mb'], '.0f')} / {_num(q['peer_peak_memory_mb'], '.0f')}"
                ),
            }
            for q in ratios
        ]
    )


def format_table(result: dict[str, Any]) -> str:
    from ablations.results.tables import render

    env = result["environment"]
    lines = [render(bench_frame(result["rows"]), "md")]
    if result["peer_ratios"]:
        lines += [
            "",
            "Ours against each peer, same process, same settings (ratio > 1: ours is faster):",
            "",
            render(peer_frame(result["peer_ratios"]), "md"),
        ]
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k != "device")
    return f"Device: {env['device']} ({versions})\n\n" + "\n".join(lines)


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


def default_input(device: torch.device) -> tuple[int, int]:
    return GPU_INPUT if device.type == "cuda" else CPU_INPUT


def default_counts(device: torch.device) -> dict[str, int]:
    """Warm-up and timed steps: MMSegmentation-like counts on a GPU, fewer on a CPU where a step takes seconds."""
    if device.type == "cuda":
        return {"warmup": 10, "iters": 50, "repeats": 3}
    return {"warmup": 2, "iters": 5, "repeats": 3}


def fast_method(plain: Method, device: torch.device) -> Method:
    """The fast path on ``device``: on a GPU bf16 autocast (fp16 where bf16 is not supported), channels-last and
    cuDNN autotuning; on a CPU channels-last in fp32 (bf16 on a CPU is only fast with AMX, so it is left to
    ``--precision bf16``). ``torch.compile`` stays as asked."""
    if device.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return dataclasses.replace(plain, precision=precision, channels_last=True, cudnn_benchmark=True)
    return dataclasses.replace(plain, channels_last=True)


def format_report(result: dict[str, Any]) -> str:
    size = result.get("input_size")
    methods = result.get("methods") or []
    first = methods[0] if methods else {}
    intro = (
        f"Input {size[0]}×{size[1]} random images, resident on the device (data loading and host-to-device copies "
        "excluded; the final resize to the input size included). "
        f"{first.get('warmup', '?')} untimed warm-up steps, then {first.get('repeats', '?')} repeats of "
        f"{first.get('iters', '?')} steps, each step between two device synchronisations; images/s is the median "
        "over repeats, latency the median and 90th percentile over steps. Rows compared with each other (one "
        "config plain and fast, ours and a peer) are timed interleaved, repeat by repeat. GMACs: one forward pass "
        "of one image. Peak memory: on a GPU the weights and inputs plus the largest rise of "
        "`max_memory_allocated` during the steps; on a CPU the resident memory the steps add above what was "
        "resident before them (weights and inputs excluded)."
        if size
        else ""
    )
    return (f"{intro}\n\n" if intro else "") + format_table(result)
