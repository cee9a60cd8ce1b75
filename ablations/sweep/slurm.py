"""Sweeps on a SLURM cluster: ``ablations sweep STUDY --storage postgresql://… --slurm N`` submits a job array of N
workers through submitit, each running the ordinary worker loop (:func:`ablations.sweep.workers.work`) against the
study's storage; ``--wait`` follows them from the storage and SLURM, ``--status`` reports from the storage alone.

What stays the harness's and what is the scheduler's:

- **the harness** (Optuna on PostgreSQL, the record of truth): queueing every arm × seed, the exactly-once claim,
  duplicates, the fingerprint, and re-queueing a trial whose worker was preempted;
- **SLURM**: where each worker runs and on what: ``--array`` (one worker per task), ``--gpus-per-task``,
  ``--cpus-per-task`` (``-c``), partition, account, time limit; and the ranks of a multi-device trial, which are
  started with ``srun --ntasks-per-node=D`` inside the worker's allocation (:func:`rank_command`), not by Lightning
  re-spawning the command that started it.

**Preemption.** A worker catches SIGUSR1 (what ``scancel --signal=USR1`` and the ``--signal=USR1@120`` warning before
the time limit send), SIGUSR2 and SIGTERM (what SLURM sends a preempted or cancelled job) and only sets a flag. At
the next optimiser step that is not also validated, the trial's callback (:func:`preemption_callbacks`) writes the
run's ``checkpoints/last.ckpt`` (the harness's own last checkpoint, which the next claimer resumes from) and raises
:class:`Preempted`; the trial is recorded as ``interrupted`` and queued again at once through Optuna's retry
callback, with no wait for the heartbeat grace; the worker exits, and on SIGUSR1/SIGUSR2 it asks SLURM to requeue its
own task (``scontrol requeue``), so the array keeps its N workers. A trial preempted more than ``max_preemptions``
times is recorded as a failure of kind ``preempted`` (``--retry-failed`` runs it again, from its checkpoint).
Lightning's own SLURM requeue (``SLURMEnvironment(auto_requeue=True)``: SIGUSR1 → ``hpc_ckpt_*.ckpt`` → ``scontrol
requeue`` of the whole worker) is switched off in the trial's trainer, before Lightning registers its handlers.

**Secrets.** A storage URL with a password never goes into the pickled job, the batch script or the job's
environment: the real URL is written to ``<run folder>/slurm/storage-url``, readable by the user alone (0600), and
the job reads it from there. How to run a study on a cluster: ``docs/cluster.md``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.ioutil import first_line, redact
from ablations.sweep.board import Board, counts, mark_failed
from ablations.sweep.storage import SweepError

PREEMPT_ENV = "ABLATIONS_PREEMPTIBLE"  # "1" in a SLURM worker (and the ranks it starts): signals stop the trial
MAX_PREEMPTIONS_ENV = "ABLATIONS_MAX_PREEMPTIONS"
POLL_ENV = "ABLATIONS_SLURM_POLL_S"  # --wait's polling interval (default 5 s; the tests poll faster)
PREEMPTIONS_ATTR = "preemptions"  # on a trial: how many times its arm × seed was preempted so far
DEFAULT_MAX_PREEMPTIONS = 3
DEFAULT_TIME_MIN = 240
SIGNAL_DELAY_S = 120  # SIGUSR1 this long before the time limit: time to finish a step and write a checkpoint
PREEMPTED_EXIT = 75  # a rank process's exit status when it stopped for a preemption (EX_TEMPFAIL)
SECRET_FILE = "storage-url"
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # the worker requeues its own task; SIGTERM leaves it to SLURM

BLOCK_KEYS = ("partition", "gpus_per_worker", "cpus_per_worker", "time", "account", "sbatch", "max_preemptions")
# sbatch options --slurm sets itself: an extra line may not change them.
RESERVED = {"array", "output", "error", "open-mode", "wrap", "ntasks-per-node", "nodes", "ntasks", "signal"}
# Pending reasons SLURM gives a job that will not start unless the request or the cluster's limits change.
CANNOT_START = {
    "BadConstraints": "no node has the features or resources asked for",
    "DependencyNeverSatisfied": "a dependency can never be met",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "AccountNotAllowed": "the account may not use this partition",
    "QOSNotAllowed": "the QOS may not use this partition",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "the time limit (--time) is over the partition's MaxTime",
    "MaxMemPerLimit": "more memory than the partition allows per CPU or node",
}
# Where a partition's AllowAccounts/AllowQos (or Deny…) keep a job out, SLURM gives a sentence instead of a reason
# code (scontrol writes its spaces as underscores), e.g. "Job's account not known, so it can't use this partition
# (lab allows lab)" or "Job's QOS not permitted to use this partition (lab allows normal not high)".
CANNOT_START_TEXT = re.compile(
    r"^Job's[ _](account|QOS)[ _].*(can't[ _]use|not[ _]permitted[ _]to[ _]use)[ _]this[ _]partition"
)
ACTIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
    "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Options: the study's slurm: block and the command line


@dataclass(frozen=True)
class SlurmOptions:
    """What ``--slurm N`` submits: N workers, each one SLURM task with its own CPUs and GPUs."""

    workers: int
    partition: str | None = None
    gpus_per_worker: int = 0
    cpus_per_worker: int | None = None  # None: SLURM's default (one CPU)
    time_min: int = DEFAULT_TIME_MIN
    account: str | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. "--qos=high", "--mem=32G", "--constraint=a100"
    max_preemptions: int = DEFAULT_MAX_PREEMPTIONS


def parse_time(value: Any, where: str = "--time") -> int:
    """A SLURM time limit in whole minutes: an integer (minutes), ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or
    ``D-HH:MM:SS`` (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        minutes = int(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())):
        days, first, second, third = m.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
        elif third is not None:  # HH:MM:SS
            seconds = int(first) * 3600 + int(second) * 60 + int(third)
        else:  # MM:SS
            seconds = int(first) * 60 + int(second or 0)
        minutes = -(-seconds // 60)
    else:
        raise ValueError(f"{where}={value!r}: minutes, or [D-]HH:MM:SS as sbatch takes it, e.g. 240 or 1-00:00:00")
    if minutes < 1:
        raise ValueError(f"{where}={value!r}: at least one minute")
    return minutes


def sbatch_option(line: Any, where: str = "--sbatch") -> tuple[str, Any]:
    """One extra sbatch option (``--qos=high``, ``qos=high``, ``#SBATCH --exclusive``, ``--mem 32G``) as the
    (key, value) submitit writes back as ``#SBATCH --key=value`` (``True``: a flag without a value)."""
    if not isinstance(line, str) or not line.strip():
        raise ValueError(f"{where}={line!r}: an sbatch option such as --qos=high or --constraint=a100")
    text = line.strip().removeprefix("#SBATCH").strip()
    if text.startswith("-") and not text.startswith("--"):
        raise ValueError(f"{where}={line!r}: give the long form (--qos=high, not -q high)")
    text = text.removeprefix("--")
    key, sep, value = text.partition("=")
    if not sep:
        key, _, value = text.partition(" ")
    key, value = key.strip(), value.strip()
    if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
        raise ValueError(f"{where}={line!r}: an sbatch option such as --qos=high or --constraint=a100")
    if key in RESERVED:
        raise ValueError(f"{where}={line!r}: --{key} is set by --slurm itself")
    return key, (value if value else True)


def check_block(raw: Any, where: str) -> dict[str, Any]:
    """The study file's ``slurm:`` block, checked (``StudyError`` naming the field) and normalised: ``time`` in
    minutes, ``sbatch`` a list of options."""
    from ablations.sweep.study import StudyError

    if not isinstance(raw, Mapping):
        raise StudyError(f"{where}: slurm={raw!r}: a mapping of {', '.join(BLOCK_KEYS)}")
    unknown = sorted(set(raw) - set(BLOCK_KEYS))
    if unknown:
        raise StudyError(f"{where}: slurm: unknown field(s) {unknown}; allowed {list(BLOCK_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in ("partition", "account"):
            if not isinstance(value, str) or not re.fullmatch(r"[\w.,-]+", value):
                raise StudyError(f"{where}: slurm: {key}={value!r}: a {key} name")
            out[key] = value
        elif key in ("gpus_per_worker", "cpus_per_worker", "max_preemptions"):
            low = 1 if key == "cpus_per_worker" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise StudyError(f"{where}: slurm: {key}={value!r}: an integer ≥ {low}")
            out[key] = value
        elif key == "time":
            try:
                out[key] = parse_time(value, "slurm: time")
            except ValueError as error:
                raise StudyError(f"{where}: {error}") from None
        else:  # sbatch
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, list):
                raise StudyError(f"{where}: slurm: sbatch={value!r}: a list of sbatch options, e.g. [--qos=high]")
            try:
                for line in lines:
                    sbatch_option(line, "slurm: sbatch")
            except ValueError as error:
                raise StudyError(f"{where}: {error}") from None
            out[key] = list(lines)
    return out


def options(
    block: Mapping[str, Any] | None,
    *,
    workers: int,
    partition: str | None = None,
    gpus_per_worker: int | None = None,
    cpus_per_worker: int | None = None,
    time_limit: str | None = None,
    account: str | None = None,
    sbatch: Sequence[str] = (),
    max_preemptions: int | None = None,
) -> SlurmOptions:
    """The options of one submission: the command line's over the study's ``slurm:`` block over the defaults;
    extra sbatch lines add up (the block's first). Raises ``SweepError`` on a bad value."""
    block = dict(block or {})
    if workers < 1:
        raise SweepError(f"--slurm {workers}: the number of workers (array tasks) must be at least 1")
    try:
        minutes = parse_time(time_limit) if time_limit is not None else parse_time(block.get("time", DEFAULT_TIME_MIN))
        lines = (*block.get("sbatch", ()), *sbatch)
        for line in lines:
            sbatch_option(line)
    except ValueError as error:
        raise SweepError(str(error)) from None
    for flag, value, low in (("--gpus-per-worker", gpus_per_worker, 0), ("--cpus-per-worker", cpus_per_worker, 1),
                             ("--max-preemptions", max_preemptions, 0)):  # fmt: skip
        if value is not None and value < low:
            raise SweepError(f"{flag} {value}: must be at least {low}")

    def pick(value, key, default):
        return value if value is not None else block.get(key, default)

    return SlurmOptions(
        workers=workers,
        partition=pick(partition, "partition", None),
        gpus_per_worker=pick(gpus_per_worker, "gpus_per_worker", 0),
        cpus_per_worker=pick(cpus_per_worker, "cpus_per_worker", None),
        time_min=minutes,
        account=pick(account, "account", None),
        sbatch=tuple(lines),
        max_preemptions=pick(max_preemptions, "max_preemptions", DEFAULT_MAX_PREEMPTIONS),
    )


def sbatch_parameters(opts: SlurmOptions, job_name: str) -> dict[str, Any]:
    """submitit's ``SlurmExecutor`` parameters for ``opts``: one task per worker (``--ntasks-per-node=1``) with
    its CPUs (``--cpus-per-task``) and GPUs (``--gpus-per-task``), requeueable, warned by SIGUSR1 before the time
    limit (submitit's own SIGUSR2 warning would requeue the job without a checkpoint of the trial)."""
    extra: dict[str, Any] = {"signal": f"USR1@{SIGNAL_DELAY_S}", "requeue": True}
    for line in opts.sbatch:
        key, value = sbatch_option(line)
        extra[key] = value
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": opts.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "array_parallelism": opts.workers,
        "additional_parameters": extra,
    }
    if opts.partition:
        params["partition"] = opts.partition
    if opts.account:
        params["account"] = opts.account
    if opts.cpus_per_worker:
        params["cpus_per_task"] = opts.cpus_per_worker
    if opts.gpus_per_worker:
        params["gpus_per_task"] = opts.gpus_per_worker
    return params


