"""``ablations sweep`` end to end: load and check the study file, open (or create) its Optuna study, run the
trials here or in ``--workers N`` local processes, then print the comparison table. Bad input raises
``StudyError`` or ``SweepError`` before anything is created; the command line turns them into one line, exit 2."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.ioutil import check_name, check_writable_dir, redact
from ablations.sweep.board import open_study, settle
from ablations.sweep.placement import STARTED_ENV
from ablations.sweep.storage import SweepError, check_storage_reachable, default_out_dir, open_storage, storage_url
from ablations.sweep.study import AUTO, Study, StudyError, load_study


@dataclass(frozen=True)
class SweepRequest:
    """What ``ablations sweep`` was asked, one field per option."""

    study_file: str
    profile: str | None = None
    sets: Sequence[str] = ()
    seeds: Sequence[int] | None = None
    budget: int | None = None
    study_name: str | None = None
    out: str | None = None
    storage: str | None = None
    workers: int = 1
    worker: bool = False  # a child of --workers N
    retry_failed: bool = False
    max_trials: int | None = None
    table_only: bool = False
    strict: bool = False
    argv: Sequence[str] = field(default=())  # the command's arguments, to start workers with
    # --slurm N and its options (ablations.sweep.slurm.options' keywords: workers, partition, …), or None
    slurm: Mapping[str, Any] | None = None
    wait: bool = False  # with --slurm: follow the jobs to the end and print the table
    status: bool = False  # report the study's progress from its storage, run nothing
    until_resolved: bool = False  # run the study's group-sequential design (its sequential: block or the defaults)
    design: Mapping[str, Any] = field(default_factory=dict)  # --looks, --max-seeds, --alpha, --boundary, --futility
    max_minutes: float | None = None  # claim no new trial after this many minutes
    import_trials: str | None = None  # a committed trial CSV put into the new storage first
    # what puts it there: ablations.sweep.imported.import_trials, handed in by the command line (sweep.imported reads
    # the board and the study, so this module naming it would close an import cycle)
    importer: Callable[..., tuple[int, Any]] | None = None


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished sweep's results are: the study, its name in the storage, the storage URL, the run folder;
    ``table`` is the comparison printed at the end (None for a worker, which prints none)."""

    study: Study
    name: str
    url: str
    out_dir: Path
    table: str | None
    status: int = 0


