"""Sweeps: run a study (``ablations.sweep.study``) as an Optuna study, any number of workers on any number of machines.

A grid study puts every missing arm × seed in Optuna's queue and workers claim them atomically (WAITING → RUNNING);
a search study asks its sampler until ``budget`` distinct points are trained. Each trial is one
:func:`ablations.training.train.train` run whose metrics land in the trial's user attributes; a trial whose worker
died is queued again and resumes from its checkpoint. The parts, importing downwards only: ``storage``, ``board``,
``progress``, ``trial``, ``placement``, ``workers``, ``run`` (the command); ``summary`` holds the end-of-sweep tables.

How a sweep runs, fails, resumes and prints: ``docs/sweeps.md``.
"""

from ablations.ioutil import redact
from ablations.sweep.board import claim, open_study, reap_interrupted, top_up
from ablations.sweep.progress import quiet_libraries
from ablations.sweep.storage import (
    SweepError,
    check_storage_reachable,
    default_out_dir,
    open_storage,
    storage_url,
)
from ablations.sweep.summary import comparison, write_outputs
from ablations.sweep.trial import REUSE_CAP, classify
from ablations.sweep.workers import spawn_workers, work

__all__ = [
    "REUSE_CAP",
    "SweepError",
    "check_storage_reachable",
    "claim",
    "classify",
    "comparison",
    "default_out_dir",
    "open_storage",
    "open_study",
    "quiet_libraries",
    "reap_interrupted",
    "redact",
    "spawn_workers",
    "storage_url",
    "top_up",
    "work",
    "write_outputs",
]