def describe(opts: SlurmOptions) -> str:
    cpus = f"{opts.cpus_per_worker} CPU(s)" if opts.cpus_per_worker else "SLURM's default CPUs"
    parts = [
        f"partition {opts.partition}" if opts.partition else "the default partition",
        f"{cpus} and {opts.gpus_per_worker} GPU(s) per worker",
        f"time limit {opts.time_min} min",
    ]
    if opts.account:
        parts.append(f"account {opts.account}")
    if opts.sbatch:
        parts.append("sbatch " + " ".join(opts.sbatch))
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Before submitting


def check_cluster(url: str | None) -> None:
    """Refuse, in one line, what cannot work on a cluster: a SQLite storage (the default) or no ``sbatch`` here."""
    if url is None or url.startswith("sqlite"):
        where = f" ({redact(url)})" if url else " (the default: a SQLite file in the run folder)"
        raise SweepError(
            f"--slurm needs a database server every node can reach: the storage is SQLite{where}, a file on one "
            "machine that workers on other nodes cannot share (its locks do not hold over NFS); give --storage "
            "postgresql://user@host/db (docs/cluster.md)"
        )
    if shutil.which("sbatch") is None:
        raise SweepError(
            "--slurm: no sbatch on PATH: run this on a SLURM login node (Debian's slurm-client package provides it)"
        )


