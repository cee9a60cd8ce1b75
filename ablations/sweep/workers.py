"""Workers: the loop that claims (grid) or asks for (search) trials and runs them until the study is done, and
the local worker processes of ``--workers N``, each placed on the machine by ``ablations.sweep.placement``: its
GPU (round-robin, so several trials may share one), its share of the CPU threads and of the loader workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ablations.results.sequential import look_lines
from ablations.sweep import slurm
from ablations.sweep.board import Board, claim, counts, mark_failed, outcome, settle
from ablations.sweep.placement import Placement, from_env, placement, start_line, visible_devices, worker_env
from ablations.sweep.progress import Progress, quiet_libraries
from ablations.sweep.study import Study
from ablations.sweep.trial import REUSE_CAP, run_trial


def work(
    study: Study,
    board: Board,
    out_dir: Path,
    *,
    workers: int = 1,
    retry_failed: float | None = None,
    max_trials: int | None = None,
    deadline: float | None = None,
    poll_s: float = 5.0,
    printer: Callable[[str], None] = print,
) -> int:
    """One worker: claim and run trials until the study is done. Returns how many trials this worker ran."""
    quiet_libraries()
    progress = Progress(study, board, workers=workers, printer=printer)
    # Ctrl-C raises KeyboardInterrupt as usual; the flag also stops the sweep after the current trial when a
    # library on the way (W&B, a data loader) swallows the exception and lets the trial finish.
    requested = threading.Event()

    def on_interrupt(signum, frame):
        requested.set()
        signal.default_int_handler(signum, frame)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    try:
        return _loop(study, board, out_dir, progress, requested, retry_failed, max_trials, deadline, poll_s, printer)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _ask(board: Board) -> optuna.Trial:
    # Optuna warns that storage heartbeats are meant for Study.optimize; this loop records them itself (Heartbeat).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        return board.study.ask()


def _next_trial(study: Study, board: Board, retry_failed: float | None, printer) -> optuna.Trial | None:
    if study.is_grid:
        return claim(study, board, retry_failed=retry_failed)
    c = counts(study, board)
    # The budget counts distinct trained points; the cap stops a sampler that only proposes seen ones.
    wanted = c["done"] + c["running"] < study.total and c["asked"] < REUSE_CAP * study.total
    if wanted:
        return _ask(board)  # a queued retry of an interrupted point comes first (Optuna pops WAITING trials)
    if c["done"] + c["running"] < study.total and c["running"] == 0:
        printer(
            f"[{study.name}] stopping at {c['done']} distinct points of the budget {study.total}: the sampler "
            f"proposed only already-trained points in {c['asked']} asks (is the search space that small?)"
        )
    return None


def _loop(study, board, out_dir, progress, requested, retry_failed, max_trials, deadline, poll_s, printer) -> int:
    ran = 0
    placed = from_env()
    looks = Looks(study, board, printer)
    while max_trials is None or ran < max_trials:
        if slurm.received() is not None:  # a SLURM worker told to stop (preempted, cancelled): no new claim
            return ran
        if deadline is not None and time.time() >= deadline:
            printer(f"[{study.name}] --max-minutes reached: no new trial; the same command resumes the study")
            return ran
        board.check_storage()
        reaped = settle(study, board, retry_failed=retry_failed)
        if reaped:
            printer(f"[{study.name}] marked interrupted (their workers are gone) and queued again: trials {reaped}")
        looks.say(retry_failed)
        trial = _next_trial(study, board, retry_failed, printer)
        if trial is None:
            if counts(study, board, retry_failed=retry_failed)["running"] == 0:
                return ran
            time.sleep(poll_s)  # others are running the rest; wait in case one of them dies
            continue
        if placed is not None:  # which share of the machine ran it (a --workers N child)
            board.storage.set_trial_user_attr(board.trial_id(trial.number), "placement", placed)
        try:
            run_trial(study, board, trial, out_dir, progress)
        except (KeyboardInterrupt, SystemExit):
            # Interrupted before run_trial recorded it (e.g. while resolving the config): record it here.
            if board.get(trial.number).state == TrialState.RUNNING:
                mark_failed(board, trial.number, "interrupted", "interrupted by the user (Ctrl-C) or a signal")
            raise
        ran += 1
        if requested.is_set():
            raise KeyboardInterrupt
    return ran


class Looks:
    """A sequential study's looks as they are decided: one line per look (its seeds, each arm's verdict so far and
    the arms that go on), printed once by each worker that sees it."""

    def __init__(self, study: Study, board: Board, printer) -> None:
        self.study, self.board, self.printer = study, board, printer
        self.seen: int | None = None

    def say(self, retry_failed: float | None) -> None:
        result = outcome(self.study, self.board, retry_failed=retry_failed)
        if result is None or result.decided_looks == self.seen:
            return
        first = self.seen is None
        self.seen = result.decided_looks
        for line in look_lines(self.study, result, since=0 if first else result.decided_looks):
            self.printer(line)


def plan(
    workers: int, study: Study, environ: Mapping[str, str] | None = None, *, gpus: int | None = None
) -> tuple[list[Placement], str]:
    """The placement of ``workers`` local workers on this machine (:func:`ablations.sweep.placement.placement`)
    for ``study``'s trials, and the line that says it. Starts no process. ``gpus``: the GPUs torch sees."""
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    environ = os.environ if environ is None else environ
    config = study.resolve(study.arm_labels[0] if study.is_grid else None, study.seeds[0])
    loaders, per_trial = config.data.num_workers, config.train.devices
    if config.train.accelerator == "cpu":
        gpus = 0
    override = None  # --set data.num_workers=K: the user's figure for every trial, so each worker's
    if any(str(s).partition("=")[0].strip() == "data.num_workers" for s in study.sets):
        override = config.data.num_workers
    visible = visible_devices(environ)
    user_threads = environ.get("OMP_NUM_THREADS", "").strip()
    threads = int(user_threads) if user_threads.isdigit() and int(user_threads) > 0 else None
    places = placement(
        workers,
        gpus,
        _cpus(),
        loaders,
        visible=visible,
        threads=threads,
        loader_override=override,
        gpus_per_trial=per_trial,
    )
    line = start_line(
        places,
        loader_workers=loaders,
        loader_override=override is not None,
        user_threads=threads is not None,
        visible=visible if gpus else None,
        available=gpus,
    )
    return places, line


def _cpus() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's or taskset's share)
    return os.cpu_count() or 1


def spawn_workers(
    argv: Sequence[str],
    workers: int,
    *,
    study: Study,
    started: float | None = None,
    name: str | None = None,
    printer: Callable[[str], None] = print,
) -> int:
    """Start ``workers`` worker processes of this same command (``--worker``), each with its placement
    (:func:`plan`: its GPU, CPU threads and loader workers), print the placement in one line, wait for them,
    return the worst exit status."""
    places, line = plan(workers, study)
    printer(f"[{name or study.name}] {line}")
    started = started or time.time()
    processes = []
    for place in places:
        env = worker_env(place, os.environ, started=started)
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
