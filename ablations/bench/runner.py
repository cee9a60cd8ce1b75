"""Running the protocol over models: each prepared (counted, moved, its inputs made) and warmed up, then all
timed interleaved, repeat by repeat; one row each, a failure recorded in its row."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ablations.bench.method import (
    Method,
    PeakMemory,
    Stepper,
    count_forward_macs,
    count_step_flops,
    make_step,
    peak_flops_and_source,
    summarise,
    tf32_enabled,
)
from ablations.geometry.analysis import count_params
from ablations.ioutil import first_line


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
            text = first_line(str(error), 200)
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


def _base_row(
    name: str, method: Method, batch_size: int, input_size: tuple[int, int], params: int, device: torch.device
) -> dict:
    return {
        "name": name,
        "mode": method.mode,
        "batch": batch_size,
        "input": list(input_size),
        "precision": method.precision,
        "channels_last": method.channels_last,
        "compile": method.compile,
        "cudnn_benchmark": method.cudnn_benchmark,
        "tf32": tf32_enabled(device),  # fp32 convolutions in TF32 (a GPU's default); None on a CPU
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
    params = count_params(model)
    entry = _Entry(row=_base_row(name, method, batch_size, input_size, params, device), method=method)
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
    available, source = peak_flops_and_source(device, entry.method.precision)
    row["tflops"] = entry.flops_per_step / step_s / 1e12
    row["mfu"] = entry.flops_per_step / step_s / available if available else None
    row["peak_flops"], row["peak_flops_source"] = available, source
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
            entry = _Entry(row=_base_row(name, method, batch_size, input_size, 0, device), method=method)
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