def write_secret(url: str, folder: Path) -> tuple[str, str | None]:
    """(the URL the job may carry, the file holding the real one or None): a URL with a password is written to
    ``folder/storage-url``, readable by the user alone, and the job carries the URL with the password hidden."""
    if redact(url) == url:
        return url, None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        os.write(fd, (url + "\n").encode())
    finally:
        os.close(fd)
    return redact(url), str(path)


def sbatch_refusal(error: BaseException) -> str:
    """The part of a failed submission worth one line: sbatch's own ``error:`` line(s)."""
    text = str(error)
    found = re.findall(r"sbatch: error: (?:Batch job submission failed: )?(.+)", text)
    if found:
        return "; ".join(dict.fromkeys(line.strip() for line in found))
    return first_line(text, 300)


# --------------------------------------------------------------------------------------------------------------
# The job: what each array task runs


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, pickled into the job by submitit: no secret (``storage_file`` holds it)."""

    study_file: str
    profile: str | None
    sets: tuple[str, ...]
    seeds: tuple[int, ...] | None
    budget: int | None
    study_name: str | None
    out: str
    storage: str  # the URL, its password hidden when ``storage_file`` holds the real one
    storage_file: str | None
    started: float
    retry_failed: bool = False
    max_trials: int | None = None
    max_preemptions: int = DEFAULT_MAX_PREEMPTIONS
    loader_override: bool = False  # --set data.num_workers=K: the user's figure, not capped by the CPUs


def job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """This task's id as SLURM shows it (``12_3`` in an array), or None outside SLURM."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID")


