"""The device: which one (``--device``), what it is (the environment recorded with every run), the step counts
and input size it gets by default, and its fast path."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from typing import Any

import torch

from ablations.bench.method import BenchError, Method
from ablations.hardware import cpu_name, tf32_state

CPU_INPUT = (256, 256)  # default input side on a CPU, where 513² at output stride 8 takes seconds per image
GPU_INPUT = (513, 513)  # the papers' evaluation crop


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
        env["tf32"] = tf32_state()  # {"cudnn": …, "matmul": …}: whether fp32 convolutions / matmuls run in TF32
    else:
        env["device"] = cpu_name()
        env["tf32"] = None  # no TF32 on a CPU
    return env


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