def run_sweep(request: SweepRequest, printer: Callable[[str], None] = print) -> SweepOutcome:
    """Run ``request`` to its end (or this worker's ``max_trials``). Raises ``StudyError`` / ``SweepError`` on bad
    input (nothing created yet) and lets ``KeyboardInterrupt`` through (the interrupted trial is recorded)."""
    from ablations import sweep

    if request.study_name is not None:  # it becomes a folder name
        check_name("--study-name", request.study_name, StudyError)
    study = load_study(
        request.study_file, profile=request.profile, sets=request.sets, seeds=request.seeds, budget=request.budget
    )
    if request.slurm is not None and study.requested_profile == AUTO:
        # auto means "what the workers' nodes have", not this login node: a GPU per worker → faithful
        gpus = request.slurm.get("gpus_per_worker")
        gpus = gpus if gpus is not None else (study.slurm or {}).get("gpus_per_worker", 0)
        study = load_study(
            request.study_file, profile="faithful" if gpus else "quick", sets=request.sets, seeds=request.seeds,
            budget=request.budget,
        )  # fmt: skip
    study = _with_design(study, request)
    if not request.until_resolved and study.sequential is not None:  # the study file's sequential: block
        study = dataclasses.replace(study, sequential=_with_floor(study.sequential, study))
    warnings: list[str] = []
    if not request.worker and not request.table_only and not request.status:
        from ablations.sweep.geometry import startup_warnings

        warnings = startup_warnings(study)  # before anything is created, so --strict leaves nothing behind
        if warnings and request.strict:
            more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
            raise StudyError(f"--strict: {warnings[0].removeprefix('geometry: ')}{more}")
    sweep.quiet_libraries()
    name = request.study_name or study.name
    out_dir = Path(request.out) if request.out else default_out_dir(study)
    if request.study_name and not request.out:
        out_dir = out_dir.parent / request.study_name
    check_writable_dir("--out", out_dir, StudyError)  # before anything is created
    inherited = os.environ.get(STARTED_ENV) if request.worker else None
    started = float(inherited) if inherited else time.time()
    retry = started if request.retry_failed else None
    if request.status:
        return _status(study, name, out_dir, request.storage, printer)
    if request.slurm is not None:
        from ablations.sweep import slurm

        opts = slurm.options(study.slurm, **request.slurm)  # bad values first, then the storage, then sbatch
        slurm.check_cluster(request.storage)
    url = storage_url(out_dir, request.storage)
    check_storage_reachable(url)
    if request.import_trials is not None:  # into the new storage first; the design check below then sees them
        if request.importer is None:
            raise SweepError("--import-trials: no importer given (ablations.sweep.imported.import_trials)")
        fixed = open_study(dataclasses.replace(study, sequential=None), open_storage(url), name)
        added, design = request.importer(study, fixed, request.import_trials)
        printer(f"[{name}] imported {added} finished trial(s) from {request.import_trials}"
                + (" with their sequential design" if design else ""))  # fmt: skip
    board = open_study(study, open_storage(url), name)
    if study.sequential is None and board.sequential is not None:
        study = dataclasses.replace(study, sequential=board.sequential)  # the design stored with the study goes on
    if request.slurm is not None:
        return _submit(request, study, board, name, url, out_dir, opts, started, retry, warnings, printer)
    if request.table_only:
        return SweepOutcome(study, name, url, out_dir, sweep.write_outputs(study, board.study, out_dir, name))
    if not request.worker:
        for line in warnings:
            printer(line)
        printer(_start_line(study, name, url, out_dir))
    status = 0
    if request.workers > 1 and not request.worker:
        settle(study, board, retry_failed=retry)  # once, before the workers: each does it again per claim
        status = sweep.spawn_workers(
            worker_argv(request.argv), request.workers, started=started, study=study, name=name, printer=printer
        )
    else:
        if request.worker and os.environ.get("OMP_NUM_THREADS"):  # this worker's share (sweep.placement)
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        deadline = started + 60 * request.max_minutes if request.max_minutes is not None else None
        sweep.work(
            study, board, out_dir, workers=request.workers, retry_failed=retry, max_trials=request.max_trials,
            deadline=deadline, printer=printer,
        )  # fmt: skip
    if request.worker:
        return SweepOutcome(study, name, url, out_dir, None)
    table = sweep.write_outputs(study, board.study, out_dir, name)
    return SweepOutcome(study, name, url, out_dir, table, status)


def _with_design(study: Study, request: SweepRequest) -> Study:
    """The study with the design ``--until-resolved`` and its flags ask for (over the file's ``sequential:``
    block); every bad value is one line naming it, before anything is created."""
    from ablations.sweep.study import design_from

    if request.max_minutes is not None and not 0 < request.max_minutes <= 10**7:
        raise StudyError(f"--max-minutes {request.max_minutes:g}: a number of minutes > 0")
    if not request.until_resolved:
        if request.design:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in request.design)
            raise StudyError(f"{flags}: options of a sequential design; add --until-resolved")
        return study
    spec = dict(study.sequential_spec or {})
    if "looks" in request.design or "max_seeds" in request.design:  # the flags' looks replace the file's
        for key in ("looks", "max_seeds"):
            if key not in request.design:
                spec.pop(key, None)
    spec.update(request.design)
    design = design_from(spec, "--until-resolved", axis=study.axis, seeds=study.seeds)
    return dataclasses.replace(study, sequential=_with_floor(design, study), sequential_spec=spec)


def _with_floor(design, study: Study):
    """The design with the profile's committed noise floor (``reports/data``), which a new design is stored with."""
    from ablations.results import noise
    from ablations.sweep.summary import REPORT_DATA, committed_floor

    if design is None or study.name == noise.STUDY:
        return design
    return dataclasses.replace(design, floor=noise.value(committed_floor(REPORT_DATA, study.profile)))