def _worker_environment(spec: WorkerSpec) -> None:
    from ablations.sweep.placement import LOADER_ENV, PLACEMENT_ENV, STARTED_ENV

    os.environ[PREEMPT_ENV] = "1"
    os.environ[MAX_PREEMPTIONS_ENV] = str(spec.max_preemptions)
    os.environ[STARTED_ENV] = str(spec.started)
    # The task's CPUs (-c), else the job's CPUs on its node (one task per worker): torch's threads and the loaders
    # stay within them (SLURM's task/none plugin binds nothing, and torch would take every core of the node).
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if not cpus.isdigit():
        cpus = re.match(r"\d*", os.environ.get("SLURM_JOB_CPUS_PER_NODE", "").strip()).group()
    if cpus.isdigit() and int(cpus) > 0:
        os.environ["OMP_NUM_THREADS"] = cpus  # the worker sets torch's intra-op threads from it (run.py)
        if not spec.loader_override:  # the loader processes share the task's CPUs with the training process
            os.environ[LOADER_ENV] = str(max(0, int(cpus) - 1))
    place = {
        "slurm_job": job_id(),
        "host": socket.gethostname(),
        "cpus": int(cpus) if cpus.isdigit() else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }
    os.environ[PLACEMENT_ENV] = json.dumps(place)  # recorded on every trial this worker runs (workers._loop)


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """One array task: the worker loop against the study's storage until the study is done or a signal stops it.
    Returns what happened (submitit pickles it as the job's result)."""
    from ablations.sweep.run import SweepRequest, run_sweep

    def say(line: str) -> None:
        print(line, flush=True)

    url = Path(spec.storage_file).read_text().strip() if spec.storage_file else spec.storage
    _worker_environment(spec)
    install_handlers()
    request = SweepRequest(
        spec.study_file, profile=spec.profile, sets=spec.sets, seeds=spec.seeds, budget=spec.budget,
        study_name=spec.study_name, out=spec.out, storage=url, worker=True, retry_failed=spec.retry_failed,
        max_trials=spec.max_trials,
    )  # fmt: skip
    stopped: Preempted | None = None
    try:
        outcome = run_sweep(request, printer=say)
    except Preempted as stop:
        stopped, outcome = stop, None
    signum = received()
    result: dict[str, Any] = {"job": job_id(), "signal": signal.Signals(signum).name if signum else None}
    if signum is None:
        return result
    say(f"[{spec.study_name or Path(spec.study_file).stem}] {signal.Signals(signum).name}: "
        + ("the running trial was checkpointed and queued again; " if stopped else "between trials; ")
        + "this worker stops")  # fmt: skip
    if signum in REQUEUE_SIGNALS and not _study_done(spec, url, outcome):
        result["requeued"] = requeue_self(say)
    return result


def _study_done(spec: WorkerSpec, url: str, outcome) -> bool:
    """Whether nothing is left for a requeued worker (then it is not requeued)."""
    with contextlib.suppress(Exception):
        from ablations.sweep.board import open_study
        from ablations.sweep.storage import open_storage
        from ablations.sweep.study import load_study

        study = outcome.study if outcome is not None else load_study(
            spec.study_file, profile=spec.profile, sets=spec.sets, seeds=spec.seeds, budget=spec.budget
        )  # fmt: skip
        board = open_study(study, open_storage(url), spec.study_name or study.name)
        c = counts(study, board)
        return c["done"] >= c["total"] and c["running"] == 0
    return False


