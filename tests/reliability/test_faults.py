"""Faults injected into real runs: processes killed (SIGKILL, SIGINT) at a given step, NaN and out-of-memory,
concurrent workers on SQLite and PostgreSQL, a study file edited between runs, a storage deleted mid-sweep, a
disk full while a checkpoint is written, corrupt and foreign checkpoints, and secrets that must never be
written anywhere. Faults inside a run come from ``ablations.training.faults`` (``ABLATIONS_INJECT_FAULT``)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from ablations.cli import main
from ablations.training.faults import ENV
from tests.test_sweep import complete_keys, stored, wait_for, write_study

# 8 steps, validated at 4 and 8, a last checkpoint every 2 steps: a run killed at step 7 resumes from step 6.
STEPS = {"train.max_steps": 8, "train.val_every": 4, "train.checkpoint_every": 2, "data.num_workers": 0}
TRAIN = [
    *("--set", "backbone.width=0.125", "--set", "context.channels=16", "--set", "decoder.channels=16"),
    *("--set", "data.image_size=32", "--set", "data.crop_size=32", "--set", "data.train_samples=16"),
    *("--set", "data.val_samples=4", "--set", "data.batch_size=2", "--set", "data.num_workers=0"),
    *("--set", "train.max_steps=8", "--set", "train.val_every=4", "--set", "train.checkpoint_every=2"),
    *("--set", "train.accelerator=cpu", "--set", "data.name=synthetic"),
]
ARMS = ("(1,1,1)", "(1,2,4)")


def child_env(**extra: str) -> dict[str, str]:
    # A child must not share this process's W&B service (a killed child would leave its run open in it).
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ablations.cli", *args]


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def val_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def train_paper(out: Path, *, env: dict[str, str] | None = None, extra=(), preexec=None) -> subprocess.CompletedProcess:
    command = cli("train", "--profile", "paper", *TRAIN, *extra, "--out", str(out))
    return subprocess.run(command, env=env or child_env(), capture_output=True, text=True, preexec_fn=preexec)


# --------------------------------------------------------------------------------------------------------------
# A run killed mid-way resumes from its last checkpoint and ends where an uninterrupted run ends


def test_a_killed_paper_style_run_resumes_to_the_uninterrupted_metrics(workdir, row):
    assert train_paper(workdir / "whole").returncode == 0
    killed = train_paper(workdir / "run", env=child_env(**{ENV: "sigkill@7"}))
    assert killed.returncode == -signal.SIGKILL
    saved = checkpoint_step(workdir / "run" / "checkpoints" / "last.ckpt")
    assert saved == 6
    assert not (workdir / "run" / "metrics.json").exists()
    run_id = (workdir / "run" / "wandb-run-id").read_text()
    again = train_paper(workdir / "run")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {workdir / 'run' / 'checkpoints' / 'last.ckpt'} (step 6)" in again.stdout
    whole, resumed = metrics_of(workdir / "whole"), metrics_of(workdir / "run")
    assert resumed["resumed_from_step"] == 6 and [h["step"] for h in resumed["history"]] == [4, 8]
    assert val_metrics(resumed) == val_metrics(whole)
    assert (workdir / "run" / "wandb-run-id").read_text() == run_id  # the same W&B run continues
    row(
        fault="SIGKILL at step 7 of 8 (`ablations train --profile paper`, tiny widths, last checkpoint every 2 steps)",
        happened=f"re-run of the same command resumed from step {saved} (the last save) and finished",
        kept=f"every val/ metric equal to an uninterrupted run's (val/mIoU {resumed['val/mIoU']:.6f} both); "
        "same W&B run id",
    )


def test_a_killed_two_process_ddp_run_resumes_to_the_uninterrupted_metrics(workdir, row):
    ddp = ("--set", "train.devices=2", "--set", "data.train_samples=32", "--set", "data.val_samples=8")
    assert train_paper(workdir / "whole", extra=ddp).returncode == 0
    killed = train_paper(workdir / "run", env=child_env(**{ENV: "sigkill@5"}), extra=ddp)  # every rank dies
    assert killed.returncode != 0 and not (workdir / "run" / "metrics.json").exists()
    assert checkpoint_step(workdir / "run" / "checkpoints" / "last.ckpt") == 4
    again = train_paper(workdir / "run", extra=ddp)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("resuming from") == 1  # rank 0 decides; rank 1 takes its decision
    assert sorted(p.name for p in workdir.iterdir()) == ["run", "whole"]  # no rank went to a folder of its own
    whole, resumed = metrics_of(workdir / "whole"), metrics_of(workdir / "run")
    assert resumed["resumed_from_step"] == 4 and val_metrics(resumed) == val_metrics(whole)
    row(
        fault="SIGKILL at step 5 of 8 in both ranks of a 2-process DDP run (gloo on the CPU, paper profile, tiny)",
        happened="re-run resumed both ranks from step 4 (rank 0's decision passed to rank 1) and finished",
        kept=f"every val/ metric equal to an uninterrupted 2-process run's (val/mIoU {resumed['val/mIoU']:.6f} both)",
    )


@pytest.mark.parametrize("signal_name", ["sigkill", "sigint"])
def test_a_sweep_trial_killed_mid_way_resumes_in_its_folder(workdir, row, signal_name):
    path = write_study(workdir, fixed=STEPS, seeds=[0])
    out_dir = workdir / "runs" / "sweeps" / "tiny"
    process = subprocess.run(
        cli("sweep", str(path)), env=child_env(**{ENV: f"{signal_name}@7@1_1_1-s0"}), capture_output=True, text=True
    )
    assert process.returncode == (-signal.SIGKILL if signal_name == "sigkill" else 130), process.stderr[-2000:]
    first = stored(out_dir).get_trials()[0]
    folder = Path(first.user_attrs["run_dir"])
    assert checkpoint_step(folder / "checkpoints" / "last.ckpt") == 6
    # Every run in its own process, as a user runs them (the test process trains with other thread counts).
    again = subprocess.run(cli("sweep", str(path)), env=child_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    study = stored(out_dir)
    assert complete_keys(study) == {(a, 0): 1 for a in ARMS}
    done = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["arm"] == "(1,1,1)")
    assert Path(done.user_attrs["run_dir"]) == folder  # the retry trained in its predecessor's folder
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [t.user_attrs["failure"]["kind"] for t in failed] == ["interrupted"]
    resumed = metrics_of(folder)
    assert resumed["resumed_from_step"] == 6
    # The same trial, uninterrupted, in another study folder.
    whole_run = subprocess.run(
        cli("sweep", str(path), "--out", "whole"), env=child_env(), capture_output=True, text=True
    )
    assert whole_run.returncode == 0, whole_run.stderr[-2000:]
    whole = next(t for t in stored(workdir / "whole").get_trials() if t.user_attrs["arm"] == "(1,1,1)")
    assert done.values == whole.values
    assert done.user_attrs["metrics"]["val/mIoU"] == whole.user_attrs["metrics"]["val/mIoU"]
    uninterrupted = metrics_of(Path(whole.user_attrs["run_dir"]))
    assert val_metrics(resumed) == val_metrics(uninterrupted)  # every class's IoU, not only the mean
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in uninterrupted["history"]] == [4, 8]
    how = "SIGKILL (kill -9)" if signal_name == "sigkill" else "SIGINT (Ctrl-C)"
    row(
        fault=f"{how} at step 7 of 8 of a sweep trial",
        happened=(
            "the worker died; the next sweep reaped the trial as interrupted, Optuna's retry callback queued it, and "
            "the retry resumed from step 6 in the same run folder"
            if signal_name == "sigkill"
            else "the sweep exited 130 and recorded the trial as interrupted at once; the next sweep resumed it "
            "from step 6 in the same run folder"
        ),
        kept=f"the other arm's result; every val/ metric of the resumed trial equals an uninterrupted sweep's "
        f"(val/mIoU {done.values[0]:.6f}); 1 failed record (interrupted), each arm × seed complete once",
    )


# --------------------------------------------------------------------------------------------------------------
# Concurrency


def test_four_local_workers_on_one_sqlite_study(workdir, row):
    path = write_study(workdir, seeds=[0, 1, 2, 3], fixed={"train.max_steps": 2, "train.val_every": 2})
    result = subprocess.run(cli("sweep", str(path), "--workers", "4"), env=child_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    keys = complete_keys(study)
    assert keys == {(a, s): 1 for a in ARMS for s in range(4)}
    assert "database is locked" not in result.stdout + result.stderr
    started = re.findall(r"\] trial (\d+): ", result.stdout)  # each worker's start line of each trial it claimed
    assert len(started) == len(set(started)) >= 8, result.stdout[-3000:]
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    duplicates = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    row(
        fault="4 local worker processes on one SQLite study (2 arms × 4 seeds)",
        happened=f"{len(pids)} workers ran trials; each trial started by one worker (no two won the same claim); "
        f"no 'database is locked'; {len(duplicates)} duplicate claims recorded as such",
        kept="every arm × seed complete exactly once (8 of 8)",
    )


def test_two_processes_on_postgresql(workdir, postgres, row):
    path = write_study(workdir, seeds=[0, 1, 2], fixed={"train.max_steps": 2, "train.val_every": 2})
    command = cli("sweep", str(path), "--storage", postgres)
    processes = [
        subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in "ab"
    ]
    outputs = [p.communicate(timeout=900)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    study = optuna.load_study(study_name="tiny", storage=postgres)
    assert complete_keys(study) == {(a, s): 1 for a in ARMS for s in range(3)}
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    row(
        fault="2 sweep processes started together on one PostgreSQL study (2 arms × 3 seeds)",
        happened=f"both exited 0; {len(pids)} processes ran trials",
        kept="every arm × seed complete exactly once (6 of 6)",
    )


# --------------------------------------------------------------------------------------------------------------
# Failures inside a trial


def test_nan_and_out_of_memory_are_recorded_and_the_sweep_goes_on(workdir, monkeypatch, capsys, row):
    axis = {"name": "lr", "key": "train.lr", "values": [0.01, 0.02, 0.03]}
    path = write_study(workdir, axis=axis, seeds=[0])
    monkeypatch.setenv(ENV, "nan@1@0.01-s0,oom@1@0.02-s0")
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    by_arm = {t.user_attrs["arm"]: t for t in study.get_trials()}
    assert by_arm["0.01"].state == TrialState.FAIL and by_arm["0.01"].user_attrs["failure"]["kind"] == "diverged"
    assert "loss is nan at step 1" in by_arm["0.01"].user_attrs["failure"]["message"]
    assert by_arm["0.02"].state == TrialState.FAIL and by_arm["0.02"].user_attrs["failure"]["kind"] == "out_of_memory"
    assert by_arm["0.03"].state == TrialState.COMPLETE
    monkeypatch.delenv(ENV)
    assert main(["sweep", str(path)]) == 0  # recorded failures are results: nothing is re-run
    assert len(stored(workdir / "runs" / "sweeps" / "tiny").get_trials()) == 3
    row(
        fault="NaN weights at step 1 in one arm, CUDA out-of-memory raised at step 1 in another",
        happened="the trials were recorded as failed with kind diverged ('loss is nan at step 1') and out_of_memory; "
        "the third arm trained; the sweep exited 0",
        kept="the completed arm; a second run of the sweep re-ran nothing (failures are results)",
    )


# --------------------------------------------------------------------------------------------------------------
# The study and its storage


@pytest.mark.parametrize("edit", ["arm added", "arm changed"])
def test_a_study_file_edited_between_runs_is_refused(workdir, capsys, row, edit):
    path = write_study(workdir, seeds=[0])
    assert main(["sweep", str(path)]) == 0
    out_dir = workdir / "runs" / "sweeps" / "tiny"
    before = [(t.number, t.state, t.values) for t in stored(out_dir).get_trials()]
    study = yaml.safe_load(path.read_text())
    if edit == "arm added":
        study["axis"]["values"].append([1, 2, 1])
    else:
        study["axis"]["values"][1] = [2, 2, 2]
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was started with other settings" in err[0] and "--study-name NEW" in err[0]
    assert [(t.number, t.state, t.values) for t in stored(out_dir).get_trials()] == before
    row(
        fault=f"the study file edited between two runs ({edit})",
        happened="exit 2 with one line naming the stored and the new arms and how to start a new study",
        kept=f"all {len(before)} stored trials unchanged; nothing trained",
    )


def test_the_storage_deleted_mid_sweep_stops_the_sweep_and_a_rerun_resumes(workdir, row):
    path = write_study(workdir, seeds=[0], fixed={**STEPS, "train.max_steps": 40, "train.val_every": 20})
    out_dir = workdir / "runs" / "sweeps" / "tiny"
    process = subprocess.Popen(cli("sweep", str(path)), env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(out_dir.glob("trials/*/checkpoints/last.ckpt")), 300, "a first checkpoint")
        (out_dir / "optuna.db").unlink()
        err = process.communicate(timeout=600)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2
    assert "was deleted or replaced while the sweep ran" in err.strip().splitlines()[-1]
    folders = sorted(p.name for p in (out_dir / "trials").iterdir())
    assert main(["sweep", str(path)]) == 0
    study = stored(out_dir)
    assert complete_keys(study) == {(a, 0): 1 for a in ARMS}
    resumed = {
        t.user_attrs["arm"]: metrics_of(Path(t.user_attrs["run_dir"])).get("resumed_from_step")
        for t in study.get_trials()
    }
    assert sorted(p.name for p in (out_dir / "trials").iterdir())[: len(folders)] == folders
    row(
        fault="the SQLite storage file deleted while a trial trained",
        happened="the sweep stopped with exit 2 and one line (the storage was deleted or replaced), instead of "
        "writing results into the deleted file; a re-run made a new storage",
        kept="every run folder; in the re-run each trial with a last checkpoint resumed from it (resumed from step, "
        f"by arm: {resumed})",
    )


# --------------------------------------------------------------------------------------------------------------
# Checkpoints


def _no_bigger_files(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(workdir, row):
    run = workdir / "run"
    assert train_paper(run, env=child_env(**{ENV: "sigkill@5"})).returncode == -signal.SIGKILL
    last = run / "checkpoints" / "last.ckpt"
    size, step = last.stat().st_size, checkpoint_step(last)
    assert step == 4
    before = last.read_bytes()
    full = train_paper(run, preexec=_no_bigger_files(size // 2))
    assert full.returncode == 1, full.stderr[-2000:]
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith("ablations: error: cannot write checkpoint") and "previous checkpoint is kept" in message
    assert last.read_bytes() == before and not list(run.glob("checkpoints/*.partial"))
    again = train_paper(run)
    assert again.returncode == 0 and metrics_of(run)["resumed_from_step"] == 4
    row(
        fault="file-size limit (RLIMIT_FSIZE at half a checkpoint) while a resumed run writes its next last checkpoint",
        happened=f"exit 1 with one line: {message.removeprefix('ablations: error: ')}",
        kept="the previous last.ckpt byte for byte (step 4), no partial file; a later run resumed from step 4 and "
        "finished",
    )


@pytest.mark.parametrize("damage", ["truncated", "other config"])
def test_a_bad_checkpoint_is_refused_and_the_run_starts_clean_elsewhere(workdir, row, damage):
    run = workdir / "run"
    assert train_paper(run, env=child_env(**{ENV: "sigkill@5"})).returncode == -signal.SIGKILL
    last = run / "checkpoints" / "last.ckpt"
    extra: tuple[str, ...] = ()
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    else:
        extra = ("--set", "train.lr=0.02")
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = train_paper(run, extra=extra)
    assert again.returncode == 0, again.stderr[-2000:]
    said = [line for line in again.stdout.splitlines() if "not resuming" in line]
    assert len(said) == 1 and f"starting clean in {workdir / 'run.2'}" in said[0]
    assert ("does not load" if damage == "truncated" else "train.lr: 0.007 → 0.02") in said[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # the old folder untouched
    fresh = metrics_of(workdir / "run.2")
    assert fresh["resumed_from_step"] is None and [h["step"] for h in fresh["history"]] == [4, 8]
    row(
        fault=f"a last checkpoint that is {'truncated to a third' if damage == 'truncated' else 'from another config'}",
        happened=f"one line: {said[0].removeprefix('ablations: ')}; the run trained from step 0 in run.2",
        kept="the old folder byte for byte",
    )


# --------------------------------------------------------------------------------------------------------------
# Secrets


def _all_text(folder: Path) -> str:
    chunks = []
    for path in folder.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("latin-1"))
    return "\n".join(chunks)


def _storage_text(url: str) -> str:
    chunks = []
    for summary in optuna.get_all_study_summaries(storage=url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        chunks.append(json.dumps(study.user_attrs, default=str))
        for t in study.get_trials():
            chunks.append(json.dumps([t.user_attrs, t.system_attrs, t.params], default=str))
    return "\n".join(chunks)


@pytest.mark.parametrize("form", ["user:password@host", "?password="])
def test_secrets_never_reach_run_folders_storages_reports_or_logs(workdir, postgres, row, form):
    password, api_key = "Pw-s3cret-4u", "wandb-k3y-0123456789abcdef0123456789abcdef"
    url = (
        postgres.replace("postgres@", f"postgres:{password}@")
        if form == "user:password@host"
        else f"{postgres}?password={password}"
    )
    path = write_study(workdir, seeds=[0], fixed={"train.max_steps": 2, "train.val_every": 2})
    env = child_env(WANDB_API_KEY=api_key, WANDB_MODE="offline")
    sweep = subprocess.run(cli("sweep", str(path), "--storage", url), env=env, capture_output=True, text=True)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    report = subprocess.run(
        cli("report", "--storage", url, "--study", "tiny", "--sweeps", str(workdir), "--out", str(workdir / "rep")),
        env=env,
        capture_output=True,
        text=True,
    )
    logs = sweep.stdout + sweep.stderr + report.stdout + report.stderr
    written = _all_text(workdir)
    stored_text = _storage_text(url)
    for secret in (password, api_key):
        assert secret not in logs
        assert secret not in written
        assert secret not in stored_text
    shown = "postgres:***@" if form == "user:password@host" else "?password=***"
    assert shown in logs  # the URL was printed, with the password hidden
    row(
        fault=f"a database password in the storage URL ({form} form) and a W&B API key in the environment",
        happened=f"sweep exit {sweep.returncode}, report exit {report.returncode}; the URL printed with the "
        "password hidden",
        kept=f"neither secret in the output, in any of the {sum(1 for p in workdir.rglob('*') if p.is_file())} "
        "files written (run folders, W&B folders, reports) or in the storage's study and trial attributes",
    )