def _status(study: Study, name: str, out_dir: Path, storage: str | None, printer) -> SweepOutcome:
    """``--status``: the study's progress from its storage alone (it creates, claims and reaps nothing)."""
    from ablations.sweep import slurm
    from ablations.sweep.storage import SweepError

    if storage is None:
        path = out_dir / "optuna.db"
        if not path.is_file():
            raise SweepError(f"--status: no storage at {path}: give the sweep's --storage (or --out)")
        storage = f"sqlite:///{path.resolve()}"
    check_storage_reachable(storage)
    board = slurm.open_existing(open_storage(storage), name)
    for line in slurm.status_lines(study, board):
        printer(line)
    return SweepOutcome(study, name, storage, out_dir, None)


def _submit(request, study, board, name, url, out_dir, opts, started, retry, warnings, printer) -> SweepOutcome:
    """``--slurm N``: queue the study, submit N workers as one job array, print the job ids; with ``--wait`` follow
    them and return the table (``status`` 1 when the workers ended with trials left)."""
    from ablations.sweep import slurm
    from ablations.sweep.summary import write_outputs

    for line in warnings:
        printer(line)
    printer(_start_line(study, name, url, out_dir))
    settle(study, board, retry_failed=retry)  # the grid queued once before the workers (each does it per claim)
    folder = (out_dir / "slurm").resolve()
    shown, secret = slurm.write_secret(url, folder)
    override = any(str(s).partition("=")[0].strip() == "data.num_workers" for s in study.sets)
    spec = slurm.WorkerSpec(
        study_file=str(Path(request.study_file).resolve()), profile=study.profile, sets=tuple(request.sets),
        seeds=tuple(request.seeds) if request.seeds is not None else None, budget=request.budget,
        study_name=request.study_name, out=str(out_dir.resolve()), storage=shown, storage_file=secret,
        started=started, retry_failed=request.retry_failed, max_trials=request.max_trials,
        max_preemptions=opts.max_preemptions, loader_override=override,
    )  # fmt: skip
    jobs = slurm.submit(spec, opts, folder, job_name=f"ablations-{name}")
    ids = [str(j.job_id) for j in jobs]
    job = slurm.array_id(ids)
    listed = ", ".join(ids) if len(ids) <= 8 else f"{ids[0]} … {ids[-1]}"
    printer(f"[{name}] submitted job {job}: {len(ids)} worker(s) ({listed}) · {slurm.describe(opts)}")
    printer(f"[{name}] logs in {folder}/; progress: ablations sweep {request.study_file} --status (with the same "
            f"--storage), squeue -j {job}; stop: scancel {job}")  # fmt: skip
    for record in slurm.job_records(job):  # a request SLURM will never start is said at once
        refusal = slurm.cannot_start(record)
        if refusal:
            printer(f"[{name}] {refusal}")
            break
    if not request.wait:
        return SweepOutcome(study, name, url, out_dir, None)
    try:
        status = slurm.follow(study, board, job, workers=opts.workers, retry_failed=retry, printer=printer)
    except KeyboardInterrupt:
        printer(f"\n[{name}] stopped following; the jobs go on: --status or squeue -j {job}; scancel {job} stops them")
        return SweepOutcome(study, name, url, out_dir, None, 130)
    return SweepOutcome(study, name, url, out_dir, write_outputs(study, board.study, out_dir, name), status)


def _start_line(study: Study, name: str, url: str, out_dir: Path) -> str:
    if study.sequential is not None:
        d = study.sequential
        size = (f"up to {study.total} trials ({len(study.arms)} arms × up to {d.max_seeds} seeds; sequential looks at "
                f"{', '.join(map(str, d.looks))} seeds, α {d.alpha:g}, {d.boundary})")  # fmt: skip
    elif study.is_grid:
        size = f"{study.total} trials ({len(study.arms)} arms × {len(study.seeds)} seeds)"
    else:
        size = f"{study.total} trials sampled by {study.sampler}"
    auto = (
        f" (auto: {'a CUDA GPU' if study.profile == 'faithful' else 'no CUDA GPU'} here)"
        if study.requested_profile == "auto"
        else ""
    )
    return f"study {name}: {size} · profile {study.profile}{auto} · storage {redact(url)} · run folder {out_dir}"


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The parent's arguments for a worker: the same study, one worker per process."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out