def requeue_self(say: Callable[[str], None] = print) -> bool:
    """Ask SLURM to requeue this task (it then waits in PENDING, reason BeginTime, about two minutes)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or shutil.which("scontrol") is None:
        return False
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        say(f"requeued SLURM job {job_id() or job}")
        return True
    say(f"could not requeue SLURM job {job}: {first_line(done.stderr or done.stdout or 'no message')}")
    return False


# --------------------------------------------------------------------------------------------------------------
# Preemption inside a worker and its trials


class Preempted(BaseException):  # a stop, not an error: BaseException, so that no ``except Exception`` takes it
    """Raised at an optimiser step boundary once the run's last checkpoint is written after a preemption signal."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum, self.step = int(signum), step
        super().__init__(f"preempted by {self.signame}" + (f" at step {step}" if step is not None else ""))

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name


_received: list[int] = []


def _on_signal(signum, frame) -> None:
    _received.append(signum)


def install_handlers() -> bool:
    """Catch the preemption signals (only set the flag; the trial stops at a step boundary). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    return True


def received() -> int | None:
    """The first preemption signal this process received, or None."""
    return _received[0] if _received else None


def preemptible(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(PREEMPT_ENV) == "1"


def max_preemptions(environ: Mapping[str, str] = os.environ) -> int:
    text = environ.get(MAX_PREEMPTIONS_ENV, "").strip()
    return int(text) if text.isdigit() else DEFAULT_MAX_PREEMPTIONS


def preemption_callbacks(config) -> list:
    """The trial's preemption callback in a SLURM worker (or a rank it started), else none."""
    if not preemptible():
        return []
    t = config.train
    return [_callback_class()(val_every=t.val_every or t.max_steps, max_steps=t.max_steps)]


@functools.cache
def _callback_class():
    import lightning.pytorch as pl

    from ablations.training.checkpoints import LAST

    class PreemptionCheckpoint(pl.Callback):
        """After a preemption signal: at the end of the next optimiser step that is not validated (and not the last)
        write ``checkpoints/last.ckpt`` and raise :class:`Preempted`. A validated step is skipped because its
        validation and best checkpoint come after the step's hooks; the last because the run is then done. With
        several ranks, they agree (any rank signalled) by a reduction at those steps, so that all stop together."""

        def __init__(self, *, val_every: int, max_steps: int) -> None:
            self.val_every, self.max_steps = max(1, val_every), max_steps

        def setup(self, trainer, pl_module, stage) -> None:
            install_handlers()  # before the trainer registers its own: it then leaves SIGUSR1 alone
            no_lightning_requeue(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step >= self.max_steps or step % self.val_every == 0:
                return
            stop = received() is not None
            if trainer.world_size > 1:
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if not stop:
                return
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / f"{LAST}.ckpt")
            raise Preempted(received() or signal.SIGTERM, step)

    return PreemptionCheckpoint


