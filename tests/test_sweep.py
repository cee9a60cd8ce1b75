"""Sweeps end to end: real Optuna storages (SQLite, PostgreSQL), real Lightning runs, real offline W&B runs."""

from __future__ import annotations

import ast
import collections
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ablations import sweep
from ablations.cli import main
from ablations.sweep.study import StudyError, load_study
from ablations.training.faults import ENV

TINY_FIXED = {
    "backbone.width": 0.125,
    "context.channels": 16,
    "data.image_size": 32,
    "data.crop_size": 32,
    "data.train_samples": 16,
    "data.val_samples": 4,
    "data.batch_size": 2,
    "data.val_batch_size": 4,
    "train.max_steps": 4,
    "train.val_every": 2,
    "train.log_every": 1,
}


def write_study(folder: Path, name: str = "tiny", *, fixed=None, axis=None, **extra) -> Path:
    study = {
        "name": name,
        "description": "test study",
        "profile": "quick",
        "fixed": {**TINY_FIXED, **(fixed or {})},
        "axis": axis or {"name": "multi_grid", "key": "backbone.multi_grid", "values": [[1, 1, 1], [1, 2, 4]]},
        "seeds": [0, 1],
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def stored(out_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{(out_dir / 'optuna.db').resolve()}")


def complete_keys(study: optuna.Study) -> collections.Counter:
    return collections.Counter(
        (t.user_attrs["arm"], t.user_attrs["seed"]) for t in study.get_trials(states=(TrialState.COMPLETE,))
    )


@pytest.mark.e2e
def test_grid_sweep_runs_every_arm_and_seed_once_and_prints_the_table(workdir, capsys):
    path = write_study(workdir)
    assert main(["sweep", str(path)]) == 0
    printed = capsys.readouterr().out
    out_dir = workdir / "runs" / "sweeps" / "tiny"
    study = stored(out_dir)
    assert complete_keys(study) == {(a, s): 1 for a in ("(1,1,1)", "(1,2,4)") for s in (0, 1)}
    for t in study.get_trials():
        metrics = t.user_attrs["metrics"]
        assert 0.0 <= metrics["val/mIoU"] <= 1.0 and t.values == [metrics["val/mIoU"]]
        for key in ("val/mIoU_small", "val/mIoU_large", "train/images_per_s", "peak_memory_mb", "params", "macs"):
            assert key in metrics, key
        assert metrics["infer/images_per_s"] > 0 and metrics["infer/macs"] == metrics["macs"]
        assert metrics["precision"] == "32-true" and metrics["channels_last"] is False
        assert metrics["receptive_field"] > 0
        # Where the trial's time went: its own clock holds the training run's optimiser steps and the rest.
        assert 0 < metrics["train_time_s"] < metrics["wall_time_s"] < metrics["trial_time_s"]
        assert metrics["trial_overhead_s"] == pytest.approx(metrics["trial_time_s"] - metrics["train_time_s"])
        assert metrics["trial_overhead_share"] == pytest.approx(metrics["trial_overhead_s"] / metrics["train_time_s"])
        assert metrics["overhead_s"] <= metrics["trial_overhead_s"] and 0 <= metrics["data_wait_share"] < 1
        assert t.user_attrs["config"]["backbone"]["multi_grid"] == list(ast.literal_eval(t.user_attrs["arm"]))
        assert t.user_attrs["config"]["train"]["seed"] == t.user_attrs["seed"]
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file()
        # The offline W&B run is on disk; its record (protobuf, values as JSON) carries the group (the study),
        # the name (arm and seed) and the config keys of the trial.
        records = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
        assert len(records) == 1
        data = Path(records[0]).read_bytes()
        name = run_dir.name.split("-", 1)[1]
        assert name.encode() in data and b"tiny" in data
        for key, value in (("arm", t.user_attrs["arm"]), ("seed", t.user_attrs["seed"]), ("trial", t.number)):
            assert key.encode() in data and json.dumps(value).encode() in data
    # Progress lines and the comparison table.
    assert "[tiny 4/4 done" in printed and "trial 3: multi_grid = (1,2,4), seed 1" in printed
    table = printed[printed.index("tiny: multi_grid") :]
    assert "(1,1,1)" in table and "(1,2,4)" in table and " ± " in table
    header = next(line for line in table.splitlines() if line.startswith("arm "))
    assert "overhead" in header and "% of training)" in printed  # the table's column, the progress lines'
    # The architecture statistics and inference figures of an arm are measured once per worker: seed 1 reuses them.
    by_key = {(t.user_attrs["arm"], t.user_attrs["seed"]): t.user_attrs["metrics"] for t in study.get_trials()}
    for arm in ("(1,1,1)", "(1,2,4)"):
        assert by_key[(arm, 1)]["infer/images_per_s"] == by_key[(arm, 0)]["infer/images_per_s"]
    assert (out_dir / "summary.md").is_file() and (out_dir / "summary.json").is_file()
    # Two seeds resolve nothing: the table says so and names no best arm; the study's report is written.
    assert "no arm is resolved best" in table and "inconclusive" in table and "(best)" not in table
    assert (out_dir / "report" / "tiny.md").is_file() and (out_dir / "report" / "data" / "tiny.csv").is_file()

    # Running the same command again runs nothing: completed trials are never re-run.
    assert main(["sweep", str(path)]) == 0
    assert len(stored(out_dir).get_trials()) == 4
    # More seeds extend the same study; only the new arm × seed pairs run.
    assert main(["sweep", str(path), "--seeds", "0,1,2"]) == 0
    assert sum(complete_keys(stored(out_dir)).values()) == 6


@pytest.mark.e2e
def test_a_study_started_with_other_settings_is_refused(workdir, capsys):
    path = write_study(workdir)
    assert main(["sweep", str(path), "--max-trials", "1"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(path), "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "was started with other settings" in err and "--study-name" in err
    # A new name gives a new study in its own folder.
    assert main(["sweep", str(path), "--set", "train.lr=0.5", "--study-name", "tiny-lr", "--max-trials", "1"]) == 0
    assert (
        len(stored(workdir / "runs" / "sweeps" / "tiny-lr", "tiny-lr").get_trials(states=(TrialState.COMPLETE,))) == 1
    )


@pytest.mark.e2e
def test_diverged_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(workdir, capsys, monkeypatch):
    axis = {"name": "lr", "arms": {"ok": {"train.lr": 0.01}, "exploding": {"train.lr": 0.02}}}
    path = write_study(workdir, axis=axis, seeds=[0])
    monkeypatch.setenv(ENV, "nan@1@exploding")  # a NaN weight at step 1: the loss becomes NaN, a real divergence
    assert main(["sweep", str(path)]) == 0
    printed = capsys.readouterr().out
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    by_arm = {t.user_attrs["arm"]: t for t in study.get_trials()}
    assert by_arm["ok"].state == TrialState.COMPLETE
    failed = by_arm["exploding"]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["failure"]["kind"] == "diverged"
    assert "loss is" in failed.user_attrs["failure"]["message"]
    assert "FAILED (diverged" in printed and "1 failed (diverged)" in printed
    # A recorded failure is a result: the next run does not repeat it, --retry-failed does.
    assert main(["sweep", str(path)]) == 0
    assert len(stored(workdir / "runs" / "sweeps" / "tiny").get_trials()) == 2
    assert main(["sweep", str(path), "--retry-failed"]) == 0
    assert len(stored(workdir / "runs" / "sweeps" / "tiny").get_trials()) == 3


def test_out_of_memory_is_classified_from_the_real_allocator_error():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 62, dtype=torch.uint8)  # 4 EiB: the CPU allocator refuses
    kind, message = sweep.classify(caught.value)
    assert kind == "out_of_memory" and "allocate" in message
    assert sweep.classify(ValueError("x"))[0] == "error"


def _virtual_memory_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    raise AssertionError("no VmSize")


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_trial_that_runs_out_of_memory_is_recorded_and_the_sweep_goes_on(workdir):
    # A real sweep process whose address space is capped (RLIMIT_AS) at what this process maps now plus 2 GiB:
    # the small arm trains; the big arm (64 images of 512² per step) cannot allocate its activations, and the
    # allocator's refusal ends that trial as out_of_memory while the sweep runs on to the end.
    import resource

    limit = (_virtual_memory_kb() + 2 * 2**20) * 1024
    path = write_study(
        workdir,
        fixed={"data.num_workers": 0},
        axis={
            "name": "size",
            "arms": {
                "big": {"data.image_size": 512, "data.crop_size": 512, "data.batch_size": 64, "data.train_samples": 64},
                "small": {},
            },
        },
        seeds=[0],
    )
    result = subprocess.run(
        sweep_command(path),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    by_arm = {t.user_attrs["arm"]: t for t in study.get_trials()}
    assert by_arm["small"].state == TrialState.COMPLETE
    big = by_arm["big"]
    failure = big.user_attrs["failure"]
    assert big.state == TrialState.FAIL and failure["kind"] == "out_of_memory", failure
    assert "allocate" in failure["message"].lower() or "memoryerror" in failure["message"].lower()
    assert "FAILED (out_of_memory" in result.stdout
    assert "1 failed (out_of_memory)" in result.stdout  # the table says so


@pytest.mark.e2e
def test_missing_dataset_stops_the_sweep_with_the_message(workdir, capsys):
    path = write_study(workdir, fixed={"data.name": "voc", "data.root": str(workdir / "no-voc")})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no-voc" in err and "Traceback" not in err
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["failure"]["kind"] for t in failed] == ["bad_input"]
    assert not study.get_trials(states=(TrialState.COMPLETE, TrialState.RUNNING))


@pytest.mark.e2e
def test_pruning_reports_at_optimiser_steps_and_prunes(workdir, capsys):
    fixed = {"train.max_steps": 6, "train.val_every": 2}
    # Six steps teach nothing, so every run predicts background and scores the background share of its validation
    # set; the second arm's validation set (another data seed) has less background, so it scores lower.
    axis = {"name": "data", "arms": {"high": {"data.seed": 1}, "low": {"data.seed": 0}}}
    pruner = {"kind": "percentile", "percentile": 99.0, "startup_trials": 1, "warmup_steps": 0}
    path = write_study(workdir, fixed=fixed, axis=axis, seeds=[0], pruner=pruner)
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    first = study.trials[0]
    assert first.state == TrialState.COMPLETE and sorted(first.intermediate_values) == [2, 4, 6]
    second = study.trials[1]
    assert second.state == TrialState.PRUNED and sorted(second.intermediate_values) == [2]
    assert "pruned" in capsys.readouterr().out


@pytest.mark.e2e
def test_search_study_samples_its_budget(workdir):
    path = workdir / "search.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "search",
                "profile": "quick",
                "fixed": TINY_FIXED,
                "search_space": {
                    "backbone.output_stride": {"choices": [8, 16]},
                    "mg": {
                        "choices": {"a": {"backbone.multi_grid": [1, 1, 1]}, "b": {"backbone.multi_grid": [1, 2, 4]}}
                    },
                    "train.lr": {"low": 0.001, "high": 0.1, "log": True},
                },
                "sampler": "nsga2",
                "budget": 3,
                "objectives": [
                    {"metric": "val/mIoU", "direction": "maximize"},
                    {"metric": "params", "direction": "minimize"},
                ],
            }
        )
    )
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "search", "search")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for t in trials:
        config = t.user_attrs["config"]
        assert config["backbone"]["output_stride"] == t.params["backbone.output_stride"]
        assert config["train"]["lr"] == pytest.approx(t.params["train.lr"])
        assert config["backbone"]["multi_grid"] == ([1, 1, 1] if t.params["mg"] == "a" else [1, 2, 4])
        assert len(t.values) == 2


