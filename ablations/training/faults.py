"""Fault injection for the reliability suite (``tests/reliability``): a Lightning callback that, at one training
step, makes the loss NaN, raises out-of-memory, or sends this process SIGINT or SIGKILL.

Off unless asked for: ``train`` adds it only when ``ABLATIONS_INJECT_FAULT`` is set, so that a fault can be
injected into a run in another process (a sweep worker, a DDP rank) without changing its command. The value is
one or more comma-separated ``kind@step`` or ``kind@step@text`` (e.g. ``sigkill@5``, ``nan@2@exploding``); with
``text``, only runs whose folder name contains it get the fault. It fires when ``step`` steps are done.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch

ENV = "ABLATIONS_INJECT_FAULT"
KINDS = ("nan", "oom", "sigint", "sigkill")


class InjectFault(pl.Callback):
    def __init__(self, kind: str, step: int) -> None:
        if kind not in KINDS or step < 0:
            raise ValueError(f"{ENV}={kind}@{step}: the kind must be one of {', '.join(KINDS)} and the step ≥ 0")
        self.kind, self.step = kind, step

    @classmethod
    def from_env(cls, out_dir: Path) -> list[InjectFault]:
        faults = []
        for spec in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
            kind, _, rest = spec.partition("@")
            step, _, where = rest.partition("@")
            try:
                fault = cls(kind, int(step))
            except ValueError:
                raise ValueError(f"{ENV}={spec!r}: expected kind@step[@text], kind one of {', '.join(KINDS)}") from None
            if where in out_dir.name:
                faults.append(fault)
        return faults

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_index) -> None:
        if trainer.global_step != self.step:
            return
        if self.kind == "nan":  # a weight becomes NaN: the forward pass, then the loss, is NaN (a real divergence)
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))
        elif self.kind == "oom":
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {ENV} at step {self.step})")
        elif self.kind == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
