"""One claimed trial, from its arm × seed (or sampled point) to a recorded end: the resolved config, a run folder
(its predecessor's when it retries an interrupted trial, so that training resumes from the last checkpoint), the
training run, the metrics kept in the storage, and, on failure, the kind of failure."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ablations.config import SEED_MAX
from ablations.results import names
from ablations.results.frames import failure_kind
from ablations.results.jsonable import json_safe
from ablations.sweep import slurm
from ablations.sweep.board import Board, key_of, mark_failed, same_point, worker_identity
from ablations.sweep.progress import Progress
from ablations.sweep.storage import HEARTBEAT_S, SweepError
from ablations.sweep.study import Study
from ablations.training.checkpoints import LAST

REUSE_CAP = 5  # a search asks at most this many times its budget of points, reused ones included


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while it runs, for Optuna's stale-trial check.
    Optuna runs its own heartbeat thread only inside ``Study.optimize`` (and its thread class is private); trials
    claimed from the queue and told by hand need this one, which calls the public ``record_heartbeat``."""

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
    from ablations.training.system import DivergedError

    text = f"{type(error).__name__}: {error}"
    if isinstance(error, DivergedError):
        return "diverged", str(error)
    oom_types = tuple(t for t in (getattr(__import__("torch"), "OutOfMemoryError", None), MemoryError) if t)
    lowered = str(error).lower()
    if isinstance(error, oom_types) or "out of memory" in lowered or "can't allocate memory" in lowered:
        return "out_of_memory", text
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG):
        return "disk_full", str(error)
    if isinstance(error, ConfigError | DatasetError | WeightsError):
        return "bad_input", str(error)
    return "error", text + "\n" + "".join(traceback.format_exception(error))[-3000:]


INTERMEDIATE_ATTR = "intermediate_values"  # a multi-objective trial's per-validation values: {metric: {step: value}}


def report_validations(board: Board, trial: optuna.Trial, study: Study, history: Sequence[Mapping[str, Any]]) -> None:
    """Every validation of the run so far as Optuna's intermediate values, indexed by the global step: the learning
    curves of optuna-dashboard and ``optuna trials``, and what a pruner compares. ``history`` is the run's
    (``SegmentationSystem.history``, ``metrics["history"]``); a run resumed from a checkpoint carries its
    predecessor's validations in it, so a retried trial gets the whole curve. A step already reported is skipped
    (a resumed trial or the report after training would otherwise report it twice).

    Optuna's ``Trial.report`` refuses a multi-objective study (NotImplementedError: an intermediate value is one
    number per step, and no pruner handles several objectives), so there nothing is reported as intermediate
    values; each objective measured at validation keeps its values per step in the trial's user attribute
    ``intermediate_values`` instead ({metric: {step: value}}, steps as strings, as JSON keys must be): the same
    curves, where Optuna's API shows them (``trial.user_attrs``), without pretending a pruner could read them."""
    board.check_storage()  # a deleted storage stops the sweep here, before a write into the void fails deep inside
    metrics = [o.metric for o in study.objectives]
    points = [
        (int(entry["step"]), metric, float(entry[metric]))
        for entry in history
        for metric in metrics
        if isinstance(entry.get("step"), int)
        and isinstance(entry.get(metric), int | float)
        and math.isfinite(entry[metric])  # a metric that was not measured (NaN) is no point of the curve
    ]
    if not points:
        return
    frozen = board.get(trial.number)
    if len(metrics) == 1:
        for step, _, value in points:
            if step not in frozen.intermediate_values:
                trial.report(value, step)
        return
    curves = {m: dict(c) for m, c in (frozen.user_attrs.get(INTERMEDIATE_ATTR) or {}).items()}
    for step, metric, value in points:
        curves.setdefault(metric, {})[str(step)] = value
    board.set_attr(trial.number, INTERMEDIATE_ATTR, curves)


def _validation_callback(board: Board, trial: optuna.Trial, study: Study):
    """The in-process trial's validations reported as they happen (:func:`report_validations`), and, when the study
    has a pruner, its verdict asked after each. A multi-device trial trains in its own process, without it (a pruned
    study refuses those at load); its curve is reported from its history after training."""
    from optuna_integration import PyTorchLightningPruningCallback

    class StepReporting(PyTorchLightningPruningCallback):
        """optuna-integration's callback, reporting at the optimiser step: these runs validate every
        ``train.val_every`` steps inside one long epoch, so the epoch number would not advance; it reports for
        every study, pruned or not."""

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            report_validations(board, self._trial, study, pl_module.history)
            if study.pruner and self._trial.should_prune():
                step = trainer.global_step
                score = board.get(self._trial.number).intermediate_values.get(step)
                shown = f"{score:.4f}" if isinstance(score, float) else "not measured"
                raise optuna.TrialPruned(f"pruned at step {step} with {self.monitor} {shown}")

    return StepReporting(trial, monitor=study.objectives[0].metric)


