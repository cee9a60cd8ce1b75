"""Sweeps: run a study (``ablations.study``) as an Optuna study, any number of workers on any number of machines.

Storage is any Optuna RDB URL: SQLite in the run folder by default, PostgreSQL (``postgresql://…``) when workers
on several machines share one study. A **grid** study (an axis) puts every missing arm × seed in Optuna's queue
(``enqueue_trial``); workers claim queued trials with Optuna's atomic WAITING → RUNNING transition, so a trial
is claimed by one worker only. Two workers that both queue the same missing arm × seed at the same moment
produce two queued copies; a claimed trial runs only if no trial of its arm × seed has finished and none with a
smaller number is queued or running, so exactly one copy runs and the other is recorded as a failed
``duplicate`` that runs nothing. A **search** study (no axis) asks its sampler until ``budget`` trials exist.

Each trial is one :func:`ablations.train.train` run. Its W&B run is grouped by study and named
``<arm>-s<seed>``; the trial's user attributes in the Optuna storage hold the arm, seed, full config and
metrics (mIoU, per-size IoU, throughput, params, MACs, peak memory, receptive field), so tables need neither
W&B nor the network.

Resume: a finished trial (complete, pruned, or failed with a reason such as divergence or out of memory) is
never re-run. A trial whose worker died (Ctrl-C, ``kill -9``, a lost machine) is marked failed as
``interrupted`` and its arm × seed is queued again: at once when the dead worker was on this host (its process
is gone), after the heartbeat grace period when it was elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ablations.results import names, tables
from ablations.results.frames import failure_kind, redact, trial_frame, trial_records
from ablations.study import Study
from ablations.train import json_safe as _json_safe

FINISHED_FAILURES = names.FINISHED_FAILURES  # recorded results: never re-run by default
RETRIED_FAILURES = names.RETRIED_FAILURES  # re-run when the sweep runs again
HEARTBEAT_S = 20
GRACE_S = 120

# Metrics copied from a run's metrics.json into the trial (the rest stays in the run folder and in W&B).
REUSE_CAP = 5  # a search asks at most this many times its budget of points, reused ones included
KEPT_METRICS = names.KEPT_METRICS


class SweepError(RuntimeError):
    """A sweep that cannot go on (bad storage, a study that does not match the stored one, missing data)."""


# --------------------------------------------------------------------------------------------------------------
# Storage and the study


def default_out_dir(study: Study) -> Path:
    return Path("runs") / "sweeps" / study.name


def storage_url(out_dir: Path, url: str | None) -> str:
    if url:
        return url
    out_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out_dir / 'optuna.db').resolve()}"


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S) -> optuna.storages.RDBStorage:
    # SQLite: several local workers write one file, so wait for its lock; servers: drop dead connections.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    # Workers started together on a fresh database race to create Optuna's tables; the loser retries and finds
    # them made.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=grace
                )
        except Exception as error:
            if attempt < 4 and type(error).__name__ in ("IntegrityError", "ProgrammingError", "OperationalError"):
                time.sleep(0.5 + attempt)
                continue
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise SweepError(f"--storage {redact(url)}: cannot open ({type(error).__name__}: {first})") from None
    raise AssertionError("unreachable")


def open_study(study: Study, storage: optuna.storages.RDBStorage, study_name: str) -> optuna.Study:
    """Create the Optuna study or load it; refuse one that was started from different settings."""
    directions = [o.direction for o in study.objectives]
    optuna_study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=make_sampler(study),
        pruner=make_pruner(study),
        load_if_exists=True,
    )
    attrs = optuna_study.user_attrs
    fingerprint = study.fingerprint()
    if "fingerprint" not in attrs:
        optuna_study.set_user_attr("fingerprint", fingerprint)
        optuna_study.set_user_attr("study", study.describe())  # axis, arms, seeds, objectives, profile, --set
    elif attrs["fingerprint"] != fingerprint:
        before = attrs.get("study", {})
        raise SweepError(
            f"study {study_name!r} in this storage was started with other settings (profile "
            f"{before.get('profile')!r}, --set {before.get('sets')}, arms {before.get('arms')}); now profile "
            f"{study.profile!r}, --set {list(study.sets)}, arms {list(study.arm_labels)}. Use --study-name NEW "
            "or another --out/--storage to start a new study"
        )
    if [d.name.lower() for d in optuna_study.directions] != directions:
        raise SweepError(f"study {study_name!r}: stored directions differ from the study file's objectives")
    return optuna_study


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    seed = study.seeds[0]
    if study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, study.total // 3 + 1))
    if study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, study.total // 3)))
    return optuna.samplers.RandomSampler(seed=seed)  # grid studies draw only nuisance parameters


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    p = dict(study.pruner or {})
    kind = p.pop("kind", None)
    if kind is None:
        return optuna.pruners.NopPruner()
    warmup = int(p.get("warmup_steps", 0))
    startup = int(p.get("startup_trials", 2))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(
            float(p.get("percentile", 25.0)), n_startup_trials=startup, n_warmup_steps=warmup
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(p.get("min_resource", 1)))
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(p.get("min_resource", 1)))


# --------------------------------------------------------------------------------------------------------------
# Trial bookkeeping


def is_settled(trial: FrozenTrial, *, retry_failed: float | None = None) -> bool:
    """A result that stands: complete, pruned, or failed for a reason that re-running would repeat. With
    ``retry_failed`` (a time stamp: when this sweep started) such failures from before that time do not stand."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL and failure_kind(trial) in FINISHED_FAILURES:
        if retry_failed is None:
            return True
        ended = trial.datetime_complete.timestamp() if trial.datetime_complete else 0.0
        return ended >= retry_failed  # failed again in this sweep: a result
    return False


