"""Sweeps: run a study (``ablations.sweep.study``) as an Optuna study, any number of workers on any number of machines.

Storage is any Optuna RDB URL: SQLite in the run folder by default, PostgreSQL (``postgresql://…``) when workers
on several machines share one study. A **grid** study (an axis) puts every missing arm × seed in Optuna's queue
(``enqueue_trial``); workers claim queued trials with Optuna's atomic WAITING → RUNNING transition, so a trial
is claimed by one worker only. A **search** study (no axis) asks its sampler until ``budget`` distinct points
are trained.

Each trial is one :func:`ablations.training.train.train` run. Its W&B run is grouped by study and named
``<arm>-s<seed>``; the trial's user attributes in the Optuna storage hold the arm, seed, full config and
metrics (mIoU, per-size IoU, throughput, params, MACs, peak memory, receptive field), so tables need neither
W&B nor the network.

Resume: a finished trial (complete, pruned, or failed with a reason such as divergence or out of memory) is
never re-run. A trial whose worker died (Ctrl-C, ``kill -9``, a lost machine) is marked failed as
``interrupted`` and queued again by Optuna's ``RetryHeartbeatStaleTrialCallback``: at once when the dead worker
was on this host (its process is gone), after the heartbeat grace period when it was elsewhere. The retry trains
in its predecessor's run folder and resumes from its last checkpoint (``ablations.training.checkpoints``).

The parts, each one job, importing downwards only:

- :mod:`~ablations.sweep.storage`: the storage URL, the Optuna study, its sampler and pruner;
- :mod:`~ablations.sweep.board`: the trials on the board: queueing, claiming, reaping, counting;
- :mod:`~ablations.sweep.progress`: what a sweep prints while it runs;
- :mod:`~ablations.sweep.trial`: one claimed trial, from config to its recorded end;
- :mod:`~ablations.sweep.placement`: where local workers run (GPU round-robin, threads and loaders shared out);
- :mod:`~ablations.sweep.workers`: the worker loop and local worker processes.

The end-of-sweep tables are the results layer's (:mod:`ablations.sweep.summary`).
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
