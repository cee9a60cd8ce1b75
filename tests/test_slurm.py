"""``ablations sweep --slurm N`` without a SLURM cluster: the options (flags over the study's ``slurm:`` block),
the batch script submitit writes from them, every bad input as one line with nothing submitted, the secret kept
out of the job, ``--status`` from the storage, SLURM's reasons read from ``scontrol``, the preemption callback
inside a real Lightning run, and the whole worker job run by submitit's LocalExecutor. The same path against a
real SLURM controller is ``tests/slurm/``."""

from __future__ import annotations

import collections
import os
import pickle
import signal
import stat
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablations.cli import main
from ablations.results import names
from ablations.sweep import slurm
from ablations.sweep.study import StudyError, load_study
from tests.test_sweep import complete_keys, stored, wait_for, write_study

ARMS = ("(1,1,1)", "(1,2,4)")
SECRET = "Pw-s3cret-4u"


@pytest.fixture
def signals():
    """The preemption handlers change this process's SIGUSR1/SIGUSR2/SIGTERM: put them back, and the flag."""
    before = {s: signal.getsignal(s) for s in slurm.SIGNALS}
    slurm._received.clear()
    yield
    for s, handler in before.items():
        signal.signal(s, handler)
    slurm._received.clear()


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` on PATH that record being called: what a test expects never to be submitted."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    calls = tmp_path / "sbatch-calls"
    for name in ("sbatch", "srun"):
        script = folder / name
        refusal = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination"
        script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\necho '{refusal} specified' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return calls


# --------------------------------------------------------------------------------------------------------------
# Options


def test_the_study_block_is_checked_and_stays_out_of_the_fingerprint(workdir):
    block = {"partition": "gpu", "gpus_per_worker": 1, "cpus_per_worker": 8, "time": "1-00:00:00",
             "account": "lab", "sbatch": ["--qos=high", "#SBATCH --constraint=a100"], "max_preemptions": 5}  # fmt: skip
    with_block = load_study(write_study(workdir, "a", slurm=block))
    without = load_study(write_study(workdir, "a"))
    assert with_block.slurm == {**block, "time": 1440}
    assert with_block.fingerprint() == without.fingerprint()  # where it runs is not what it is


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"partitions": "gpu"}, "unknown field(s) ['partitions']"),
        ({"time": "soon"}, "slurm: time='soon'"),
        ({"time": 0}, "at least one minute"),
        ({"gpus_per_worker": -1}, "gpus_per_worker=-1"),
        ({"cpus_per_worker": 0}, "cpus_per_worker=0"),
        ({"sbatch": ["--array=0-3"]}, "--array is set by --slurm itself"),
        ({"sbatch": ["-q high"]}, "the long form"),
        ({"partition": "a b"}, "partition='a b'"),
        ("gpu", "a mapping of partition"),
    ],
)
def test_a_bad_slurm_block_names_the_field(workdir, block, said):
    with pytest.raises(StudyError) as caught:
        load_study(write_study(workdir, slurm=block))
    assert said in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "minutes"), [("90", 90), (90, 90), ("30:30", 31), ("2:00:00", 120), ("1-2", 1560), ("1-00:00:00", 1440)]
)
def test_time_limits_in_sbatch_forms(text, minutes):
    assert slurm.parse_time(text) == minutes


def test_flags_override_the_block_and_the_batch_script_asks_slurm_for_each_workers_share(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    block = {"partition": "gpu", "time": 600, "sbatch": ["--qos=high"], "cpus_per_worker": 4}
    opts = slurm.options(block, workers=3, gpus_per_worker=1, cpus_per_worker=8, sbatch=["--exclusive", "mem=32G"])
    assert (opts.partition, opts.time_min, opts.cpus_per_worker, opts.gpus_per_worker) == ("gpu", 600, 8, 1)
    params = slurm.sbatch_parameters(opts, "ablations-tiny")
    parallel = params.pop("array_parallelism")
    text = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", map_count=3,
                               array_parallelism=parallel, **params)  # fmt: skip
    lines = set(text.splitlines())
    for expected in ("--array=0-2%3", "--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=8", "--time=600",
                     "--ntasks-per-node=1", "--nodes=1", "--requeue", "--signal=USR1@120", "--qos=high",
                     "--exclusive", "--mem=32G", "--job-name=ablations-tiny"):  # fmt: skip
        assert f"#SBATCH {expected}" in lines, expected
    assert not any("USR2" in line for line in lines)  # submitit's own warning would requeue without a checkpoint


# --------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing submitted


UNREACHABLE = f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/db"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--slurm", "2"], "the storage is SQLite (the default"),
        (["--slurm", "2", "--storage", "sqlite:///x.db"], "the storage is SQLite (sqlite:///x.db)"),
        (["--slurm", "2", "--storage", UNREACHABLE], "cannot connect"),
        (["--slurm", "0", "--storage", UNREACHABLE], "--slurm 0: the number of workers"),
        (["--slurm", "-1"], "-1 must be 0"),
        (["--slurm", "2", "--workers", "2", "--storage", UNREACHABLE], "drop --workers"),
        (["--slurm", "2", "--time", "soon", "--storage", UNREACHABLE], "--time='soon'"),
        (["--slurm", "2", "--sbatch=--output=x", "--storage", UNREACHABLE], "--output is set by --slurm"),
        (["--wait"], "--wait: only with --slurm N"),
        (["--partition", "gpu"], "--partition: only with --slurm N"),
        (["--status", "--slurm", "1"], "--status only reads the storage; drop --slurm"),
        (["--status"], "--status: no storage at"),
    ],
)
def test_bad_cluster_input_is_one_line_and_submits_nothing(workdir, capsys, fake_sbatch, args, said):
    path = write_study(workdir)
    try:
        status = main(["sweep", str(path), *args])
    except SystemExit as stop:  # argparse's own one-line errors
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    assert SECRET not in err[0] and "Traceback" not in err[0]
    assert not fake_sbatch.exists()


def test_no_sbatch_on_path_is_one_line(workdir, capsys, monkeypatch):
    empty = workdir / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["sweep", str(write_study(workdir)), "--slurm", "2", "--storage", UNREACHABLE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sbatch on PATH" in err[0]


def test_a_submission_sbatch_refuses_is_one_line_with_its_reason(tmp_path, fake_sbatch):
    spec = slurm.WorkerSpec("s.yaml", None, (), None, None, None, str(tmp_path), "postgresql://h/db", None, 0.0)
    opts = slurm.options(None, workers=2, account="nope")
    with pytest.raises(slurm.SweepError) as caught:
        slurm.submit(spec, opts, tmp_path / "slurm")
    assert str(caught.value) == (
        "--slurm: sbatch refused the job array: Invalid account or account/partition combination specified"
    )


def test_the_password_goes_to_a_private_file_not_into_the_job(tmp_path):
    url = f"postgresql+psycopg2://user:{SECRET}@db.example:5432/sweeps"
    shown, path = slurm.write_secret(url, tmp_path / "slurm")
    assert shown == "postgresql+psycopg2://user:***@db.example:5432/sweeps"
    assert Path(path).read_text().strip() == url
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    spec = slurm.WorkerSpec("s.yaml", "quick", (), None, None, None, str(tmp_path), shown, path, 0.0)
    assert SECRET.encode() not in pickle.dumps(spec)
    assert slurm.write_secret("postgresql://user@db/x", tmp_path / "other") == ("postgresql://user@db/x", None)


# --------------------------------------------------------------------------------------------------------------
# What SLURM says, and --status


def test_slurm_records_give_the_task_its_reason_and_its_log(tmp_path):
    log = tmp_path / "12_1_0_log.err"
    log.write_text("Traceback …\nsqlalchemy.exc.OperationalError: connection to server refused\n\n")
    pending = {"JobId": "13", "ArrayJobId": "12", "ArrayTaskId": "0-3%4", "JobState": "PENDING",
               "Reason": "PartitionTimeLimit"}  # fmt: skip
    assert slurm.task_name(pending) == "12_[0-3]"
    assert slurm.cannot_start(pending) == (
        "job 12_[0-3] cannot start: SLURM gives the reason PartitionTimeLimit (the time limit (--time) is over the "
        "partition's MaxTime)"
    )
    assert slurm.cannot_start({**pending, "Reason": "Resources"}) is None  # it will start when a node frees up
    # A partition's AllowQos: SLURM's sentence (spaces as underscores in scontrol's record) instead of a code.
    qos = {**pending, "Reason": "Job's_QOS_not_permitted_to_use_this_partition_(gpu_allows_normal_not_high)"}
    assert slurm.cannot_start(qos) == (
        "job 12_[0-3] cannot start: SLURM gives the reason \"Job's QOS not permitted to use this partition (gpu allows "
        'normal not high)" (the QOS may not use this partition)'
    )
    failed = {"JobId": "14", "ArrayJobId": "12", "ArrayTaskId": "1", "JobState": "FAILED", "ExitCode": "1:0",
              "Reason": "NonZeroExitCode", "StdErr": str(log)}  # fmt: skip
    assert slurm.ended_line(failed) == (
        "job 12_1 ended FAILED (exit code 1:0, reason NonZeroExitCode): sqlalchemy.exc.OperationalError: connection "
        "to server refused"
    )


def test_status_reads_the_progress_from_the_storage_alone(workdir, capsys):
    from ablations.sweep.board import claim, mark_failed, open_study, top_up
    from ablations.sweep.storage import open_storage

    path = write_study(workdir)
    study = load_study(path)
    out = workdir / "runs" / "sweeps" / "tiny"
    out.mkdir(parents=True)
    board = open_study(study, open_storage(f"sqlite:///{out / 'optuna.db'}"), "tiny")
    top_up(study, board)
    first = claim(study, board)
    board.study.tell(first, values=[0.5])
    second = claim(study, board)
    board.set_attr(second.number, "placement", {"slurm_job": "12_1", "host": "gpu-07"})
    board.set_attr(second.number, slurm.PREEMPTIONS_ATTR, 1)
    third = claim(study, board)
    mark_failed(board, third.number, "interrupted", "preempted by SIGTERM")
    before = [(t.number, t.state) for t in board.trials()]
    capsys.readouterr()
    assert main(["sweep", str(path), "--status"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("study tiny: 1/4 arm × seed done, 1 running, 2 queued · interrupted 1 · profile quick")
    assert "running: trial 1 (1,2,4) seed 0 for" in lines[1] and "SLURM job 12_1, preempted 1×" in lines[1]
    assert [(t.number, t.state) for t in stored(out).get_trials()] == before  # it claimed and reaped nothing


def test_status_of_a_study_never_started_is_one_line(workdir, capsys):
    path = write_study(workdir)
    url = f"sqlite:///{workdir / 'other.db'}"
    optuna.create_study(study_name="unrelated", storage=url)
    assert main(["sweep", str(path), "--status", "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study 'tiny' in sqlite" in err[0]


# --------------------------------------------------------------------------------------------------------------
# Preemption inside a real Lightning run


SLURM_TASK = {
    "SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "ablations-tiny", "SLURM_NODELIST": "localhost",
}  # fmt: skip


@pytest.mark.e2e
def test_a_signal_mid_run_checkpoints_at_the_next_unvalidated_step_and_lightning_does_not_requeue(
    workdir, monkeypatch, signals
):
    import lightning.pytorch as pl

    from ablations.config import load_config
    from ablations.training.train import train

    for key, value in {**SLURM_TASK, slurm.PREEMPT_ENV: "1"}.items():
        monkeypatch.setenv(key, value)  # what a SLURM worker's trial sees: Lightning picks SLURMEnvironment
    config = load_config(overrides=[
        "backbone.width=0.125", "context.channels=16", "decoder.channels=16", "data.image_size=32",
        "data.crop_size=32", "data.train_samples=16", "data.val_samples=4", "data.batch_size=2",
        "train.max_steps=8", "train.val_every=2", "train.accelerator=cpu", "data.num_workers=0",
    ])  # fmt: skip
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["environment"] = type(trainer._accelerator_connector.cluster_environment).__name__
            seen["auto_requeue"] = trainer._accelerator_connector.cluster_environment.auto_requeue
            seen["handler"] = signal.getsignal(signal.SIGUSR1)
            if trainer.global_step == 1:
                os.kill(os.getpid(), signal.SIGUSR1)  # what scancel --signal=USR1 delivers, mid-step

    with pytest.raises(slurm.Preempted) as caught:
        train(config, workdir / "run", callbacks=[Probe(), *slurm.preemption_callbacks(config)], progress_bar=False)
    # Step 2 is validated (its validation and best checkpoint come after the step), so the stop is at step 3.
    assert (caught.value.signame, caught.value.step) == ("SIGUSR1", 3)
    import torch

    last = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert seen == {"environment": "SLURMEnvironment", "auto_requeue": False, "handler": slurm._on_signal}
    assert not list(workdir.rglob("hpc_ckpt*"))  # Lightning's own requeue checkpoint was never written


# --------------------------------------------------------------------------------------------------------------
# The worker job, run by submitit's LocalExecutor (no SLURM)


@pytest.fixture
def one_thread(monkeypatch):
    """The local jobs inherit this: one intra-op thread each, as --cpus-per-worker 1 gives a SLURM worker (two
    spin-waiting threads per worker on a loaded 2-core host make a tiny trial 5-10× slower)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def local_submit(workdir: Path, path: Path, workers: int, **spec_fields):
    import submitit

    out = workdir / "runs" / "sweeps" / "tiny"
    study = load_study(path)
    from ablations.sweep.board import open_study, top_up
    from ablations.sweep.storage import open_storage

    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'optuna.db'}"
    top_up(study, open_study(study, open_storage(url), "tiny"))
    spec = slurm.WorkerSpec(str(path), study.profile, (), None, None, None, str(out), url, None, time.time(),
                            **spec_fields)  # fmt: skip
    executor = submitit.LocalExecutor(folder=str(out / "slurm" / "%j"))
    executor.update_parameters(timeout_min=10)
    return slurm.submit(spec, slurm.options(None, workers=workers), out / "slurm", executor=executor), out


@pytest.mark.e2e
def test_local_executor_workers_finish_the_grid_exactly_once(workdir, one_thread):
    path = write_study(workdir, fixed={"data.num_workers": 0})
    jobs, out = local_submit(workdir, path, 2)
    results = [job.result() for job in jobs]
    assert all(r["signal"] is None for r in results)
    study = stored(out)
    assert complete_keys(study) == {(a, s): 1 for a in ARMS for s in (0, 1)}
    for t in study.get_trials():
        assert t.state == TrialState.COMPLETE or t.user_attrs["failure"]["kind"] == "duplicate"


@pytest.mark.e2e
def test_local_executor_worker_stopped_by_sigterm_requeues_its_trial_which_resumes(workdir, one_thread):
    fixed = {"train.max_steps": 40, "train.val_every": 20, "train.checkpoint_every": 2, "data.num_workers": 0}
    path = write_study(workdir, fixed=fixed, seeds=[0])
    [job], out = local_submit(workdir, path, 1)
    wait_for(lambda: list(out.glob("trials/*/checkpoints/last.ckpt")), 300, "a first checkpoint")
    job._process.send_signal(signal.SIGTERM)  # the local controller passes it on to the task, as SLURM does
    assert job.result()["signal"] == "SIGTERM"
    study = stored(out)
    states = collections.Counter(t.state for t in study.get_trials())
    assert states == {TrialState.FAIL: 1, TrialState.WAITING: 2}  # queued again at once: no heartbeat wait
    [failed] = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed.user_attrs["failure"]["kind"] == "interrupted"
    assert "preempted by SIGTERM at step" in failed.user_attrs["failure"]["message"]
    assert failed.user_attrs[slurm.PREEMPTIONS_ATTR] == 1
    [job] = local_submit(workdir, path, 1)[0]
    assert job.result()["signal"] is None
    study = stored(out)
    assert complete_keys(study) == {(a, 0): 1 for a in ARMS}
    done = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["arm"] == "(1,1,1)")
    assert done.user_attrs["run_dir"] == failed.user_attrs["run_dir"]  # resumed in its predecessor's folder
    assert done.user_attrs[slurm.PREEMPTIONS_ATTR] == 1


@pytest.mark.e2e
def test_a_trial_preempted_too_often_is_recorded_as_preempted(workdir, monkeypatch, signals):
    """max_preemptions=0: the first preemption is over the limit (the bound, without waiting for several)."""
    from ablations.sweep.board import claim, open_study, top_up
    from ablations.sweep.progress import Progress
    from ablations.sweep.storage import open_storage
    from ablations.sweep.trial import run_trial

    monkeypatch.setenv(slurm.PREEMPT_ENV, "1")
    monkeypatch.setenv(slurm.MAX_PREEMPTIONS_ENV, "0")
    path = write_study(workdir, fixed={"train.max_steps": 8, "train.val_every": 4, "data.num_workers": 0}, seeds=[0])
    study = load_study(path)
    board = open_study(study, open_storage(f"sqlite:///{workdir / 'o.db'}"), "tiny")
    top_up(study, board)
    trial = claim(study, board)
    slurm._received.append(signal.SIGTERM)  # as if the signal came before training started
    with pytest.raises(slurm.Preempted):
        run_trial(study, board, trial, workdir, Progress(study, board, printer=lambda _: None))
    frozen = board.get(trial.number)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["failure"]["kind"] == "preempted"
    assert "more than max_preemptions=0" in frozen.user_attrs["failure"]["message"]
    assert len(board.trials((TrialState.WAITING,))) == 1  # the other arm; the preempted one is not queued again
    assert (Path(frozen.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").is_file()  # --retry-failed resumes it
    assert "preempted" in names.FINISHED_FAILURES  # a result that stands: the sweep does not run it again by itself