def no_lightning_requeue(trainer) -> bool:
    """Lightning picks ``SLURMEnvironment(auto_requeue=True)`` by itself under SLURM; its SIGUSR1 handler would write
    ``hpc_ckpt_*.ckpt`` (which the harness never resumes from) and ``scontrol requeue`` the whole worker. Set
    ``auto_requeue=False`` on it, as passing ``SLURMEnvironment(auto_requeue=False)`` as a plugin would: called from
    the callback's ``setup``, which Lightning runs before it registers its signal handlers."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    found = False
    for owner in (getattr(trainer, "_accelerator_connector", None), getattr(trainer, "strategy", None)):
        environment = getattr(owner, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False
            found = True
    return found


def record_preemption(board: Board, number: int, stop: Preempted) -> tuple[str, int, int]:
    """Record trial ``number`` as preempted: ``interrupted`` and queued again at once (Optuna's retry callback
    copies its run folder and preemption count), or, past the limit, a failure of kind ``preempted``. Returns
    (kind, preemptions so far, limit)."""
    count = int(board.get(number).user_attrs.get(PREEMPTIONS_ATTR) or 0) + 1
    limit = max_preemptions()
    board.set_attr(number, PREEMPTIONS_ATTR, count)
    where = f" at step {stop.step}" if stop.step is not None else ""
    if count > limit:
        mark_failed(
            board, number, "preempted",
            f"preempted {count} times (the last by {stop.signame}{where}), more than max_preemptions={limit}; "
            "recorded as a failure: --retry-failed runs it again, from its last checkpoint",
        )  # fmt: skip
        return "preempted", count, limit
    mark_failed(
        board, number, "interrupted",
        f"preempted by {stop.signame}{where} ({count} of at most {limit}); its last checkpoint was written and the "
        "trial queued again",
    )  # fmt: skip
    return "interrupted", count, limit


# --------------------------------------------------------------------------------------------------------------
# A multi-device trial: its ranks started by srun


def rank_command(config, config_file: Path, run_dir: Path, *, name: str, group: str, extra: dict) -> list[str] | None:
    """The command that trains a multi-device trial (``train.devices`` = D > 1) in a SLURM worker: ``srun`` starts
    D ranks on the worker's node inside its allocation (``--overlap``: the worker's own step keeps running), each a
    Lightning process that takes its rank from SLURM (``SLURMEnvironment``); each rank sees the worker's GPUs and
    uses the one at its local rank. None outside a SLURM worker (the trial then runs as ``ablations train``)."""
    if not preemptible() or not os.environ.get("SLURM_JOB_ID") or shutil.which("srun") is None:
        return None
    from ablations.results.jsonable import json_safe

    d = config.train.devices
    command = ["srun", "--overlap", "--kill-on-bad-exit=1", "--nodes=1", f"--ntasks={d}", f"--ntasks-per-node={d}"]
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if cpus.isdigit():
        command.append(f"--cpus-per-task={max(1, int(cpus) // d)}")
    if config.train.uses_gpu():
        command.append(f"--gres=gpu:{d}")  # every rank sees the D GPUs and takes the one at its local rank
    return [
        *command,
        *(sys.executable, "-c", RANK_MAIN, "rank", "--config", str(config_file), "--out", str(run_dir)),
        *("--wandb-name", name, "--wandb-group", group, "--wandb-extra", json.dumps(json_safe(extra))),
    ]


# The rank's entry point, run as ``python -c`` (``-m ablations.sweep.slurm`` would load this module twice: once as
# __main__, once through the package, with two Preempted classes and two signal flags).
RANK_MAIN = "import sys; from ablations.sweep.slurm import rank_main; sys.exit(rank_main(sys.argv[1:]))"


def rank_environment() -> dict[str, str]:
    """The worker's environment for ``srun``, without the per-task GPU request it inherited from the job (srun
    reads it as its own option, and the ranks' step asks for its GPUs itself)."""
    drop = {"SLURM_GPUS_PER_TASK", "SLURM_TRES_PER_TASK"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_forwarding(command: Sequence[str], out, env: Mapping[str, str]) -> int:
    """Run ``command`` (srun), forwarding a preemption signal this worker receives to it (srun passes it on to
    every rank), and return its exit status."""
    process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=dict(env))
    forwarded = False
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            signum = received()
            if signum is not None and not forwarded:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)
                forwarded = True


