"""``ablations gpu-check``: every GPU figure the project lacks, in one command, within a wall-time budget.

A GPU slot is often short (a rented hour, ten minutes on a shared node), so the command spends its budget in the
order that gives the most answers soonest, and each part is kept for the next run:

1. **The environment**: GPU, driver, CUDA, cuDNN, torch, TF32 state (or the CPU model), at the top of every output.
2. **A trimmed bench-gpu**: ours against torchvision's and smp's DeepLabs (each peer beside the config of ours that
   builds the same network), a training step and inference, plain fp32 against bf16 + channels-last, batch 8, at
   513² — interleaved in one process (``ablations.bench``). Done once per output folder: a later run reuses it.
3. **The faithful multigrid sweep** (``sweeps/multigrid.yaml`` at the ``faithful`` profile, stored as its own study,
   ``multigrid-faithful``, beside the quick one), as much of it as fits. The first complete trial is *the faithful
   trial* whose figures are reported on their own (images/s, MFU, data-wait share, overhead, peak memory, mIoU).
   Before each trial the command compares the time left with the median trial so far and stops when the next one
   would not fit; a trial still running at the deadline is interrupted and marked so: its last checkpoint stays, and
   the same command resumes it (and the rest of the study) on the next run.

Outputs under ``--out``: ``gpu-check.md`` (the page), ``gpu-check.json`` (everything), ``bench.csv``,
``trial.csv`` (the faithful trial), ``trials.csv`` (the sweep's trial frame) and the sweep's own folder
``sweep/`` (its SQLite storage, run folders, ``summary.md``). They are rewritten after every part, so a run killed
from outside still leaves what it measured.

``--device cpu --tiny`` runs the same path at toy sizes in seconds (CI runs it): a 1/8-width network at 32², a few
steps per trial, the torchvision peer alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.results import names

DEFAULT_BUDGET_S = 540.0
STUDY_FILE = Path(__file__).resolve().parent.parent / "sweeps" / "multigrid.yaml"
FAITHFUL_STUDY = "multigrid-faithful"
TINY_STUDY = "multigrid-tiny"
# Time kept back at the end for writing the outputs and the sweep's summary (a few seconds on any machine).
RESERVE_S = {"gpu": 20.0, "tiny": 4.0}
# The bench's share of the budget left when it starts; the rest goes to the sweep.
BENCH_SHARE = 0.25
# The toy sizes of --tiny: a real sweep, bench and trial path at sizes a 2-core CPU runs in seconds.
TINY_OVERRIDES = (
    "backbone.width=0.125",
    "context.channels=16",
    "decoder.channels=16",
    "data.image_size=32",
    "data.crop_size=32",
    "data.train_samples=64",
    "data.val_samples=8",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.max_steps=4",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "train.log_every=1",
)
TRIAL_FIGURES = (
    (names.MIOU, "val/mIoU", ".4f"),
    (names.TRAIN_IPS, "training images/s", ".1f"),
    (names.TRAIN_MFU, "MFU", ".3f"),
    ("data_wait_share", "data-wait share", ".3f"),
    ("train_time_s", "optimiser-step time (s)", ".1f"),
    ("overhead_s", "overhead outside steps (s)", ".1f"),
    ("trial_overhead_s", "trial overhead (s)", ".1f"),
    (names.PEAK_MB, "peak memory (MiB)", ".0f"),
    (names.WALL_S, "training wall time (s)", ".1f"),
    (names.DEVICE, "device", ""),
    (names.PRECISION, "precision", ""),
)


class GpuCheckError(ValueError):
    """Bad input to gpu-check: the message names the option, the value and what is allowed."""


@dataclass
class Budget:
    """Wall time left of ``total`` seconds, ``reserve`` of it kept back for the outputs."""

    total: float
    reserve: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.total - self.reserve - self.elapsed()


def resolve_device(device: str) -> str:
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise GpuCheckError(f"--device {device!r}: allowed auto, cpu, cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GpuCheckError("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)")
    return device


def environment(device: str) -> dict[str, Any]:
    """The machine the figures were measured on: the bench's environment plus the driver and the commit."""
    import lightning
    import torch

    from ablations.bench import environment as bench_environment
    from ablations.hardware import cpu_name
    from ablations.ioutil import git_commit

    env = bench_environment(torch.device(device))
    env["lightning"] = lightning.__version__
    env["cpu"] = cpu_name()
    env["commit"] = git_commit()
    env["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if device == "cuda":
        env["gpus"] = torch.cuda.device_count()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["driver"] = _driver_version()
    return env


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    return None


# ----------------------------------------------------------------------------------------------------------------
# 2. The trimmed bench


def bench_part(device: str, *, tiny: bool, printer: Callable[[str], None]) -> dict[str, Any]:
    """Ours vs the peers (training step and inference, plain vs the fast path), interleaved per peer."""
    import torch

    from ablations import bench

    dev = torch.device(device)
    counts = {"warmup": 1, "iters": 1, "repeats": 1} if tiny else {"warmup": 5, "iters": 10, "repeats": 3}
    size, batch = ((32, 32), 2) if tiny else ((513, 513), 8)
    methods = []
    for mode in ("train", "infer"):
        plain = bench.Method(mode=mode, precision="fp32", **counts)
        methods += [plain, bench.fast_method(plain, dev)]
    result = bench.run(
        [],
        device=dev,
        input_size=size,
        batch_sizes=[batch],
        methods=methods,
        peers=list(bench.PEERS)[:1] if tiny else True,
        printer=lambda line: printer("  " + line),
    )
    result["input_size"] = list(size)
    result["batch_size"] = batch
    result["methods"] = [dataclasses.asdict(m) for m in methods]
    result["table"] = bench.format_report(result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# 3. The sweep, within the budget


def load_check_study(device: str, *, tiny: bool, study_file: Path = STUDY_FILE):
    from ablations.sweep.study import load_study

    sets = [*TINY_OVERRIDES] if tiny else []
    sets.append(f"train.accelerator={'gpu' if device == 'cuda' else 'cpu'}")
    return load_study(study_file, profile="quick" if tiny else "faithful", sets=sets, seeds=[0] if tiny else None)


def _trial_seconds(board) -> list[float]:
    from optuna.trial import TrialState

    seconds = []
    for t in board.trials((TrialState.COMPLETE,)):
        if t.datetime_start and t.datetime_complete and "reused_from" not in t.user_attrs:
            seconds.append((t.datetime_complete - t.datetime_start).total_seconds())
    return seconds


class Watchdog:
    """Interrupts the main thread (as Ctrl-C does) when the budget runs out, so that a trial still running is
    recorded as interrupted with its last checkpoint and resumes on the next run."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._armed = True
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:  # never after the guarded block has ended
            if self._armed:
                self.fired = True
                # A real SIGINT to the main thread (not _thread.interrupt_main): it also ends a blocking wait.
                signal.pthread_kill(self._main, signal.SIGINT)

    def __enter__(self) -> Watchdog:
        # A process started in the background may inherit SIGINT ignored; the deadline must still interrupt.
        self._previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()
        signal.signal(signal.SIGINT, self._previous)


def sweep_part(study, name: str, out_dir: Path, budget: Budget, printer: Callable[[str], None]):
    """Run trials of ``study`` one by one while the next one fits; returns (what was done and why it stopped, the
    board)."""
    from ablations import sweep
    from ablations.sweep.board import counts

    sweep.quiet_libraries()
    url = sweep.storage_url(out_dir, None)
    storage = sweep.open_storage(url)
    board = sweep.open_study(study, storage, name)
    ran, stopped = 0, None
    while True:
        c = counts(study, board)
        if c["done"] >= study.total:
            stopped = "complete"
            break
        seconds = _trial_seconds(board)
        estimate = statistics.median(seconds) if seconds else None
        left = budget.left()
        if left <= 0 or (estimate is not None and estimate > left):
            shown = f"~{estimate:.0f} s" if estimate is not None else "unknown"
            stopped = f"budget: {max(0.0, left):.0f} s left, a trial takes {shown}; run the same command to continue"
            break
        try:
            with Watchdog(left) as watchdog:
                done = sweep.work(study, board, out_dir, max_trials=1, poll_s=1.0, printer=printer)
        except (KeyboardInterrupt, SystemExit):
            if not watchdog.fired:
                raise
            stopped = "budget: a trial was interrupted at the deadline; the same command resumes it"
            break
        if done == 0:
            stopped = "nothing left to claim (another worker holds the rest)"
            break
        ran += 1
    c = counts(study, board)
    summary = sweep.write_outputs(study, board.study, out_dir, name)
    return {
        "study": name,
        "storage": url,
        "total": study.total,
        "done": c["done"],
        "ran_now": ran,
        "stopped": stopped,
        "trial_seconds": _trial_seconds(board),
        "summary": summary,
    }, board


def faithful_trial(board) -> dict[str, Any] | None:
    """The first complete trial of the sweep: its stored figures."""
    from optuna.trial import TrialState

    complete = sorted(board.trials((TrialState.COMPLETE,)), key=lambda t: t.number)
    if not complete:
        return None
    t = complete[0]
    metrics = dict(t.user_attrs.get("metrics", {}))
    return {"trial": t.number, "arm": t.user_attrs.get("arm"), "seed": t.user_attrs.get("seed"), **metrics}


# ----------------------------------------------------------------------------------------------------------------
# Outputs


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec) if spec and isinstance(value, int | float) else str(value)


def render_page(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# gpu-check ({'tiny, ' if result['tiny'] else ''}{result['device']})", ""]
    lines.append("| | |")
    lines.append("|---|---|")
    for key in ("device", "driver", "cuda", "cudnn", "torch", "torchvision", "lightning", "tf32", "cpu", "commit"):
        if key in env:
            value = env[key]
            if isinstance(value, dict):  # tf32: {"cudnn": True, "matmul": False}
                value = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in value.items())
            lines.append(f"| {key} | {'n/a' if value is None else value} |")
    lines.append(f"| budget | {result['budget_s']:.0f} s, used {result['wall_s']:.0f} s |")
    lines += ["", "## Bench: ours vs the peers", ""]
    b = result.get("bench")
    if b is None:
        lines.append(f"not run ({result.get('bench_skipped', 'no time left')})")
    else:
        reused = " (reused from an earlier run in this folder)" if b.get("reused") else ""
        lines.append(f"input {b['input_size'][0]}², batch {b['batch_size']}{reused}")
        lines += ["", b["table"]]
    lines += ["", "## The faithful trial", ""]
    t = result.get("trial")
    if t is None:
        lines.append("no trial complete yet")
    else:
        lines.append(f"trial {t['trial']}: {t.get('arm')} seed {t.get('seed')}")
        lines += ["", "| figure | value |", "|---|---|"]
        lines += [f"| {label} | {_fmt(t.get(key), spec)} |" for key, label, spec in TRIAL_FIGURES]
    s = result.get("sweep", {})
    lines += ["", f"## The sweep: {s.get('study', '—')}", ""]
    if s:
        lines.append(f"{s['done']} of {s['total']} trials done, {s['ran_now']} in this run; stopped: {s['stopped']}")
        if s.get("trial_seconds"):
            lines.append(f"trial time: median {statistics.median(s['trial_seconds']):.0f} s")
        lines += ["", "```", s["summary"], "```"]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, result: dict[str, Any], board=None) -> None:
    import pandas as pd

    from ablations.results.frames import to_csv, trial_frame, write_atomic
    from ablations.results.jsonable import json_safe

    if board is not None:
        write_atomic(out_dir / "trials.csv", to_csv(trial_frame(board.study)))
    b = result.get("bench")
    write_atomic(out_dir / "bench.csv", pd.DataFrame(b["rows"] if b else []).to_csv(index=False))
    t = result.get("trial")
    write_atomic(out_dir / "trial.csv", pd.DataFrame([t] if t else []).to_csv(index=False))
    write_atomic(out_dir / "gpu-check.json", json.dumps(json_safe(result), indent=2, default=str))
    write_atomic(out_dir / "gpu-check.md", render_page(result))


def run_gpu_check(
    out_dir: str | Path,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    device: str = "auto",
    tiny: bool = False,
    bench: bool = True,
    printer: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure what fits in ``budget_s`` seconds (see the module docstring); returns what ``gpu-check.json`` holds."""
    if not (isinstance(budget_s, int | float) and math.isfinite(budget_s) and budget_s > 0):
        raise GpuCheckError(f"--budget-s {budget_s!r}: allowed a number of seconds > 0")
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(float(budget_s), RESERVE_S["tiny" if tiny else "gpu"])
    result: dict[str, Any] = {"device": device, "tiny": tiny, "budget_s": float(budget_s)}
    result["environment"] = environment(device)
    printer(f"gpu-check: {result['environment']['device']}, budget {budget_s:.0f} s, out {out_dir}")

    def save(board=None) -> None:
        result["wall_s"] = budget.elapsed()
        write_outputs(out_dir, result, board)

    previous = _previous_bench(out_dir, result["environment"], tiny)
    if previous is not None:
        result["bench"] = {**previous, "reused": True}
        printer("bench: reused from an earlier run in this folder (same device, torch and commit)")
    elif not bench:
        result["bench_skipped"] = "--no-bench"
    elif budget.left() < (5 if tiny else 120):
        result["bench_skipped"] = f"{budget.left():.0f} s left: too little for the bench"
    else:
        share = BENCH_SHARE * budget.left()
        printer(
            "bench: ours vs the peers, training step and inference, plain vs bf16 + channels-last "
            f"(at most {share:.0f} s)"
        )
        started = time.monotonic()
        try:
            with Watchdog(share) as watchdog:
                result["bench"] = bench_part(device, tiny=tiny, printer=printer)
            result["bench"]["seconds"] = time.monotonic() - started
        except KeyboardInterrupt:
            if not watchdog.fired:
                raise
            result["bench_skipped"] = f"not finished within its share of the budget ({share:.0f} s)"
            printer(f"bench: {result['bench_skipped']}")
    save()

    study = load_check_study(device, tiny=tiny)
    name = TINY_STUDY if tiny else FAITHFUL_STUDY
    printer(f"sweep: {name}, {study.total} trials, {budget.left():.0f} s left")
    result["sweep"], board = sweep_part(study, name, out_dir / "sweep", budget, printer)
    result["trial"] = faithful_trial(board)
    save(board)
    s = result["sweep"]
    printer(f"gpu-check: {s['done']}/{s['total']} trials done, stopped: {s['stopped']}; {result['wall_s']:.0f} s; "
            f"wrote {out_dir / 'gpu-check.md'}")  # fmt: skip
    return result


def _previous_bench(out_dir: Path, env: dict[str, Any], tiny: bool) -> dict[str, Any] | None:
    """The bench of an earlier run in ``out_dir`` when it ran on the same device, torch and commit."""
    path = out_dir / "gpu-check.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = all(old.get("environment", {}).get(k) == env.get(k) for k in ("device", "torch", "commit"))
    if not same or old.get("tiny") != tiny or not isinstance(old.get("bench"), dict):
        return None
    return old["bench"]