@pytest.mark.e2e
def test_a_search_reuses_points_it_has_trained_and_stops_when_it_sees_nothing_new(workdir, capsys):
    path = workdir / "small.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "small",
                "profile": "quick",
                "fixed": TINY_FIXED,
                "search_space": {"backbone.output_stride": {"choices": [16, 32]}},  # two points only
                "sampler": "random",
                "budget": 3,
            }
        )
    )
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    study = stored(workdir / "runs" / "sweeps" / "small", "small")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    trained = [t for t in trials if "reused_from" not in t.user_attrs]
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    # Random sampling finds both points in 15 asks (it misses one with probability 2^-14).
    assert len(trained) == 2 and len(reused) == sweep.REUSE_CAP * 3 - 2
    by_number = {t.number: t for t in trained}
    assert all(t.values == by_number[t.user_attrs["reused_from"]].values for t in reused)
    assert all(t.params == by_number[t.user_attrs["reused_from"]].params for t in reused)
    assert len(list((workdir / "runs" / "sweeps" / "small" / "trials").iterdir())) == 2  # two training runs
    assert "stopping at 2 distinct points of the budget 3" in out
    assert sweep.comparison(load_study(path), study)["points"]["seeds"].tolist() == [1, 1]  # reused: not rows


# --------------------------------------------------------------------------------------------------------------
# Processes: kill -9, Ctrl-C, local workers, PostgreSQL


def sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ablations.cli", "sweep", str(path), *extra]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def states(out_dir: Path) -> collections.Counter:
    db = out_dir / "optuna.db"
    if not db.exists():
        return collections.Counter()
    try:
        return collections.Counter(t.state for t in stored(out_dir).get_trials())
    except Exception:
        return collections.Counter()


def _race_for_the_claim(url: str, trial_id: int, start: float, results) -> None:
    storage = sweep.open_storage(url)
    while time.time() < start:  # every claimer reads the trial's state at the same moment
        pass
    results.put(storage.set_trial_state_values(trial_id, TrialState.RUNNING))


def test_workers_racing_for_one_queued_trial_on_sqlite_claim_it_exactly_once(workdir):
    """Optuna's claim reads WAITING and writes RUNNING; on SQLite without BEGIN IMMEDIATE all 4 racing processes
    won the same trial in 9 of 10 rounds on a 2-core AMD EPYC (open_storage's _immediate_transactions)."""
    import multiprocessing

    url = f"sqlite:///{workdir / 'race.db'}"
    study = optuna.create_study(storage=sweep.open_storage(url), study_name="race")
    context = multiprocessing.get_context("fork")  # the claimers start in milliseconds, torch already imported
    winners = []
    for _ in range(6):
        study.enqueue_trial({"x": 1})
        trial_id = study.get_trials()[-1]._trial_id
        results, start = context.Queue(), time.time() + 1.0
        racers = [context.Process(target=_race_for_the_claim, args=(url, trial_id, start, results)) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(timeout=120)
        assert [racer.exitcode for racer in racers] == [0] * 4
        winners.append(sum(results.get(timeout=5) for _ in racers))
    assert winners == [1] * 6


def test_a_claim_whose_worker_died_before_naming_itself_is_reaped_after_the_grace(workdir):
    study = load_study(write_study(workdir))
    storage = sweep.open_storage(f"sqlite:///{workdir / 'orphan.db'}")
    board = sweep.open_study(study, storage, "tiny")
    assert sweep.top_up(study, board) == 4
    # A worker takes a queued trial (the atomic WAITING -> RUNNING step) and dies before writing "worker".
    orphan = board.trials((TrialState.WAITING,))[0]
    assert storage.set_trial_state_values(board.trial_id(orphan.number), TrialState.RUNNING)
    assert sweep.reap_interrupted(board) == []  # inside the grace period it may still be starting
    assert sweep.reap_interrupted(board, grace=0) == [orphan.number]
    failed = board.get(orphan.number)
    assert failed.state == TrialState.FAIL and failed.user_attrs["failure"]["kind"] == "interrupted"
    # Optuna's retry callback queued its arm x seed again, so topping up queues nothing more.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = [
            t
            for t in board.trials((TrialState.WAITING,))
            if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == orphan.number
        ]
    assert [(t.user_attrs["arm"], t.user_attrs["seed"]) for t in retry] == [
        (orphan.user_attrs["arm"], orphan.user_attrs["seed"])
    ]
    assert sweep.top_up(study, board) == 0
    # A claim through the sweep names its worker at once, so it is never taken for an orphan.
    claimed = sweep.claim(study, board)
    assert claimed is not None
    assert board.get(claimed.number).user_attrs["worker"]["pid"] == os.getpid()
    assert board.get(claimed.number).user_attrs.get("failure") is None
    while claimed.number != retry[0].number:  # the retry, claimed in its turn, does not inherit the failure
        claimed = sweep.claim(study, board)
    assert board.get(claimed.number).user_attrs["failure"] is None
    assert board.get(claimed.number).user_attrs["arm"] == orphan.user_attrs["arm"]
    assert sweep.reap_interrupted(board, grace=0) == []


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_resume_after_an_interrupted_sweep(workdir, how):
    # Slow enough trials that the sweep can be interrupted in the middle of one.
    path = write_study(workdir, fixed={"train.max_steps": 40, "train.val_every": 20})
    out_dir = workdir / "runs" / "sweeps" / "tiny"
    process = subprocess.Popen(sweep_command(path), start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: states(out_dir)[TrialState.COMPLETE] >= 1 and states(out_dir)[TrialState.RUNNING] == 1,
            240,
            "one done, one running",
        )
        before = {t.number for t in stored(out_dir).get_trials(states=(TrialState.COMPLETE,))}
        if how == "kill -9":
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        else:
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=60) == 130
            # Ctrl-C records the interrupted trial at once.
            assert states(out_dir)[TrialState.RUNNING] == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert main(["sweep", str(path)]) == 0
    study = stored(out_dir)
    assert complete_keys(study) == {(a, s): 1 for a in ("(1,1,1)", "(1,2,4)") for s in (0, 1)}
    assert before <= {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}  # never re-run
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert all(t.user_attrs["failure"]["kind"] == "interrupted" for t in interrupted)
    # kill -9 always leaves the running trial behind; Ctrl-C may land where the trial still finishes cleanly.
    assert len(interrupted) == 1 if how == "kill -9" else len(interrupted) <= 1


