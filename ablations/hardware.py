"""The machine: peak dense FLOP/s of the GPUs the project runs on (vendors' datasheets, for model FLOP utilisation),
the CPU's name and device synchronisation.

A table of our own, because Lightning's ``get_available_flops`` lists the H200 under names no driver reports
("h200 sxm1", "h200 nvl1"), so a real H200 ("NVIDIA H200") gets no figure, and its Hopper rows are the
datasheets' *with sparsity* tensor-core figures, twice what a dense convolution or matmul can reach. Every
figure here is **dense** (the datasheets' sparsity figures halved), in FLOP/s, per GPU, at boost clock.

Precisions: ``fp32`` is the CUDA-core (non-tensor) peak; ``tf32`` the tensor-core TF32 peak, which an fp32 run
on Ampere or later gets for the convolutions when ``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default)
and for matmuls when ``torch.backends.cuda.matmul.allow_tf32`` is; ``bf16`` and ``fp16`` the tensor-core peaks
with fp32 accumulation (what autocast's convolutions and matmuls use). This module imports nothing of the
project, so training and the benchmark both use it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Lightning precision (``train.precision`` resolved) or the benchmark's → the precision of the convolutions.
_PRECISION_ALIASES = {
    "32-true": "fp32",
    "32": "fp32",
    "fp32": "fp32",
    "tf32": "tf32",
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
    "bf16": "bf16",
    "16-mixed": "fp16",
    "16-true": "fp16",
    "16": "fp16",
    "fp16": "fp16",
}

TABLE_SOURCE = "ablations.hardware"  # how metrics name a peak taken from this table
LIGHTNING_SOURCE = "lightning get_available_flops"  # … and one taken from Lightning's (devices not listed here)


@dataclasses.dataclass(frozen=True)
class GPU:
    """One part: the substrings of ``torch.cuda.get_device_name`` (lower case) that identify it (``match``, all
    of them) and that rule it out (``exclude``, any), its dense peaks in TFLOP/s and the datasheet they are from."""

    name: str
    match: tuple[str, ...]
    fp32: float
    tf32: float
    bf16: float
    fp16: float
    source: str
    url: str
    exclude: tuple[str, ...] = ()
    note: str = ""

    def peak(self, precision: str) -> float:
        return getattr(self, precision) * 1e12

    def matches(self, device_name: str) -> bool:
        name = device_name.lower()
        return all(p in name for p in self.match) and not any(p in name for p in self.exclude)


_H100 = (
    "NVIDIA H100 Tensor Core GPU datasheet",
    "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
)
_H200 = ("NVIDIA H200 Tensor Core GPU datasheet", "https://www.nvidia.com/en-us/data-center/h200/")
_A100 = (
    "NVIDIA A100 Tensor Core GPU datasheet",
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
)
_L40S = ("NVIDIA L40S GPU datasheet", "https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413")
_L4 = (
    "NVIDIA L4 Tensor Core GPU datasheet",
    "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet",
)
_RTX4090 = (
    "NVIDIA Ada Lovelace GPU Architecture whitepaper, Appendix A (GeForce RTX 4090)",
    "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
)

# Most specific first: the first row that matches the device name wins, so "H200 NVL" comes before "H200", and
# "H100 NVL" / "H100 PCIe" before the SXM H100 (which reports itself as "NVIDIA H100 80GB HBM3").
GPUS: tuple[GPU, ...] = (
    GPU("H200 NVL", ("h200", "nvl"), 60, 417.5, 835.5, 835.5, *_H200, exclude=("gh200",)),
    GPU("H200 SXM", ("h200",), 67, 494.7, 989.4, 989.4, *_H200, exclude=("gh200",),
        note="the same GH100 compute as the H100 SXM"),
    GPU("H100 NVL", ("h100", "nvl"), 60, 417.5, 835, 835, *_H100),
    GPU("H100 PCIe", ("h100", "pcie"), 51, 378, 756, 756, *_H100),
    GPU("H100 SXM", ("h100",), 67, 494.7, 989.4, 989.4, *_H100),
    # "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe": the same
    # peaks for all four (they differ in memory and power).
    GPU("A100 PCIe", ("a100", "pcie"), 19.5, 156, 312, 312, *_A100),
    GPU("A100 SXM", ("a100",), 19.5, 156, 312, 312, *_A100),
    GPU("L40S", ("l40s",), 91.6, 183, 362.05, 362.05, *_L40S),
    GPU("L4", ("l4",), 30.3, 60, 121, 121, *_L4, exclude=("l40",)),  # not an L40 (unlisted)
    GPU("GeForce RTX 4090", ("rtx 4090",), 82.6, 82.6, 165.2, 165.2, *_RTX4090, exclude=("laptop", "4090 d"),
        note="consumer part: bf16/fp16 with fp32 accumulation run at half the fp16-accumulate rate and TF32 at "
        "the fp32 rate; its clocks under a sustained load vary more than a data-centre part's"),
)  # fmt: skip


def find_gpu(device_name: str) -> GPU | None:
    """The table's row for ``device_name`` as ``torch.cuda.get_device_name`` reports it; None if not listed."""
    return next((gpu for gpu in GPUS if gpu.matches(device_name)), None)


def resolve_precision(precision: str, *, tf32: bool) -> str | None:
    """The table's precision for a Lightning (``32-true``, ``bf16-mixed``…) or bench (``fp32``…) precision:
    fp32 with TF32 enabled is ``tf32``. None for one not in the table (fp64, fp8…)."""
    resolved = _PRECISION_ALIASES.get(precision)
    if resolved == "fp32" and tf32:
        return "tf32"
    return resolved


def peak_flops(device_name: str, precision: str, *, tf32: bool) -> float | None:
    """Dense peak FLOP/s of ``device_name`` at ``precision`` (TF32's peak for fp32 when ``tf32``); None for a
    device or precision the table does not list."""
    gpu = find_gpu(device_name)
    resolved = resolve_precision(precision, tf32=tf32)
    if gpu is None or resolved is None:
        return None
    return gpu.peak(resolved)


def tf32_state() -> dict[str, bool]:
    """Whether fp32 convolutions (cuDNN) and matmuls (cuBLAS) may run in TF32, as torch is set now."""
    import torch

    return {"cudnn": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def device_peak_flops(device, precision: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s, source) of a torch device at ``precision``: this table for a listed GPU (fp32 counted as
    TF32 when cuDNN may use it: the convolutions dominate these networks), else Lightning's figure, else
    (None, None). Nothing on a CPU."""
    import torch

    if device.type != "cuda":
        return None, None
    peak = peak_flops(torch.cuda.get_device_name(device), precision, tf32=tf32_state()["cudnn"])
    if peak is not None:
        return peak, TABLE_SOURCE
    resolved = resolve_precision(precision, tf32=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved or "", torch.float32)
    try:
        from lightning.fabric.utilities.throughput import get_available_flops

        fallback = get_available_flops(device, dtype)
    except Exception:  # an unknown device, a Lightning without the function
        fallback = None
    return (float(fallback), LIGHTNING_SOURCE) if fallback else (None, None)


def cpu_name() -> str:
    """``cpu: <model name> (<n> cores)``, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def synchronize(device: torch.device) -> None:
    """Wait for every queued kernel on ``device`` (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
