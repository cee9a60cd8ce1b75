"""What a sweep prints while it runs: one line per trial start and end, with done / total, elapsed time and an
estimate of what is left; and the libraries' own info lines turned down so those lines stay readable."""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ablations.sweep.board import Board, counts
from ablations.sweep.study import Study


@dataclass
class Progress:
    """One line per trial start and end: done / total, arm, elapsed and an estimate of what is left."""

    study: Study
    board: Board
    workers: int = 1
    started: float = 0.0
    printer: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.started = self.started or time.time()

    def line(self, text: str) -> None:
        c = counts(self.study, self.board)
        elapsed = time.time() - self.started
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in self.board.trials((TrialState.COMPLETE,))
            if t.datetime_start and t.datetime_complete
        ]
        left = c["total"] - c["done"]
        eta = f"~{clock(statistics.median(durations) * left / max(1, self.workers))} left" if durations else "…"
        status = f"{c['done']}/{c['total']} done, {c['running']} running, {clock(elapsed)}, {eta}"
        self.printer(f"[{self.study.name} {status}] {text}")


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def quiet_libraries() -> None:
    """Sweeps print one line per trial start and end; Optuna's and Lightning's info lines would bury them."""
    import logging

    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO when imported; lower them after)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # On a host with SLURM's client installed Lightning advises prefixing the command with srun in every trial; a sweep
    # goes to SLURM through --slurm, whose workers start multi-device trials with srun themselves.
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    os.environ.setdefault("WANDB_SILENT", "true")