def key_of(trial: FrozenTrial) -> tuple[str, int] | None:
    arm, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
    if arm is None or seed is None:
        return None
    return str(arm), int(seed)


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _worker_gone(worker: Any) -> bool:
    """True when the worker ran on this host and its process no longer exists (or the pid was reused)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = _process_start(pid)
    return worker.get("start") is not None and started is not None and started != worker["start"]


def mark_failed(study: optuna.Study, trial_id: int, kind: str, message: str) -> bool:
    storage = study._storage
    storage.set_trial_user_attr(trial_id, "failure", {"kind": kind, "message": message[-2000:]})
    try:
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:  # already finished by someone else (UpdateFinishedTrialError)
        return False


def reap_interrupted(study: optuna.Study, *, grace: float = GRACE_S) -> list[int]:
    """Mark trials whose worker is gone as failed (``interrupted``) so that their arm × seed runs again."""
    reaped = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if _worker_gone(worker):
            message = f"interrupted: worker pid {worker['pid']} on {worker['host']} is gone"
        elif worker is None and trial.datetime_start and now - trial.datetime_start.timestamp() > grace:
            # Claimed, then its worker died before it could write down who it is: nothing else will ever end it.
            message = f"interrupted: claimed {now - trial.datetime_start.timestamp():.0f} s ago by an unknown worker"
        else:
            continue
        if mark_failed(study, trial._trial_id, "interrupted", message):
            reaped.append(trial.number)
    # Workers on other machines: Optuna's heartbeat. A trial with no heartbeat for the grace period is failed.
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    reaped += sorted(before - after - set(reaped))
    return reaped


def top_up(study: Study, optuna_study: optuna.Study, *, retry_failed: float | None = None) -> int:
    """Queue every arm × seed that has no settled, queued or running trial. Returns how many were queued."""
    trials = optuna_study.get_trials(deepcopy=False)
    covered = set()
    for t in trials:
        key = key_of(t)
        if key and (t.state in (TrialState.WAITING, TrialState.RUNNING) or is_settled(t, retry_failed=retry_failed)):
            covered.add(key)
    queued = 0
    for arm, seed in study.grid():
        if (arm, seed) not in covered:
            optuna_study.enqueue_trial({"arm": arm, "seed": seed}, user_attrs={"arm": arm, "seed": seed})
            queued += 1
    return queued


def claim(study: Study, optuna_study: optuna.Study, *, retry_failed: float | None = None) -> optuna.Trial | None:
    """Claim one queued arm × seed that should run, or None when nothing is queued."""
    storage = optuna_study._storage
    study_id = optuna_study._study_id
    while True:
        waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            return None
        for candidate in sorted(waiting, key=lambda t: t.number):
            if not storage.set_trial_state_values(candidate._trial_id, TrialState.RUNNING):
                continue  # another worker took it first
            with contextlib.suppress(Exception):
                storage.record_heartbeat(candidate._trial_id)  # from now on Optuna's stale-trial check covers it
            storage.set_trial_user_attr(candidate._trial_id, "worker", worker_identity())
            key = key_of(candidate)
            same = [
                t for t in optuna_study.get_trials(deepcopy=False) if key_of(t) == key and t.number != candidate.number
            ]
            duplicate = any(is_settled(t, retry_failed=retry_failed) for t in same) or any(
                t.number < candidate.number and t.state in (TrialState.WAITING, TrialState.RUNNING) for t in same
            )
            if duplicate:
                mark_failed(optuna_study, candidate._trial_id, "duplicate", f"duplicate of another trial of {key}")
                break  # re-read the queue
            return optuna.Trial(optuna_study, candidate._trial_id)
        else:
            return None


def _same_point(optuna_study: optuna.Study, params: dict[str, Any], seed: int, number: int) -> FrozenTrial | None:
    """An earlier complete, trained (not itself reused) trial with the same sampled parameters and seed."""
    for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (
            t.number != number
            and "reused_from" not in t.user_attrs
            and t.user_attrs.get("seed") == seed
            and {k: v for k, v in t.params.items() if k in params} == params
        ):
            return t
    return None


def counts(study: Study, optuna_study: optuna.Study, *, retry_failed: float | None = None) -> dict[str, int]:
    trials = optuna_study.get_trials(deepcopy=False)
    if study.is_grid:
        keys = set(study.grid())
        settled = {key_of(t) for t in trials if is_settled(t, retry_failed=retry_failed)} & keys
        running = {key_of(t) for t in trials if t.state == TrialState.RUNNING} & keys
        return {"done": len(settled), "running": len(running), "total": len(keys)}
    settled = [t for t in trials if is_settled(t, retry_failed=retry_failed) and "reused_from" not in t.user_attrs]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return {"done": len(settled), "running": len(running), "total": study.total, "asked": len(trials)}


# --------------------------------------------------------------------------------------------------------------
# Running trials


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while it runs (for workers on other hosts)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id, interval), daemon=True)

    def _run(self, storage, trial_id, interval) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            self._stop.wait(interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def classify(error: BaseException) -> tuple[str, str]:
    """(failure kind, message) of an exception raised by a training run."""
    from ablations.config import ConfigError
    from ablations.data.datasets import DatasetError
    from ablations.model.backbones import WeightsError
    from ablations.system import DivergedError

    text = f"{type(error).__name__}: {error}"
    if isinstance(error, DivergedError):
        return "diverged", str(error)
    oom_types = tuple(t for t in (getattr(__import__("torch"), "OutOfMemoryError", None), MemoryError) if t)
    lowered = str(error).lower()
    if isinstance(error, oom_types) or "out of memory" in lowered or "can't allocate memory" in lowered:
        return "out_of_memory", text
    if isinstance(error, ConfigError | DatasetError | WeightsError):
        return "bad_input", str(error)
    return "error", text + "\n" + "".join(traceback.format_exception(error))[-3000:]


def _pruning_callback(trial: optuna.Trial, monitor: str):
    from optuna_integration import PyTorchLightningPruningCallback

    class StepPruning(PyTorchLightningPruningCallback):
        """optuna-integration's callback, reporting at the optimiser step: these runs validate every
        ``train.val_every`` steps inside one long epoch, so the epoch number would not advance."""

        def on_validation_end(self, trainer, pl_module) -> None:
            if self.is_ddp_backend or trainer.sanity_checking:
                return super().on_validation_end(trainer, pl_module)
            score = trainer.callback_metrics.get(self.monitor)
            if score is None:
                return super().on_validation_end(trainer, pl_module)
            step = trainer.global_step
            self._trial.report(float(score), step=step)
            if self._trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with {self.monitor} {float(score):.4f}")

    return StepPruning(trial, monitor=monitor)


def trial_stats(config) -> dict[str, Any]:
    """Params, MACs and receptive field at the training crop size (on the meta device: no memory, no time)."""
    from ablations.describe import describe

    crop = config.data.crop_size or config.data.image_size
    summary = describe(config, (crop, crop))
    return {
        "params": summary["params"],
        "macs": summary["macs"],
        "receptive_field": summary["receptive_field"]["logits"],
        "output_stride": summary["output_stride"],
    }


@dataclass
class Progress:
    """One line per trial start and end: done / total, arm, elapsed and an estimate of what is left."""

    study: Study
    optuna_study: optuna.Study
    workers: int = 1
    started: float = 0.0
    printer: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.started = self.started or time.time()

    def line(self, text: str) -> None:
        c = counts(self.study, self.optuna_study)
        elapsed = time.time() - self.started
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.datetime_start and t.datetime_complete
        ]
        left = c["total"] - c["done"]
        eta = f"~{_clock(statistics.median(durations) * left / max(1, self.workers))} left" if durations else "…"
        status = f"{c['done']}/{c['total']} done, {c['running']} running, {_clock(elapsed)}, {eta}"
        self.printer(f"[{self.study.name} {status}] {text}")


def _clock(seconds: float) -> str:
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
    os.environ.setdefault("WANDB_SILENT", "true")


def run_trial(
    study: Study, optuna_study: optuna.Study, trial: optuna.Trial, out_dir: Path, progress: Progress, study_name: str
) -> str:
    """Run one claimed trial to a recorded end; returns its final state name. Re-raises interruptions."""
    from ablations.config import ConfigError
    from ablations.train import train

    storage = optuna_study._storage
    tid = trial._trial_id
    if study.is_grid:
        arm = trial.suggest_categorical("arm", list(study.arm_labels))
        seed = trial.suggest_int("seed", 0, 2**31 - 1)  # a range, not the list, so that seeds may be added later
    else:
        arm, seed = None, study.seeds[0]
    params = {}
    for p in study.search_space:
        if p.categorical:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.integer:
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    label = arm if arm is not None else ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())
    if not study.is_grid:
        storage.set_trial_user_attr(tid, "arm", label)
        storage.set_trial_user_attr(tid, "seed", seed)
    storage.set_trial_user_attr(tid, "worker", worker_identity())
    storage.set_trial_user_attr(tid, names.COMMIT, _commit())
    if not study.is_grid:
        earlier = _same_point(optuna_study, params, seed, trial.number)
        if earlier is not None:
            # A sampler may propose a point it has seen (categorical spaces do this often); training it again
            # would give the same result, so the earlier one is reused and the budget counts distinct points.
            for key in ("config", "stats", "metrics"):
                if key in earlier.user_attrs:
                    storage.set_trial_user_attr(tid, key, earlier.user_attrs[key])
            storage.set_trial_user_attr(tid, "reused_from", earlier.number)
            optuna_study.tell(trial, values=list(earlier.values))
            progress.line(f"trial {trial.number} {label} seed {seed}: same point as trial {earlier.number}, reused")
            return "REUSED"
    try:
        config = study.resolve(arm, seed, params)
    except ConfigError as error:
        mark_failed(optuna_study, tid, "error", f"config: {error}")
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED (config: {error})")
        return "FAIL"
    storage.set_trial_user_attr(tid, "config", config.to_dict())
    name = f"{_slug(label)}-s{seed}"
    run_dir = out_dir / "trials" / f"{trial.number:04d}-{name}"
    storage.set_trial_user_attr(tid, "run_dir", str(run_dir))
    progress.line(f"trial {trial.number}: {study.axis or 'params'} = {label}, seed {seed} …")
    callbacks = []
    if study.pruner:
        callbacks.append(_pruning_callback(trial, study.objectives[0].metric))
    started = time.time()
    try:
        stats = trial_stats(config)
        storage.set_trial_user_attr(tid, "stats", stats)
        extra = {
            "study": study_name,
            "study_file": str(study.path) if study.path else None,
            "axis": study.axis,
            "arm": label,
            "seed": seed,
            "trial": trial.number,
            "params": params,
        }
        with Heartbeat(storage, tid, HEARTBEAT_S):
            if config.train.devices > 1:
                metrics = train_in_subprocess(config, run_dir, name=name, group=study_name, wandb_extra=extra)
            else:
                metrics = train(
                    config, run_dir, name=name, group=study_name, wandb_extra=extra, callbacks=callbacks,
                    progress_bar=False,
                )  # fmt: skip
    except optuna.TrialPruned as pruned:
        storage.set_trial_user_attr(tid, "pruned", str(pruned))
        optuna_study.tell(trial, state=TrialState.PRUNED)
        progress.line(f"trial {trial.number} {label} seed {seed}: pruned ({pruned})")
        return "PRUNED"
    except (KeyboardInterrupt, SystemExit):
        mark_failed(optuna_study, tid, "interrupted", "interrupted by the user (Ctrl-C) or a signal")
        progress.line(f"trial {trial.number} {label} seed {seed}: interrupted; the next run of this sweep redoes it")
        raise
    except Exception as error:
        kind, message = classify(error)
        mark_failed(optuna_study, tid, kind, message)
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED ({kind}: {message.splitlines()[0][:200]})")
        if kind == "bad_input":
            raise SweepError(f"trial {trial.number} ({label}, seed {seed}): {message}") from None
        return "FAIL"
    finally:
        _release_memory()
    kept = {k: metrics[k] for k in KEPT_METRICS if k in metrics}
    kept.update(_inference_figures(config))
    kept.update({k: v for k, v in metrics.items() if k.startswith("val/IoU/")})
    kept.update(stats)
    storage.set_trial_user_attr(tid, "metrics", _json_safe(kept))
    values = [metrics.get(o.metric, kept.get(o.metric)) for o in study.objectives]
    if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
        missing = [o.metric for o, v in zip(study.objectives, values, strict=True) if not isinstance(v, int | float)]
        mark_failed(optuna_study, tid, "error", f"objective metric(s) missing or not finite: {missing or values}")
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED (objective not available: {values})")
        return "FAIL"
    optuna_study.tell(trial, values=[float(v) for v in values])
    shown = ", ".join(f"{o.metric} {v:.4f}" for o, v in zip(study.objectives, values, strict=True))
    ips = metrics.get(names.TRAIN_IPS)
    progress.line(
        f"trial {trial.number} {label} seed {seed}: {shown}"
        + (f", {ips:.1f} img/s" if isinstance(ips, float) else "")
        + f", {time.time() - started:.0f} s"
    )
    return "COMPLETE"


class TrialProcessError(RuntimeError):
    """A multi-device trial's training process failed; the message is the end of what it printed."""