def rank_main(argv: Sequence[str]) -> int:
    """``python -c RANK_MAIN rank --config F --out D …``: one rank of a multi-device trial under srun.
    Exit 0 (rank 0 wrote metrics.json), 2 (bad input, one line), 75 (stopped for a preemption), 1 (anything else)."""
    import argparse

    parser = argparse.ArgumentParser(prog="ablations.sweep.slurm rank")
    parser.add_argument("command", choices=["rank"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wandb-name")
    parser.add_argument("--wandb-group")
    parser.add_argument("--wandb-extra", type=json.loads)
    args = parser.parse_args(list(argv))
    from ablations.config import ConfigError, load_config
    from ablations.data.datasets import DatasetError
    from ablations.model.backbones import WeightsError
    from ablations.training.checkpoints import CheckpointWriteError
    from ablations.training.train import train

    install_handlers()
    step = os.environ.get("SLURM_STEP_ID")
    print(
        f"ablations: rank {os.environ.get('SLURM_PROCID')} of {os.environ.get('SLURM_NTASKS')} in SLURM step "
        f"{os.environ.get('SLURM_JOB_ID')}.{step} on {socket.gethostname()}",
        flush=True,
    )
    try:
        config = load_config(args.config)
        train(
            config, args.out, name=args.wandb_name, group=args.wandb_group, wandb_extra=args.wandb_extra,
            callbacks=preemption_callbacks(config), progress_bar=False,
        )  # fmt: skip
    except Preempted as stop:
        print(f"ablations: {stop}; last checkpoint written", flush=True)
        return PREEMPTED_EXIT
    except (ConfigError, DatasetError, WeightsError) as error:
        print(f"ablations: error: {error}", file=sys.stderr, flush=True)
        return 2
    except CheckpointWriteError as error:
        print(f"ablations: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------------------
# Submitting, following, reporting


def make_executor(folder: Path, opts: SlurmOptions, job_name: str):
    """submitit's ``SlurmExecutor`` writing its scripts, pickles and logs under ``folder/<job id>``."""
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=0)
    executor.update_parameters(**sbatch_parameters(opts, job_name))
    return executor


def submit(spec: WorkerSpec, opts: SlurmOptions, folder: Path, *, executor=None, job_name: str = "ablations"):
    """Submit ``opts.workers`` copies of the worker as one job array; returns submitit's jobs. A submission sbatch
    refuses (a partition or account SLURM does not accept, a request no node can meet) raises ``SweepError`` with
    sbatch's own reason in one line."""
    try:
        executor = executor if executor is not None else make_executor(folder, opts, job_name)
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints a refused sbatch's stderr; one line here
            return executor.map_array(run_worker, [spec] * opts.workers)
    except (SweepError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise SweepError(f"--slurm: sbatch refused the job array: {redact(sbatch_refusal(error))}") from None


def array_id(job_ids: Sequence[str]) -> str:
    return str(job_ids[0]).split("_", 1)[0]


def job_records(job: str) -> list[dict[str, str]]:
    """``scontrol show job -o JOB``: one record per task SLURM still knows (finished ones for MinJobAge)."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", str(job)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    records = []
    for line in done.stdout.splitlines():
        if "JobId=" in line:
            records.append(dict(re.findall(r"(\S+?)=(\S*)", line)))
    return records


def task_name(record: Mapping[str, str]) -> str:
    array, task = record.get("ArrayJobId"), record.get("ArrayTaskId")
    if array and task:
        task = task.split("%", 1)[0]  # "0-3%4": the tasks and how many run at once
        return f"{array}_{task}" if task.isdigit() else f"{array}_[{task}]"
    return record.get("JobId", "?")


def cannot_start(record: Mapping[str, str]) -> str | None:
    """One line for a pending task SLURM will not start as asked (its reason and what it means), else None."""
    if record.get("JobState") != "PENDING":
        return None
    reason = record.get("Reason", "")
    meaning = CANNOT_START.get(reason)
    if meaning is None and (found := CANNOT_START_TEXT.match(reason)):
        meaning, reason = f"the {found.group(1)} may not use this partition", '"' + reason.replace("_", " ") + '"'
    if meaning is None:
        return None
    return f"job {task_name(record)} cannot start: SLURM gives the reason {reason} ({meaning})"


def ended_line(record: Mapping[str, str]) -> str:
    """One line for a task that ended: its state, exit code, reason and the last line of its error log."""
    state, code, reason = record.get("JobState"), record.get("ExitCode"), record.get("Reason")
    line = f"job {task_name(record)} ended {state} (exit code {code}" + (
        f", reason {reason})" if reason and reason != "None" else ")"
    )
    log = record.get("StdErr")
    if log and state != "COMPLETED":
        with contextlib.suppress(OSError):
            tail = [t for t in Path(log).read_text(errors="replace").splitlines() if t.strip()]
            if tail:
                line += f": {redact(tail[-1].strip())[:300]}"
    return line


def open_existing(storage, name: str) -> Board:
    """The stored study as a :class:`Board`, read-only (``--status`` creates, claims and reaps nothing); refuse a
    study that is not there. Its settings are not compared with the file's: progress is counted by arm × seed, which
    the profile or ``--set`` (``profile: auto`` resolves by the machine that asks) do not change."""
    import optuna

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        raise SweepError(f"no study {name!r} in {redact(storage.url)}: nothing has been submitted or run yet") from None
    return Board(storage, optuna.load_study(study_name=name, storage=storage), study_id, name)


def status_lines(study, board: Board, *, retry_failed: float | None = None) -> list[str]:
    """The study's progress from its storage: done, running (where, since when), queued, failures by kind."""
    from optuna.trial import TrialState

    from ablations.results.frames import failure_kind
    from ablations.sweep.progress import clock

    c = counts(study, board, retry_failed=retry_failed)
    trials = board.trials()
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    failures: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            kind = failure_kind(t) or "error"
            failures[kind] = failures.get(kind, 0) + 1
    size = "arm × seed" if study.is_grid else "distinct points"
    profile = (board.study.user_attrs.get("study") or {}).get("profile")
    lines = [
        f"study {board.name}: {c['done']}/{c['total']} {size} done, {c['running']} running, {waiting} queued"
        + (" · " + ", ".join(f"{k} {n}" for k, n in sorted(failures.items())) if failures else "")
        + (f" · profile {profile}" if profile else "")
        + f" · storage {redact(board.storage.url)}"
    ]
    now = time.time()
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.RUNNING:
            continue
        place = t.user_attrs.get("placement") or {}
        worker = t.user_attrs.get("worker") or {}
        where = worker.get("host") or place.get("host") or "?"
        job = f", SLURM job {place['slurm_job']}" if place.get("slurm_job") else ""
        since = clock(now - t.datetime_start.timestamp()) if t.datetime_start else "?"
        resumed = f", preempted {t.user_attrs[PREEMPTIONS_ATTR]}×" if t.user_attrs.get(PREEMPTIONS_ATTR) else ""
        lines.append(
            f"  running: trial {t.number} {t.user_attrs.get('arm')} seed {t.user_attrs.get('seed')} for {since} "
            f"on {where}{job}{resumed}"
        )
    return lines


def poll_seconds() -> float:
    text = os.environ.get(POLL_ENV, "").strip()
    with contextlib.suppress(ValueError):
        return max(0.2, float(text))
    return 5.0


def follow(
    study,
    board: Board,
    job: str,
    *,
    workers: int,
    retry_failed: float | None = None,
    printer: Callable[[str], None] = print,
    poll_s: float | None = None,
) -> int:
    """``--wait``: a progress line per trial start and end (from the storage) and per change of a SLURM task's
    state (from ``scontrol``), until the study is done (0) or no task of the array is left while trials remain
    (1). A task SLURM will not start (``CANNOT_START``) raises ``SweepError`` with SLURM's reason."""
    from optuna.trial import TrialState

    from ablations.results.frames import failure_kind
    from ablations.sweep.progress import Progress

    poll_s = poll_seconds() if poll_s is None else poll_s
    progress = Progress(study, board, workers=workers, printer=printer)
    seen_trials: dict[int, Any] = {}
    seen_tasks: dict[str, tuple[str, str]] = {}
    gone = 0
    while True:
        for t in sorted(board.trials(), key=lambda t: t.number):
            if seen_trials.get(t.number) == t.state or t.state == TrialState.WAITING:
                continue
            seen_trials[t.number] = t.state
            progress.line(_trial_line(study, t, failure_kind))
        records = job_records(job)
        for record in records:
            name, state, reason = task_name(record), record.get("JobState", "?"), record.get("Reason", "")
            if seen_tasks.get(name) == (state, reason):
                continue
            seen_tasks[name] = (state, reason)
            refusal = cannot_start(record)
            if refusal:
                raise SweepError(f"{refusal}; it stays queued: scancel {job}, or submit again with other options")
            if state in ACTIVE_STATES:
                where = f" on {record['NodeList']}" if state == "RUNNING" and record.get("NodeList") else ""
                why = f" ({reason})" if state == "PENDING" and reason and reason != "None" else ""
                printer(f"[{board.name}] job {name} {state}{where}{why}")
            else:
                printer(f"[{board.name}] {ended_line(record)}")
        c = counts(study, board, retry_failed=retry_failed)
        if c["done"] >= c["total"] and c["running"] == 0:
            return 0
        active = [r for r in records if r.get("JobState") in ACTIVE_STATES]
        gone = 0 if active else gone + 1
        if gone >= 2 and c["running"] == 0:  # twice: a requeued task may be between states for a moment
            printer(
                f"[{board.name}] no worker of job {job} is left and {c['total'] - c['done']} of {c['total']} trials "
                "remain: see the job lines above and the logs, then submit again (--slurm N) to go on"
            )
            return 1
        time.sleep(poll_s)


def _trial_line(study, t, failure_kind) -> str:
    from optuna.trial import TrialState

    arm, seed = t.user_attrs.get("arm"), t.user_attrs.get("seed")
    place = t.user_attrs.get("placement") or {}
    job = f" (SLURM job {place['slurm_job']})" if place.get("slurm_job") else ""
    if t.state == TrialState.RUNNING:
        return f"trial {t.number}: {study.axis or 'params'} = {arm}, seed {seed} …{job}"
    if t.state == TrialState.COMPLETE:
        shown = ", ".join(f"{o.metric} {v:.4f}" for o, v in zip(study.objectives, t.values or (), strict=False))
        return f"trial {t.number} {arm} seed {seed}: {shown}{job}"
    if t.state == TrialState.PRUNED:
        return f"trial {t.number} {arm} seed {seed}: pruned{job}"
    kind = failure_kind(t)
    message = ((t.user_attrs.get("failure") or {}).get("message") or "").splitlines()
    return f"trial {t.number} {arm} seed {seed}: {kind}{f' ({message[0][:200]})' if message else ''}{job}"
