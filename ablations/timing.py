"""The bottom of the measuring code: where a run is (CPU model, commit) and how a step is timed (device
synchronisation). Training and the benchmarking tool both import it; it imports nothing of the project, so
``train`` never depends on ``bench``."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def cpu_name() -> str:
    """``cpu: <model name> (<n> cores)``, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def git_commit() -> str | None:
    """The commit of the code that is running (the checkout this package lives in), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def synchronize(device: torch.device) -> None:
    """Wait for every queued kernel on ``device`` (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