def train_in_subprocess(config, run_dir: Path, *, name: str, group: str, wandb_extra: dict) -> dict[str, Any]:
    """Train a multi-device trial (``train.devices`` > 1) as its own ``ablations train`` process. Lightning's DDP
    launcher starts the other ranks by re-running the command that started it; run inside the sweep, that command
    would be the sweep, and every rank would claim trials of its own. The trial's process writes
    ``metrics.json`` once (rank 0), which is the result; its failure is classified from what it printed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "trial-config.yaml"
    config_file.write_text(config.to_yaml())
    command = [
        *(sys.executable, "-m", "ablations.cli", "train", "--config", str(config_file), "--out", str(run_dir)),
        *("--wandb-name", name, "--wandb-group", group, "--wandb-extra", json.dumps(_json_safe(wandb_extra))),
    ]
    log = run_dir / "train.log"
    with log.open("w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0 or not (run_dir / "metrics.json").is_file():
        tail = log.read_text(errors="replace")[-2000:].strip()
        message = f"training process exited with status {status}: {tail.splitlines()[-1] if tail else ''}"
        if status == 2:  # the CLI's one-line bad-input exit
            from ablations.config import ConfigError

            raise ConfigError(tail.splitlines()[-1].removeprefix("ablations: error: ") if tail else message)
        if "training diverged" in tail:
            from ablations.system import DivergedError

            raise DivergedError(tail.split("training diverged", 1)[1].splitlines()[0].strip(": "))
        raise TrialProcessError(message + "\n" + tail)
    return json.loads((run_dir / "metrics.json").read_text())


def _inference_figures(config) -> dict[str, Any]:
    """The trial's inference cost as it evaluates (``ablations.bench.inference_figures``); a failure is recorded,
    never fatal: the trained result stands."""
    from ablations.bench import inference_figures

    try:
        return inference_figures(config)
    except Exception as error:  # a measurement, not the result
        return {names.INFER_ERROR: f"{type(error).__name__}: {str(error)[:200]}"}
    finally:
        _release_memory()


@functools.cache
def _commit() -> str | None:
    from ablations.bench import git_commit

    return git_commit()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text).strip("_")[:80] or "trial"


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------------
# Workers


def work(
    study: Study,
    optuna_study: optuna.Study,
    out_dir: Path,
    study_name: str,
    *,
    workers: int = 1,
    retry_failed: float | None = None,
    max_trials: int | None = None,
    poll_s: float = 5.0,
    printer: Callable[[str], None] = print,
) -> int:
    """One worker: claim and run trials until the study is done. Returns how many trials this worker ran."""
    quiet_libraries()
    progress = Progress(study, optuna_study, workers=workers, printer=printer)
    # Ctrl-C raises KeyboardInterrupt as usual; the flag also stops the sweep after the current trial when a
    # library on the way (W&B, a data loader) swallows the exception and lets the trial finish.
    requested = threading.Event()

    def on_interrupt(signum, frame):
        requested.set()
        signal.default_int_handler(signum, frame)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    try:
        return _work_loop(
            study, optuna_study, out_dir, study_name, progress, requested, retry_failed, max_trials, poll_s, printer
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _ask(optuna_study: optuna.Study) -> optuna.Trial:
    # Optuna warns that storage heartbeats are meant for Study.optimize; this loop records them itself (Heartbeat).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        return optuna_study.ask()


def _work_loop(
    study, optuna_study, out_dir, study_name, progress, requested, retry_failed, max_trials, poll_s, printer
):
    ran = 0
    while max_trials is None or ran < max_trials:
        reaped = reap_interrupted(optuna_study)
        if reaped:
            printer(f"[{study.name}] marked interrupted (their workers are gone): trials {reaped}")
        if study.is_grid:
            top_up(study, optuna_study, retry_failed=retry_failed)
            trial = claim(study, optuna_study, retry_failed=retry_failed)
        else:
            c = counts(study, optuna_study)
            # The budget counts distinct trained points; the cap stops a sampler that only proposes seen ones.
            wanted = c["done"] + c["running"] < study.total and c["asked"] < REUSE_CAP * study.total
            trial = _ask(optuna_study) if wanted else None
            if trial is None and c["done"] + c["running"] < study.total and c["running"] == 0:
                printer(
                    f"[{study.name}] stopping at {c['done']} distinct points of the budget {study.total}: the sampler "
                    f"proposed only already-trained points in {c['asked']} asks (is the search space that small?)"
                )
        if trial is None:
            if counts(study, optuna_study, retry_failed=retry_failed)["running"] == 0:
                return ran
            time.sleep(poll_s)  # others are running the rest; wait in case one of them dies
            continue
        try:
            run_trial(study, optuna_study, trial, out_dir, progress, study_name)
        except (KeyboardInterrupt, SystemExit):
            # Interrupted before run_trial recorded it (e.g. while resolving the config): record it here.
            if optuna_study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                mark_failed(
                    optuna_study, trial._trial_id, "interrupted", "interrupted by the user (Ctrl-C) or a signal"
                )
            raise
        ran += 1
        if requested.is_set():
            raise KeyboardInterrupt
    return ran


def spawn_workers(argv: Sequence[str], workers: int, *, started: float | None = None) -> int:
    """Start ``workers`` worker processes of this same command (``--worker``), wait for them, return the worst
    exit status. Threads are shared out (CPU) and each worker gets its own GPU when there are enough."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env["ABLATIONS_SWEEP_STARTED"] = str(started or time.time())
        if gpus >= workers and "CUDA_VISIBLE_DEVICES" not in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
        command = [sys.executable, "-m", "ablations.cli", *argv, "--worker"]
        processes.append(subprocess.Popen(command, env=env))
    status = 0
    try:
        for process in processes:
            status = max(status, process.wait())
    except KeyboardInterrupt:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait()
        raise
    return status


