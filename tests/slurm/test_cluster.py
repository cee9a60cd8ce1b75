"""``ablations sweep --slurm N`` against a real SLURM controller on this machine (``tests/slurm/conftest.py``) and
the real PostgreSQL of the sweep tests: a job array finishing a grid exactly once with no secret in any submitted
file or job record, a worker preempted with ``scancel --signal=USR1`` whose trial resumes to an uninterrupted
run's metrics, ``--status`` from the storage, the ranks of a multi-device trial started by ``srun``, and jobs SLURM
refuses or will not start reported with SLURM's reason."""

from __future__ import annotations

import collections
import re
import stat
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.reliability.test_faults import child_env, cli, metrics_of, val_metrics
from tests.test_sweep import complete_keys, stored, wait_for, write_study

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.reliability]

ARMS = ("(1,1,1)", "(1,2,4)")
PASSWORD = "Pw-s3cret-4u"
FAST = {"train.max_steps": 2, "train.val_every": 2, "data.num_workers": 0}


def sweep(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli("sweep", *args), env=child_env(ABLATIONS_SLURM_POLL_S="1", **env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def job_of(printed: str) -> str:
    found = re.search(r"submitted job (\d+)", printed)
    assert found, printed[-3000:]
    return found.group(1)


def files_text(folder: Path, *, skip: Path | None = None) -> str:
    return "\n".join(
        p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p != skip
    )


def test_a_two_worker_array_finishes_a_grid_exactly_once_with_no_secret_in_slurm(workdir, postgres, slurm, row):
    url = postgres.replace("postgres@", f"postgres:{PASSWORD}@")  # the server trusts local connections: any password
    path = write_study(workdir, fixed=FAST)
    done = sweep(str(path), "--storage", url, "--slurm", "2", "--cpus-per-worker", "1", "--time", "10", "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = job_of(done.stdout)
    study = optuna.load_study(study_name="tiny", storage=postgres)
    assert complete_keys(study) == {(a, s): 1 for a in ARMS for s in (0, 1)}
    for t in study.get_trials():  # any other trial is a queued duplicate that ran nothing
        assert t.state == TrialState.COMPLETE or t.user_attrs["failure"]["kind"] == "duplicate"
    tasks = {t.user_attrs["placement"]["slurm_job"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert tasks == {f"{job}_0", f"{job}_1"}  # both array tasks worked
    assert {t.user_attrs["placement"]["cpus"] for t in study.get_trials(states=(TrialState.COMPLETE,))} == {1}
    assert "[tiny 4/4 done" in done.stdout and f"job {job}_0 RUNNING" in done.stdout
    assert "tiny: multi_grid" in done.stdout  # the verdict table at the end
    # --status reads the same progress from the storage alone.
    status = sweep(str(path), "--storage", url, "--status")
    assert status.returncode == 0 and status.stdout.startswith("study tiny: 4/4 arm × seed done, 0 running, 0 queued")
    # No password in anything submitted or recorded: submitit's scripts, pickles and logs, SLURM's state (job
    # scripts and environments), its logs, scontrol's view of the job, and what the commands printed.
    folder = workdir / "runs" / "sweeps" / "tiny" / "slurm"
    secret = folder / "storage-url"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and PASSWORD in secret.read_text()
    records = slurm.run("scontrol", "show", "job", "-dd", job).stdout
    script = slurm.run("scontrol", "write", "batch_script", f"{job}_0", "-").stdout
    assert f"JobId={job}" in records or "ArrayJobId" in records
    everything = [files_text(folder, skip=secret), files_text(slurm.folder), records, script]
    everything += [done.stdout, done.stderr, status.stdout]
    assert all(PASSWORD not in text for text in everything)
    assert "postgres:***@" in done.stdout
    row(
        fault="2-worker SLURM job array (`--slurm 2 --wait`) on a 2 arms × 2 seeds grid, a password in the storage URL",
        happened=f"both array tasks claimed and ran trials ({sorted(tasks)}); `--wait` printed the progress and the "
        "verdict table; `--status` read 4/4 done from the storage",
        kept="every arm × seed complete exactly once; the password in no submitted script, pickle or log, not in "
        "SLURM's state or logs, `scontrol show job -dd` or the batch script (only in a 0600 file the job reads)",
    )


def test_a_worker_signalled_usr1_checkpoints_requeues_and_its_trial_resumes_to_the_same_metrics(
    workdir, postgres, slurm, row
):
    fixed = {"train.max_steps": 40, "train.val_every": 20, "train.checkpoint_every": 2, "data.num_workers": 0}
    path = write_study(workdir, fixed=fixed, seeds=[0])
    out = workdir / "runs" / "sweeps" / "tiny"
    submitted = sweep(str(path), "--storage", postgres, "--slurm", "1", "--cpus-per-worker", "1", "--time", "10")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job = job_of(submitted.stdout)
    wait_for(lambda: list(out.glob("trials/*/checkpoints/last.ckpt")), 300, "the trial's first checkpoint")
    signalled = slurm.run("scancel", "--signal=USR1", job)
    assert signalled.returncode == 0, signalled.stderr
    # The worker checkpoints, records the trial, queues it again and asks SLURM to requeue itself.
    wait_for(lambda: [s for s in slurm.squeue(job) if s[1] == "PENDING" and s[2] == "BeginTime"], 120, "a requeue")
    study = optuna.load_study(study_name="tiny", storage=postgres)
    [failed] = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    message = failed.user_attrs["failure"]["message"]
    assert failed.user_attrs["failure"]["kind"] == "interrupted" and "preempted by SIGUSR1 at step" in message
    saved = int(re.search(r"at step (\d+)", message).group(1))
    assert 0 < saved < 40
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 2  # the other arm and the retry, queued at once: no heartbeat wait
    status = sweep(str(path), "--storage", postgres, "--status")
    assert status.stdout.startswith("study tiny: 0/2 arm × seed done, 0 running, 2 queued · interrupted 1")
    # Skip SLURM's two-minute hold after a requeue; the requeued task claims both trials and resumes the first.
    wait_for(lambda: slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now").returncode == 0, 60, "release")
    wait_for(lambda: not slurm.squeue(job), 600, "the requeued worker to finish")
    study = optuna.load_study(study_name="tiny", storage=postgres)
    assert complete_keys(study) == {(a, 0): 1 for a in ARMS}
    resumed = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["arm"] == "(1,1,1)")
    assert resumed.user_attrs["run_dir"] == failed.user_attrs["run_dir"]
    assert resumed.user_attrs["preemptions"] == 1 and resumed.user_attrs["placement"]["restarts"] == 1
    metrics = metrics_of(Path(resumed.user_attrs["run_dir"]))
    assert metrics["resumed_from_step"] == saved and [h["step"] for h in metrics["history"]] == [20, 40]
    assert not list(out.rglob("hpc_ckpt*"))  # Lightning's own SLURM requeue stayed off
    # The same trial, uninterrupted, with the same one thread a --cpus-per-worker 1 worker trains with.
    whole = subprocess.run(cli("sweep", str(path), "--out", "whole"), env=child_env(OMP_NUM_THREADS="1"),
                           capture_output=True, text=True)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-2000:]
    reference = next(t for t in stored(workdir / "whole").get_trials() if t.user_attrs["arm"] == "(1,1,1)")
    assert resumed.values == reference.values
    assert val_metrics(metrics) == val_metrics(metrics_of(Path(reference.user_attrs["run_dir"])))
    row(
        fault=f"`scancel --signal=USR1` to a SLURM worker while its trial trained (step {saved} of 40)",
        happened=f"the worker wrote last.ckpt at step {saved}, recorded the trial as interrupted (preempted by "
        "SIGUSR1), queued it again at once (no heartbeat wait) and requeued its SLURM task; the requeued task "
        f"claimed it and resumed from step {saved} in the same run folder",
        kept=f"every val/ metric equal to an uninterrupted run's (val/mIoU {resumed.values[0]:.6f}); no hpc_ckpt "
        "file (Lightning's requeue off); each arm × seed complete once; `--status` showed the queued retry",
    )


def test_the_ranks_of_a_multi_device_trial_are_started_by_srun(workdir, postgres, slurm, row):
    fixed = {**FAST, "train.devices": 2, "train.accelerator": "cpu", "data.train_samples": 32, "data.val_samples": 8}
    path = write_study(workdir, "ddp", fixed=fixed, seeds=[0])
    done = sweep(str(path), "--storage", postgres, "--slurm", "1", "--cpus-per-worker", "2", "--time", "10", "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = job_of(done.stdout)
    study = optuna.load_study(study_name="ddp", storage=postgres)
    assert complete_keys(study) == {(a, 0): 1 for a in ARMS}
    steps = collections.Counter()
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        log = (Path(t.user_attrs["run_dir"]) / "train.log").read_text()
        ranks = re.findall(rf"rank (\d) of 2 in SLURM step {job}\.(\d+)", log)
        assert sorted(r for r, _ in ranks) == ["0", "1"], log[-2000:]  # two SLURM tasks, not a re-spawned rank
        assert len({s for _, s in ranks}) == 1 and ranks[0][1] != "0"  # one srun step beside the worker's
        steps[ranks[0][1]] += 1
        assert [p.name for p in Path(t.user_attrs["run_dir"]).glob("*.json")] == ["metrics.json"]
    row(
        fault="a 2-device trial (gloo on the CPU) in a SLURM worker with 2 CPUs",
        happened=f"each trial's 2 ranks ran as the tasks of one srun step of the worker's job ({len(steps)} steps), "
        "Lightning taking the ranks from SLURM instead of re-spawning itself",
        kept="one metrics.json per trial; each arm × seed complete once",
    )


def held(slurm, path: Path, storage: str, *options: str, expect: tuple[str, str] | None = None) -> str:
    """Submit one worker that SLURM accepts but will not start, --wait: exit 2 with one line (returned without its
    prefix and up to the advice), the job still queued (then cancelled)."""
    waited = sweep(str(path), "--storage", storage, "--slurm", "1", *options, "--wait")
    job = job_of(waited.stdout)
    try:
        err = waited.stderr.strip().splitlines()
        assert waited.returncode == 2 and len(err) == 1, waited.stderr
        assert err[0].startswith(f"ablations: error: job {job} cannot start: "), err[0]
        if expect is not None:
            assert slurm.squeue(job) == [(job, *expect)]
        line = err[0].removeprefix("ablations: error: ")
        return line.split("; it stays queued", 1)[0]
    finally:
        slurm.run("scancel", job)


def test_jobs_slurm_refuses_or_will_not_start_are_reported_with_slurms_reason(workdir, postgres, slurm, row):
    path = write_study(workdir, fixed=FAST)
    refused = sweep(str(path), "--storage", postgres, "--slurm", "2", "--partition", "nope")
    err = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(err) == 1, refused.stderr
    assert "sbatch refused the job array" in err[0] and "Invalid partition name specified" in err[0]
    assert not slurm.run("squeue", "-h").stdout.strip()  # nothing submitted
    # An account the partition does not allow (AllowAccounts=lab; with no accounting database SLURM accepts the job
    # and keeps it pending with a sentence for its reason instead of a code).
    account = held(slurm, path, postgres, "--partition", "lab", "--account", "nope")
    assert "SLURM gives the reason \"Job's account not known" in account, account
    assert account.endswith('(lab allows lab)" (the account may not use this partition)'), account
    # Accepted, but the partition's MaxTime (1 min) is under the time asked for: SLURM leaves it pending.
    limit = held(
        slurm, path, postgres, "--partition", "short", "--time", "10", expect=("PENDING", "PartitionTimeLimit")
    )
    assert "SLURM gives the reason PartitionTimeLimit" in limit, limit
    row(
        fault="a partition SLURM does not know; an account the partition does not allow; a time limit over the "
        "partition's MaxTime",
        happened=f"exit 2, one line each: {refused.stderr.strip().removeprefix('ablations: error: ')} / "
        f"{account} / {limit}",
        kept="nothing submitted for the first; the others left pending as SLURM keeps them (then cancelled)",
    )