def trial_stats(config) -> dict[str, Any]:
    """Params, MACs and receptive field at the training crop size (on the meta device: no memory, no time)."""
    from ablations.geometry.describe import describe

    crop = config.data.crop_size or config.data.image_size
    summary = describe(config, (crop, crop))
    field = summary["receptive_field"]["logits"]
    return {
        "params": summary["params"],
        "macs": summary["macs"],
        "receptive_field": field if isinstance(field, int) else None,  # None: data-dependent (deformable convs)
        "output_stride": summary["output_stride"],
    }


def predecessor_dir(board: Board, trial: optuna.Trial) -> Path | None:
    """The run folder of the interrupted trial this one redoes, when it holds a last checkpoint: the folder the
    retry inherited from it, or else the latest failed (not duplicate) trial of the same arm × seed."""
    frozen = board.get(trial.number)
    inherited = frozen.user_attrs.get("run_dir")
    candidates = [inherited] if inherited else []
    key = key_of(frozen)
    if key is not None:
        earlier = [
            t
            for t in board.trials((TrialState.FAIL,))
            if key_of(t) == key and t.number < trial.number and failure_kind(t) != "duplicate"
        ]
        candidates += [t.user_attrs.get("run_dir") for t in sorted(earlier, key=lambda t: -t.number)]
    for folder in candidates:
        if folder and (Path(folder) / "checkpoints" / f"{LAST}.ckpt").is_file():
            return Path(folder)
    return None


def _suggest(study: Study, trial: optuna.Trial) -> tuple[str | None, int, dict[str, Any]]:
    if study.is_grid:
        arm = trial.suggest_categorical("arm", list(study.arm_labels))
        # A range, not the list, so that seeds may be added later; the range every seed may take (config.SEED_MAX).
        # Studies stored before it was 0 … 2**31 − 1 hold that distribution for "seed": Optuna checks a parameter's
        # new distribution against the stored one by kind and log scale only (distributions.
        # check_distribution_compatibility), so they go on (tests/test_bad_input.py checks this).
        seed = trial.suggest_int("seed", 0, SEED_MAX)
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
    return arm, seed, params