@pytest.mark.e2e
def test_local_workers_share_one_sqlite_study(workdir):
    path = write_study(workdir, seeds=[0, 1, 2])
    result = subprocess.run(sweep_command(path, "--workers", "2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    assert complete_keys(study) == {(a, s): 1 for a in ("(1,1,1)", "(1,2,4)") for s in (0, 1, 2)}
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(pids) == 2
    assert "tiny: multi_grid" in result.stdout  # the parent prints the table once the workers are done


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture
def postgres():
    """A real PostgreSQL server on a free local port, in a temporary cluster, stopped afterwards."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
        pytest.skip("PostgreSQL is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="ablations-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's postgres user
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.e2e
def test_two_workers_on_postgresql_run_every_arm_and_seed_exactly_once(workdir, postgres):
    path = write_study(workdir, seeds=[0, 1, 2])
    # Two independent sweep commands on one storage, as on two machines, started together.
    processes = [
        subprocess.Popen(
            sweep_command(path, "--storage", postgres), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="tiny", storage=postgres)
    keys = complete_keys(study)
    assert keys == {(a, s): 1 for a in ("(1,1,1)", "(1,2,4)") for s in (0, 1, 2)}
    # Any other trial is a queued duplicate that was recognised and ran nothing.
    for t in study.get_trials():
        assert t.state == TrialState.COMPLETE or t.user_attrs["failure"]["kind"] == "duplicate"
        if t.state != TrialState.COMPLETE:
            assert "metrics" not in t.user_attrs
    workers = collections.Counter(
        t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))
    )
    assert len(workers) == 2, workers  # both machines worked
    # The study can be read back for the table from any machine.
    assert main(["sweep", str(path), "--storage", postgres, "--table-only"]) == 0


@pytest.mark.postgres
@pytest.mark.e2e
def test_two_machines_run_one_sequential_design_on_postgresql_each_pair_once(workdir, postgres):
    from ablations.results.sequential import Design, decide

    path = write_study(workdir, axis={"name": "lr", "key": "train.lr", "values": [0.01, 0.02, 0.04]}, seeds=[0, 1])
    command = sweep_command(path, "--storage", postgres, "--until-resolved", "--looks", "2,3", "--futility", "0")
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in processes:
        _out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="tiny", storage=postgres)
    values: dict[str, dict[int, float]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        values.setdefault(t.user_attrs["arm"], {})[t.user_attrs["seed"]] = t.values[0]
    design = Design.from_dict(study.user_attrs["sequential"])
    result = decide(values, "0.01", ["0.02", "0.04"], design, min_effect=0.01)
    keys = complete_keys(study)
    assert result.finished and set(keys) == set(result.pairs) and set(keys.values()) == {1}


def test_unreachable_storage_is_one_clear_line(workdir, capsys):
    path = write_study(workdir)
    assert main(["sweep", str(path), "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "secret" not in err and "Traceback" not in err


@pytest.mark.e2e
def test_a_two_device_trial_trains_in_its_own_process_and_records_every_rank(workdir):
    """train.devices=2 (gloo on a CPU): the trial runs as `ablations train`, so the DDP launcher's second rank is
    a training process, not a second sweep that would claim trials; one metrics file, one W&B run."""
    path = write_study(workdir, "ddp", fixed={"train.devices": 2, "train.accelerator": "cpu"}, seeds=[0])
    assert main(["sweep", str(path), "--max-trials", "1"]) == 0
    study = stored(workdir / "runs" / "sweeps" / "ddp", "ddp")
    states = collections.Counter(t.state for t in study.get_trials())
    assert states == {TrialState.COMPLETE: 1, TrialState.WAITING: 1}  # no rank claimed the other arm
    [trial] = study.get_trials(states=(TrialState.COMPLETE,))
    run_dir = Path(trial.user_attrs["run_dir"])
    assert [p.name for p in run_dir.glob("*.json")] == ["metrics.json"]
    assert len(glob.glob(str(run_dir / "wandb" / "offline-run-*"))) == 1
    record = Path(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))[0]).read_bytes()
    assert run_dir.name.split("-", 1)[1].encode() in record and b"ddp" in record  # name and group
    metrics = trial.user_attrs["metrics"]
    # batch 2 on each of 2 ranks per step: images/s × median step time ≈ 4 (one rank alone would give 2)
    assert metrics["train/images_per_s"] * metrics["train/step_time_s"] == pytest.approx(4, rel=0.35)
    assert 0 <= metrics["val/mIoU"] <= 1


def test_a_pruned_study_with_multi_device_trials_is_refused_at_load(workdir):
    path = write_study(workdir, "ddp", fixed={"train.devices": 2}, pruner={"kind": "median"})
    with pytest.raises(StudyError, match="a multi-device trial trains in its own process"):
        load_study(path)


@pytest.mark.e2e
def test_until_resolved_adds_seeds_to_unresolved_arms_only_resumes_and_keeps_its_design(workdir):
    from ablations.results.sequential import Design, decide

    axis = {"name": "lr", "key": "train.lr", "values": [0.01, 0.02, 0.04]}
    path = write_study(workdir, axis=axis, seeds=[0, 1])
    design_args = ("--until-resolved", "--looks", "2,3", "--futility", "0")
    result = subprocess.run(sweep_command(path, *design_args, "--workers", "2"), capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    stored_design = study.user_attrs["sequential"]
    assert stored_design["looks"] == [2, 3] and stored_design["seeds"] == [0, 1, 2]
    values: dict[str, dict[int, float]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        values.setdefault(t.user_attrs["arm"], {})[t.user_attrs["seed"]] = t.values[0]
    again = decide(values, "0.01", ["0.02", "0.04"], Design.from_dict(stored_design), min_effect=0.01)
    done = complete_keys(study)
    assert set(done) == set(again.pairs) and all(n == 1 for n in done.values())  # exactly the design's pairs, once
    assert again.finished
    third = {arm for arm, seed in done if seed == 2}
    # the third seed ran exactly for the arms look 1 left unresolved and, if there were any, for the baseline
    first = {a: {s: v for s, v in by_seed.items() if s < 2} for a, by_seed in values.items()}
    after_one = decide(first, "0.01", ["0.02", "0.04"], Design.from_dict(stored_design), min_effect=0.01)
    running = {a for a, s in after_one.states.items() if s.verdict == "running"}
    assert after_one.decided_looks == 1 and third == (running | {"0.01"} if running else set())
    printed = result.stdout
    assert "look 1 of 2 (2 seeds) decided" in printed and "Group-sequential design: looks at 2, 3" in printed
    # The same command again runs nothing; another design on the same storage is refused.
    rerun = subprocess.run(sweep_command(path, *design_args), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "seed 0 …" not in rerun.stdout and "seed 2 …" not in rerun.stdout
    assert complete_keys(stored(workdir / "runs" / "sweeps" / "tiny")) == done
    # Without the design options (a SLURM worker's command, or `make sweep-…` again) the stored design goes on.
    plain = subprocess.run(sweep_command(path, "--table-only"), capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0 and "Group-sequential design: looks at 2, 3" in plain.stdout
    other = subprocess.run(sweep_command(path, "--until-resolved", "--looks", "2,4"), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert other.returncode == 2 and "cannot change once its looks have begun" in other.stderr


def test_committed_trials_imported_into_a_new_storage_give_the_same_verdicts_and_design(workdir, capsys):
    # A fresh machine has no storage: the committed CSV (with its design and validations) is where a study goes on from.
    root = Path(__file__).resolve().parents[1]
    data = workdir / "data"
    data.mkdir()
    for suffix in (".csv", ".meta.json", ".validations.csv"):
        shutil.copy(root / "reports" / "data" / f"multigrid{suffix}", data / f"multigrid{suffix}")
    study_file = root / "sweeps" / "multigrid.yaml"
    argv = ["sweep", str(study_file), "--out", str(workdir / "run"), "--import-trials", str(data / "multigrid.csv")]
    assert main([*argv, "--table-only"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((data / "multigrid.meta.json").read_text())
    imported = stored(workdir / "run", "multigrid")
    assert imported.user_attrs["sequential"] == meta["sequential"]
    complete = imported.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == len(pd.read_csv(data / "multigrid.csv")) and all(
        t.user_attrs["validations"] for t in complete
    )
    committed = pd.read_csv(root / "reports" / "tables" / "multigrid.comparisons.csv", dtype={"arm": str})
    for row in committed.to_dict("records"):
        if row["verdict"] != "baseline":
            assert f"{row['verdict_label']}" in printed
    # A storage that already holds trials is refused, as is a CSV with arms the study does not have.
    assert main(argv) == 2 and "already holds" in capsys.readouterr().err
    bad = data / "other.csv"
    bad.write_text((data / "multigrid.csv").read_text().replace('"(2,2,2)"', '"(3,3,3)"'))
    assert main(["sweep", str(study_file), "--out", str(workdir / "run2"), "--import-trials", str(bad)]) == 2
    assert "arm(s) ['(3,3,3)'] are not in the study" in capsys.readouterr().err


def test_an_import_keeps_whole_looks_only(workdir, capsys):
    # The last look left half-run (one of its trials missing): it is run again whole, so its pairs share a machine.
    root = Path(__file__).resolve().parents[1]
    data = workdir / "data"
    data.mkdir()
    for suffix in (".meta.json", ".validations.csv"):
        shutil.copy(root / "reports" / "data" / f"multigrid{suffix}", data / f"multigrid{suffix}")
    df = pd.read_csv(root / "reports" / "data" / "multigrid.csv", dtype={"arm": str})
    df = df[~((df["arm"] == "(1,2,1)") & (df["seed"] == 11))]
    df.to_csv(data / "multigrid.csv", index=False)
    argv = ["sweep", str(root / "sweeps" / "multigrid.yaml"), "--out", str(workdir / "run"), "--table-only"]
    assert main([*argv, "--import-trials", str(data / "multigrid.csv")]) == 0
    imported = stored(workdir / "run", "multigrid").get_trials(states=(TrialState.COMPLETE,))
    assert sorted({t.user_attrs["seed"] for t in imported}) == [0, 1, 2, 3, 4, 5]
    assert "running: look 3 of 3 (12 seeds) next" in capsys.readouterr().out