# --------------------------------------------------------------------------------------------------------------
# The comparison table (the results layer renders it; the same code makes the reports)


def trial_rows(optuna_study: optuna.Study) -> list[dict[str, Any]]:
    """One flat dict per trial that ran: number, state, arm, seed, params, failure and every stored metric."""
    return trial_records(optuna_study.get_trials(deepcopy=False))


def comparison(study: Study, optuna_study: optuna.Study, *, geometry: Any = None) -> dict[str, Any]:
    """The verdict tables of a grid study (``results.tables.study_tables``) or the points and Pareto front of
    a search study."""
    df = trial_frame(optuna_study)
    if study.is_grid:
        return tables.study_tables(study, df, geometry=geometry, short=True)
    objectives = [(o.metric, o.direction == "maximize") for o in study.objectives]
    points, front = tables.search_frame(df, objectives)
    return {"points": points, "front": front, "display": tables.search_display(points, objectives)}


def format_table(study: Study, result: dict[str, Any], *, study_name: str, geometry: Any = None) -> str:
    title = f"{study_name}: {study.axis or 'search'} — {study.description.split('. ')[0] if study.description else ''}"
    lines = [title.rstrip(" —"), tables.render(result["display"], "text"), ""]
    if study.is_grid:
        lines.append(tables.headline(study, result))
        if geometry is not None:
            lines.append(f"geometry: {geometry.summary()}")
        lines.append(tables.VERDICT_RULE)
        lines.append(
            "train/infer img/s (trial): each trial's own figures, taken minutes apart (a record, not a comparison; "
            "`ablations report --bench` times the arms interleaved); GMACs: one training-stride forward pass."
        )
    else:
        lines.append(
            f"Pareto front over {', '.join(o.metric for o in study.objectives)} from seed means "
            f"({len(result['front'])} points): candidates to re-run over seeds, not verdicts."
        )
    return "\n".join(lines)