def run_trial(study: Study, board: Board, trial: optuna.Trial, out_dir: Path, progress: Progress) -> str:
    """Run one claimed trial to a recorded end; returns its final state name. Re-raises interruptions."""
    from ablations.config import ConfigError
    from ablations.training.train import train

    begun = time.perf_counter()  # the trial's own clock: its overhead is everything but the optimiser steps
    tid = board.trial_id(trial.number)
    storage = board.storage
    arm, seed, params = _suggest(study, trial)
    label = arm if arm is not None else ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())
    if not study.is_grid:
        storage.set_trial_user_attr(tid, "arm", label)
        storage.set_trial_user_attr(tid, "seed", seed)
    storage.set_trial_user_attr(tid, "worker", worker_identity())
    storage.set_trial_user_attr(tid, names.COMMIT, _commit())
    if not study.is_grid:
        earlier = same_point(board, params, seed, trial.number)
        if earlier is not None:
            # A sampler may propose a point it has seen (categorical spaces do this often); training it again
            # would give the same result, so the earlier one is reused and the budget counts distinct points.
            for key in ("config", "stats", "metrics"):
                if key in earlier.user_attrs:
                    storage.set_trial_user_attr(tid, key, earlier.user_attrs[key])
            storage.set_trial_user_attr(tid, "reused_from", earlier.number)
            board.study.tell(trial, values=list(earlier.values))
            progress.line(f"trial {trial.number} {label} seed {seed}: same point as trial {earlier.number}, reused")
            return "REUSED"
    try:
        config = study.resolve(arm, seed, params)
    except ConfigError as error:
        mark_failed(board, trial.number, "error", f"config: {error}")
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED (config: {error})")
        return "FAIL"
    storage.set_trial_user_attr(tid, "config", config.to_dict())
    name = f"{_slug(label)}-s{seed}"
    previous = predecessor_dir(board, trial)
    run_dir = previous or out_dir / "trials" / f"{trial.number:04d}-{name}"
    storage.set_trial_user_attr(tid, "run_dir", str(run_dir))
    resumed = f" (resuming in {run_dir.name})" if previous else ""
    progress.line(f"trial {trial.number}: {study.axis or 'params'} = {label}, seed {seed} …{resumed}")
    callbacks = [_validation_callback(board, trial, study)]  # learning curves for every study; pruning with a pruner
    callbacks += slurm.preemption_callbacks(config)  # a SLURM worker: a signal checkpoints and stops the trial
    started = time.time()
    trained = False
    try:
        stats = _per_arm("stats", config, trial_stats)
        storage.set_trial_user_attr(tid, "stats", stats)
        extra = {
            "study": board.name,
            "study_file": str(study.path) if study.path else None,
            "axis": study.axis,
            "arm": label,
            "seed": seed,
            "trial": trial.number,
            "params": params,
        }
        with Heartbeat(storage, tid, HEARTBEAT_S):
            if config.train.devices > 1:
                metrics = train_in_subprocess(config, run_dir, name=name, group=board.name, wandb_extra=extra)
            else:
                metrics = train(
                    config, run_dir, name=name, group=board.name, wandb_extra=extra, callbacks=callbacks,
                    progress_bar=False,
                )  # fmt: skip
        trained = True
    except SweepError:  # the storage itself is gone (Board.check_storage): nothing can be recorded there
        raise
    except optuna.TrialPruned as pruned:
        storage.set_trial_user_attr(tid, "pruned", str(pruned))
        board.study.tell(trial, state=TrialState.PRUNED)
        progress.line(f"trial {trial.number} {label} seed {seed}: pruned ({pruned})")
        return "PRUNED"
    except slurm.Preempted as stop:  # checkpointed at a step boundary: queued again at once, or past the limit
        kind, count, limit = slurm.record_preemption(board, trial.number, stop)
        progress.line(
            f"trial {trial.number} {label} seed {seed}: {stop} ({count} of at most {limit}); "
            + ("queued again, the next claim resumes it" if kind == "interrupted" else "recorded as failed (preempted)")
        )
        raise
    except (KeyboardInterrupt, SystemExit):
        mark_failed(board, trial.number, "interrupted", "interrupted by the user (Ctrl-C) or a signal")
        progress.line(f"trial {trial.number} {label} seed {seed}: interrupted; the next run of this sweep resumes it")
        raise
    except Exception as error:
        kind, message = classify(error)
        mark_failed(board, trial.number, kind, message)
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED ({kind}: {message.splitlines()[0][:200]})")
        if kind == "bad_input":
            raise SweepError(f"trial {trial.number} ({label}, seed {seed}): {message}") from None
        return "FAIL"
    finally:
        _release_memory(failed=not trained)
    board.check_storage()
    report_validations(board, trial, study, metrics.get("history") or [])  # a multi-device trial's, all at once
    if metrics.get("out_dir") and metrics["out_dir"] != str(run_dir):  # the old folder could not be resumed
        storage.set_trial_user_attr(tid, "run_dir", metrics["out_dir"])
    kept = {k: metrics[k] for k in names.KEPT_METRICS if k in metrics}  # the rest stays in the run folder
    kept.update(_per_arm("inference", config, _inference_figures))
    kept.update({k: v for k, v in metrics.items() if k.startswith("val/IoU/")})
    kept.update(stats)
    kept.update(trial_overhead(time.perf_counter() - begun, metrics.get(names.TRAIN_TIME_S)))
    storage.set_trial_user_attr(tid, "metrics", json_safe(kept))
    # Every validation, whole: a later change of which value is compared never needs the trial trained again.
    storage.set_trial_user_attr(tid, names.VALIDATIONS, json_safe(metrics.get("history") or []))
    values = [metrics.get(o.metric, kept.get(o.metric)) for o in study.objectives]
    if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
        missing = [o.metric for o, v in zip(study.objectives, values, strict=True) if not isinstance(v, int | float)]
        mark_failed(board, trial.number, "error", f"objective metric(s) missing or not finite: {missing or values}")
        progress.line(f"trial {trial.number} {label} seed {seed}: FAILED (objective not available: {values})")
        return "FAIL"
    board.study.tell(trial, values=[float(v) for v in values])
    shown = ", ".join(f"{o.metric} {v:.4f}" for o, v in zip(study.objectives, values, strict=True))
    ips = metrics.get(names.TRAIN_IPS)
    share = kept.get(names.TRIAL_OVERHEAD_SHARE)
    progress.line(
        f"trial {trial.number} {label} seed {seed}: {shown}"
        + (f", {ips:.1f} img/s" if isinstance(ips, float) and math.isfinite(ips) else ", img/s not measured")
        + f", {time.time() - started:.0f} s"
        + (f" (overhead {kept[names.TRIAL_OVERHEAD_S]:.1f} s, {share:.0%} of training)" if share is not None else "")
    )
    return "COMPLETE"


