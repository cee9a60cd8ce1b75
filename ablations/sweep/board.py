"""The trials of a study in its storage: queueing arm × seed, claiming one, reaping trials whose worker died, and
counting what is done. Everything here goes through Optuna's public ``Study`` and ``RDBStorage`` calls.

What Optuna does for us: the atomic WAITING → RUNNING claim (``RDBStorage.set_trial_state_values``), duplicate-
aware queueing (``enqueue_trial(skip_if_exists=True)``), the heartbeat check of trials on other machines
(``fail_stale_trials``) and re-queueing a trial whose worker stopped (``RetryHeartbeatStaleTrialCallback``).

What it lacks, and so lives here:

- **same-host reaping**: a worker killed on this machine leaves a RUNNING trial that Optuna would fail only after
  the heartbeat grace period; its pid is gone, so it is failed (and re-queued) at once;
- **exactly once per arm × seed**: two workers that both queue a missing arm × seed at the same moment make two
  copies (Optuna's ``skip_if_exists`` reads, then writes). A claimed trial runs only if no trial of its arm × seed
  has finished and none with a smaller number is queued or running; otherwise it is recorded as a failed
  ``duplicate`` that ran nothing, so the table never counts a seed twice;
- **counting by arm × seed** (grid) and by distinct trained point (search): Optuna's ``MaxTrialsCallback`` counts
  trials by state inside ``Study.optimize``; a reused point or a duplicate must not count.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablations.results import names
from ablations.results.frames import failure_kind
from ablations.sweep.storage import GRACE_S, RETRY, SweepError, make_pruner, make_sampler
from ablations.sweep.study import Study


@dataclass
class Board:
    """An Optuna study with the storage it lives in (Optuna keeps both private on ``Study``)."""

    storage: optuna.storages.RDBStorage
    study: optuna.Study
    study_id: int
    name: str
    _file: tuple[Path, int] | None = None  # a SQLite storage's file and its inode when opened
    sequential: Any = None  # the study's stored group-sequential design (ablations.results.sequential.Design)

    def __post_init__(self) -> None:
        url = self.storage.url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = Path(url.removeprefix("sqlite:///"))
            with contextlib.suppress(OSError):
                self._file = (path, path.stat().st_ino)

    def check_storage(self) -> None:
        """Raise when the SQLite file was deleted or replaced while the sweep ran: its open connection would go on
        writing into the deleted file, and every result from then on would be lost without a word."""
        if self._file is None:
            return
        path, inode = self._file
        try:
            same = path.stat().st_ino == inode
        except OSError:
            same = False
        if not same:
            raise SweepError(
                f"storage {path} was deleted or replaced while the sweep ran; stopping so that no result is written "
                "into the void. The run folders are intact: run the sweep again, and each trial that had a "
                "checkpoint resumes from it"
            )

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def set_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)

    def get(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))


def open_study(study: Study, storage: optuna.storages.RDBStorage, study_name: str) -> Board:
    """Create the Optuna study or load it, as a :class:`Board`; refuse a stored study that was started from
    different settings."""
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
    design = _stored_design(optuna_study, study, study_name)
    if [d.name.lower() for d in optuna_study.directions] != directions:
        raise SweepError(f"study {study_name!r}: stored directions differ from the study file's objectives")
    # Each objective named by its metric (optuna-dashboard, trials_dataframe and the plots show these instead of
    # "Objective 0"): set when the study is created, and on opening one stored before the names were.
    metric_names = [o.metric for o in study.objectives]
    if optuna_study.metric_names != metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental since Optuna 3.2
            optuna_study.set_metric_names(metric_names)
    board = Board(storage, optuna_study, storage.get_study_id_from_name(study_name), study_name)
    board.sequential = design
    return board


DESIGN_ATTR = "sequential"


def _stored_design(optuna_study: optuna.Study, study: Study, study_name: str):
    """The study's group-sequential design: stored when a sweep first runs with one; a later sweep with another
    is refused (changing the looks or α half-way voids the error control); a sweep without one continues the
    stored design. None for a fixed-seed study."""
    from ablations.results.sequential import Design

    stored = optuna_study.user_attrs.get(DESIGN_ATTR)
    if study.sequential is None:
        return Design.from_dict(stored) if stored else None
    if stored is None:
        if any(t.state == TrialState.COMPLETE and _beyond(t, study) for t in optuna_study.get_trials(deepcopy=False)):
            raise SweepError(
                f"study {study_name!r} already holds trials of seeds outside the design's first look; a sequential "
                "design must be fixed before its looks are seen: use --study-name NEW or another --out/--storage"
            )
        optuna_study.set_user_attr(DESIGN_ATTR, study.sequential.to_dict())
        return study.sequential
    kept = Design.from_dict(stored)
    if kept.identity() != study.sequential.identity():
        raise SweepError(
            f"study {study_name!r} in this storage runs the sequential design {kept.identity()}; now "
            f"{study.sequential.identity()}. A design cannot change once its looks have begun: run it as stored "
            "(drop the design options), or use --study-name NEW or another --out/--storage"
        )
    return kept  # with the noise floor it was stored with


def _beyond(trial: FrozenTrial, study: Study) -> bool:
    seed = trial.user_attrs.get("seed")
    return seed is not None and int(seed) not in study.sequential.seeds[: study.sequential.looks[0]]


def is_settled(trial: FrozenTrial, *, retry_failed: float | None = None) -> bool:
    """A result that stands: complete, pruned, or failed for a reason that re-running would repeat. With
    ``retry_failed`` (a time stamp: when this sweep started) such failures from before that time do not stand."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL and failure_kind(trial) in names.FINISHED_FAILURES:  # results, not re-run
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


