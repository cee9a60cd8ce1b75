"""The timing method (:mod:`ablations.bench`'s docstring): what one step runs, how steps are timed, how memory
is metered and how multiply-adds and FLOPs are counted. The bottom of the package: it imports none of it."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablations.hardware import device_peak_flops, synchronize, tf32_state

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("infer", "train")


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
    (CPU) when it began, in MiB; see the docstring of :mod:`ablations.bench`."""

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
    """Multiply-adds of one forward pass of one image (:func:`ablations.geometry.analysis.count_macs`), counted on a
    meta-device copy of ``model`` so that nothing is computed."""
    from ablations.geometry.analysis import count_macs

    return count_macs(copy.deepcopy(model).to("meta"), input_size)


def count_step_flops(model: nn.Module, input_size: tuple[int, int], batch: int, mode: str) -> int:
    """FLOPs of one benchmark step (inference: forward; training: forward and backward), on a meta copy
    (:func:`ablations.geometry.analysis.count_flops`)."""
    from ablations.geometry.analysis import count_flops

    return count_flops(copy.deepcopy(model).to("meta"), input_size, batch=batch, backward=mode != "infer")


def peak_flops_and_source(device: torch.device, precision: str) -> tuple[float | None, str | None]:
    """The device's dense peak FLOP/s at ``precision`` (fp32 as TF32 when cuDNN may use TF32) and where it comes
    from: :mod:`ablations.hardware`' datasheet table, else Lightning's ``get_available_flops``; (None, None) on a CPU
    or an unknown device."""
    return device_peak_flops(device, precision)


def peak_flops(device: torch.device, precision: str) -> float | None:
    return peak_flops_and_source(device, precision)[0]


def tf32_enabled(device: torch.device) -> bool | None:
    """Whether fp32 convolutions may run in TF32 on ``device`` (``torch.backends.cudnn.allow_tf32``, on by
    default); None on a CPU, where there is no TF32."""
    return tf32_state()["cudnn"] if device.type == "cuda" else None


# --------------------------------------------------------------------------------------------------------------
# One step


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