def trial_overhead(trial_s: float, train_s: float | None) -> dict[str, float]:
    """The trial's time outside its optimiser steps (config, statistics, the training run's setup, W&B,
    validation, checkpoints, the inference figures) and its share of the training time."""
    if not isinstance(train_s, int | float) or not train_s > 0:
        return {names.TRIAL_S: trial_s}
    overhead = max(0.0, trial_s - train_s)
    return {names.TRIAL_S: trial_s, names.TRIAL_OVERHEAD_S: overhead, names.TRIAL_OVERHEAD_SHARE: overhead / train_s}


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
        *("--wandb-name", name, "--wandb-group", group, "--wandb-extra", json.dumps(json_safe(wandb_extra))),
    ]
    # In a SLURM worker the ranks are srun's tasks in the worker's allocation (ablations.sweep.slurm.rank_command).
    ranks = slurm.rank_command(config, config_file, run_dir, name=name, group=group, extra=wandb_extra)
    log = run_dir / "train.log"
    with log.open("w") as out:
        if ranks is None:
            status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        else:
            status = slurm.run_forwarding(ranks, out, slurm.rank_environment())
    if ranks is not None and status != 0 and (status == slurm.PREEMPTED_EXIT or slurm.received() is not None):
        raise slurm.Preempted(slurm.received() or signal.SIGTERM)
    if status != 0 or not (run_dir / "metrics.json").is_file():
        tail = log.read_text(errors="replace")[-2000:].strip()
        message = f"training process exited with status {status}: {tail.splitlines()[-1] if tail else ''}"
        if status == 2:  # the CLI's one-line bad-input exit
            from ablations.config import ConfigError

            raise ConfigError(tail.splitlines()[-1].removeprefix("ablations: error: ") if tail else message)
        if "training diverged" in tail:
            from ablations.training.system import DivergedError

            raise DivergedError(tail.split("training diverged", 1)[1].splitlines()[0].strip(": "))
        raise TrialProcessError(message + "\n" + tail)
    return json.loads((run_dir / "metrics.json").read_text())


_ARM_FIGURES: dict[tuple[str, str], dict[str, Any]] = {}


def _per_arm(what: str, config, measure) -> dict[str, Any]:
    """``measure(config)``, once per worker process for each config up to its seed: the architecture statistics
    and the inference figures of an arm do not depend on the training seed, and its other seeds reuse them."""
    data = config.to_dict()
    data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
    key = (what, json.dumps(json_safe(data), sort_keys=True, default=str))
    if key not in _ARM_FIGURES:
        figures = measure(config)
        if names.INFER_ERROR in figures:  # a failed measurement is retried by the next seed
            return figures
        _ARM_FIGURES[key] = figures
    return dict(_ARM_FIGURES[key])


def _inference_figures(config) -> dict[str, Any]:
    """The trial's inference cost as it evaluates (``ablations.bench.inference_figures``); a failure is recorded,
    never fatal: the trained result stands."""
    from ablations.bench import inference_figures

    # A record beside the result, not a comparison (``ablations report --bench`` times arms interleaved): on a CPU,
    # where a forward pass takes tens of milliseconds, a few steps keep it a small part of the trial.
    counts = {} if config.train.uses_gpu() else {"warmup": 2, "iters": 5}
    try:
        return inference_figures(config, **counts)
    except Exception as error:  # a measurement, not the result
        _release_memory(failed=True)
        return {names.INFER_ERROR: f"{type(error).__name__}: {str(error)[:200]}"}
    finally:
        _release_memory()


@functools.cache
def _commit() -> str | None:
    from ablations.ioutil import git_commit

    return git_commit()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text).strip("_")[:80] or "trial"


def _release_memory(*, failed: bool = False) -> None:
    """Between trials. On a GPU the caching allocator keeps a finished trial's blocks until its tensors are
    collected, so a full collection and ``empty_cache`` make room for the next trial (or the next worker on the same
    GPU); a failed trial's traceback holds its frames, and their tensors, in reference cycles, so it is collected
    too. On a CPU after a success the interpreter's own collector is enough: a full collection costs about 0.3 s
    there (measured after a quick trial, half a million objects), a tenth of a quick trial's fixed costs."""
    import gc

    import torch

    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if gpu or failed:
        gc.collect()
    if gpu:
        torch.cuda.empty_cache()