def mark_failed(board: Board, number: int, kind: str, message: str) -> bool:
    """Record trial ``number`` as failed with ``kind``; an ``interrupted`` trial is queued again (Optuna's retry
    callback, as for a stale trial). False when someone else had already finished it."""
    trial_id = board.trial_id(number)
    board.storage.set_trial_user_attr(trial_id, "failure", {"kind": kind, "message": message[-2000:]})
    try:
        failed = board.storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:  # already finished by someone else (UpdateFinishedTrialError)
        return False
    if failed and kind == "interrupted":
        RETRY(board.study, board.storage.get_trial(trial_id))
    return failed


def reap_interrupted(board: Board, *, grace: float = GRACE_S) -> list[int]:
    """Mark trials whose worker is gone as failed (``interrupted``) so that they run again."""
    reaped = []
    now = time.time()
    for trial in board.trials((TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if _worker_gone(worker):
            message = f"interrupted: worker pid {worker['pid']} on {worker['host']} is gone"
        elif worker is None and trial.datetime_start and now - trial.datetime_start.timestamp() > grace:
            # Claimed, then its worker died before it could write down who it is: nothing else will ever end it.
            message = f"interrupted: claimed {now - trial.datetime_start.timestamp():.0f} s ago by an unknown worker"
        else:
            continue
        if mark_failed(board, trial.number, "interrupted", message):
            reaped.append(trial.number)
    # Workers on other machines: Optuna's heartbeat. A trial with no heartbeat for the grace period is failed and
    # queued again by the storage's retry callback.
    before = {t.number for t in board.trials((TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(board.study)
    after = {t.number for t in board.trials((TrialState.RUNNING,))}
    reaped += sorted(before - after - set(reaped))
    return reaped


def outcome(study: Study, board: Board, *, retry_failed: float | None = None, trials=None):
    """A sequential study's standing (``ablations.results.sequential.decide`` over its stored trials): the verdicts
    of every decided look and the (arm, seed) pairs the design wants so far; None for a fixed-seed study."""
    design = study.sequential or board.sequential
    if design is None or not study.is_grid:
        return None
    from ablations.results.sequential import decide
    from ablations.results.tables import arm_floors
    from ablations.sweep.geometry import compared_arms

    values: dict[str, dict[int, float]] = {}
    settled: set[tuple[str, int]] = set()
    for t in sorted(trials if trials is not None else board.trials(), key=lambda t: t.number):
        key = key_of(t)
        if key is None:
            continue
        if is_settled(t, retry_failed=retry_failed):
            settled.add(key)
        if t.state == TrialState.COMPLETE and t.values:
            values.setdefault(key[0], {})[key[1]] = float(t.values[0])
    objective = study.objectives[0]
    return decide(
        values, study.baseline or study.arm_labels[0], compared_arms(study), design,
        min_effect=study.min_effect, maximize=objective.direction == "maximize", settled=settled,
        floor=arm_floors(study, design.floor),
    )  # fmt: skip


def wanted(study: Study, board: Board, *, retry_failed: float | None = None, trials=None) -> list[tuple[str, int]]:
    """The (arm, seed) pairs a grid study runs: its grid; for a sequential study, its first look (every arm) and
    each later look's seeds for the arms still unresolved and the baseline, as far as the stored results go."""
    design = study.sequential or board.sequential
    pairs = (
        study.grid() if design is None else [(a, s) for s in design.seeds[: design.looks[0]] for a in study.arm_labels]
    )
    decided = outcome(study, board, retry_failed=retry_failed, trials=trials)
    if decided is not None:
        pairs += [p for p in decided.pairs if p not in set(pairs)]
    return pairs


def top_up(study: Study, board: Board, *, retry_failed: float | None = None) -> int:
    """Queue every arm × seed that has no settled, queued or running trial. Returns how many were queued."""
    trials = board.trials()
    covered, seen = set(), set()
    for t in trials:
        key = key_of(t)
        seen.add(key)
        if key and (t.state in (TrialState.WAITING, TrialState.RUNNING) or is_settled(t, retry_failed=retry_failed)):
            covered.add(key)
    queued = 0
    for arm, seed in wanted(study, board, retry_failed=retry_failed, trials=trials):
        if (arm, seed) not in covered:
            # A first queueing skips a copy another worker just made; a failure being retried is queued anew.
            first = (arm, seed) not in seen
            board.study.enqueue_trial(
                {"arm": arm, "seed": seed}, user_attrs={"arm": arm, "seed": seed}, skip_if_exists=first
            )
            queued += 1
    return queued


def settle(study: Study, board: Board, *, retry_failed: float | None = None) -> list[int]:
    """Bring the board up to date before a claim: reap the trials whose worker is gone (they are queued again),
    then, for a grid study, queue every arm × seed not yet covered. Returns the reaped trials' numbers."""
    reaped = reap_interrupted(board)
    if study.is_grid:
        top_up(study, board, retry_failed=retry_failed)
    return reaped


def claim(study: Study, board: Board, *, retry_failed: float | None = None) -> optuna.Trial | None:
    """Claim one queued arm × seed that should run, or None when nothing is queued."""
    while True:
        waiting = board.trials((TrialState.WAITING,))
        if not waiting:
            return None
        for candidate in sorted(waiting, key=lambda t: t.number):
            trial_id = board.trial_id(candidate.number)
            if not board.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                continue  # another worker took it first
            with contextlib.suppress(Exception):
                board.storage.record_heartbeat(trial_id)  # from now on Optuna's stale-trial check covers it
            board.storage.set_trial_user_attr(trial_id, "worker", worker_identity())
            if candidate.user_attrs.get("failure") is not None:  # a retry carries its predecessor's attributes
                board.storage.set_trial_user_attr(trial_id, "failure", None)
            key = key_of(candidate)
            same = [t for t in board.trials() if key_of(t) == key and t.number != candidate.number]
            duplicate = any(is_settled(t, retry_failed=retry_failed) for t in same) or any(
                t.number < candidate.number and t.state in (TrialState.WAITING, TrialState.RUNNING) for t in same
            )
            if duplicate:
                mark_failed(board, candidate.number, "duplicate", f"duplicate of another trial of {key}")
                break  # re-read the queue
            return optuna.Trial(board.study, trial_id)
        else:
            return None


def same_point(board: Board, params: dict[str, Any], seed: int, number: int) -> FrozenTrial | None:
    """An earlier complete, trained (not itself reused) trial with the same sampled parameters and seed."""
    for t in board.trials((TrialState.COMPLETE,)):
        if (
            t.number != number
            and "reused_from" not in t.user_attrs
            and t.user_attrs.get("seed") == seed
            and {k: v for k, v in t.params.items() if k in params} == params
        ):
            return t
    return None


def counts(study: Study, board: Board, *, retry_failed: float | None = None) -> dict[str, int]:
    trials = board.trials()
    if study.is_grid:
        keys = set(wanted(study, board, retry_failed=retry_failed, trials=trials))
        settled = {key_of(t) for t in trials if is_settled(t, retry_failed=retry_failed)} & keys
        running = {key_of(t) for t in trials if t.state == TrialState.RUNNING} & keys
        return {"done": len(settled), "running": len(running), "total": len(keys)}
    settled = [t for t in trials if is_settled(t, retry_failed=retry_failed) and "reused_from" not in t.user_attrs]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return {"done": len(settled), "running": len(running), "total": study.total, "asked": len(trials)}