def write_outputs(study: Study, optuna_study: optuna.Study, out_dir: Path, study_name: str) -> str:
    """Print-ready table; also ``summary.md``, ``summary.json`` and ``trials.json`` in the run folder."""
    from ablations.geometry import study_geometry

    geometry = study_geometry(study) if study.is_grid else None
    result = comparison(study, optuna_study, geometry=geometry)
    text = format_table(study, result, study_name=study_name, geometry=geometry)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text("```\n" + text + "\n```\n")
    frames = {k: v for k, v in result.items() if isinstance(v, pd.DataFrame) and k != "display"}
    summary = {k: json.loads(v.to_json(orient="records")) for k, v in frames.items()}
    summary.update({k: v for k, v in result.items() if k in ("best", "front")})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "trials.json").write_text(json.dumps(_json_safe(trial_rows(optuna_study)), indent=2, default=str))
    return text


def check_storage_reachable(url: str) -> None:
    """Fail early, with the URL (password hidden) in the message, when a database server cannot be reached."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and not Path(path).parent.exists():
            raise SweepError(f"--storage {url}: folder {Path(path).parent} does not exist")
        return
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SweepError(f"--storage {redact(url)}: cannot connect ({first})") from None


__all__ = [
    "SweepError",
    "check_storage_reachable",
    "claim",
    "comparison",
    "format_table",
    "open_storage",
    "open_study",
    "reap_interrupted",
    "redact",
    "run_trial",
    "spawn_workers",
    "storage_url",
    "top_up",
    "trial_rows",
    "work",
    "write_outputs",
]
