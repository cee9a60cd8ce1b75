"""``--workers N`` placement: N workers round-robin over G GPUs (N > G: several trials share a GPU), the CPU
threads and the config's loader workers shared out, a user's ``CUDA_VISIBLE_DEVICES`` / ``OMP_NUM_THREADS`` /
``--set data.num_workers`` respected, the one start line, the workers' environment, and a 4-worker sweep whose
every trial records the placement it ran under."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from ablations.sweep import workers as workers_module
from ablations.sweep.placement import (
    LOADER_ENV,
    PLACEMENT_ENV,
    from_env,
    placement,
    start_line,
    visible_devices,
    worker_env,
)
from ablations.sweep.study import LOADER_WORKERS_ENV, load_study
from ablations.training.checkpoints import RESUME_IGNORES
from tests.test_sweep import complete_keys, stored, write_study

ARMS = ("(1,1,1)", "(1,2,4)")


@pytest.fixture(autouse=True)
def _no_inherited_loader_share(monkeypatch):
    monkeypatch.delenv(LOADER_WORKERS_ENV, raising=False)


# --------------------------------------------------------------------------------------------------------------
# The pure function


@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_workers_go_round_robin_over_the_gpus_with_the_threads_and_loaders_shared_out(workers, gpus):
    places = placement(workers, gpus, 16, 12)
    assert [p.index for p in places] == list(range(workers))
    assert all(p.workers == workers for p in places)
    if gpus:
        assert [p.device for p in places] == [i % gpus for i in range(workers)]
        assert [p.cuda_visible_devices for p in places] == [str(i % gpus) for i in range(workers)]
        assert [p.device_name for p in places] == [f"cuda:{i % gpus}" for i in range(workers)]
    else:
        assert all(p.device is None and p.cuda_visible_devices is None and p.device_name == "cpu" for p in places)
    assert {p.threads for p in places} == {max(1, 16 // workers)}  # the same whether or not a GPU is shared
    assert {p.loader_workers for p in places} == {12 // workers}
    assert sum(p.loader_workers for p in places) <= 12  # never more loader processes than the config asked


@pytest.mark.parametrize(
    ("workers", "cpus", "loaders", "threads", "shares"),
    [(8, 2, 12, 1, 1), (4, 2, 2, 1, 0), (3, 16, 12, 5, 4), (2, 1, 0, 1, 0), (4, 4, 3, 1, 0)],
)
def test_every_worker_keeps_a_thread_and_the_loader_share_rounds_down(workers, cpus, loaders, threads, shares):
    places = placement(workers, 1, cpus, loaders)
    assert {p.threads for p in places} == {threads}
    assert {p.loader_workers for p in places} == {shares}


def test_the_users_cuda_visible_devices_is_respected():
    places = placement(3, 2, 8, 0, visible=["5", "7"])
    assert [p.cuda_visible_devices for p in places] == ["5", "7", "5"]
    assert [p.device for p in places] == [0, 1, 0]  # as the parent numbers them (cuda:0 is device 5)
    # torch stops at the first entry it cannot use: only the GPUs it sees are placed on.
    places = placement(2, 1, 8, 0, visible=["GPU-aaaa", "GPU-bbbb"])
    assert [p.cuda_visible_devices for p in places] == ["GPU-aaaa", "GPU-aaaa"]
    assert placement(2, 0, 8, 0, visible=[])[0].cuda_visible_devices is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({}) is None


def test_a_users_thread_count_and_loader_override_are_each_workers_own():
    places = placement(4, 1, 16, 2, threads=3, loader_override=2)
    assert {p.threads for p in places} == {3}
    assert {p.loader_workers for p in places} == {2}


def test_multi_device_trials_get_a_group_of_gpus_each():
    places = placement(3, 4, 12, 0, gpus_per_trial=2)
    assert [p.cuda_visible_devices for p in places] == ["0,1", "2,3", "0,1"]
    assert [p.gpus for p in places] == [(0, 1), (2, 3), (0, 1)]
    assert placement(2, 1, 12, 0, gpus_per_trial=2)[1].cuda_visible_devices == "0"  # fewer GPUs than asked


def test_placement_refuses_no_workers():
    with pytest.raises(ValueError, match="workers"):
        placement(0, 1, 4, 0)


# --------------------------------------------------------------------------------------------------------------
# The start line


def test_the_start_line_says_when_several_trials_share_a_gpu():
    line = start_line(placement(4, 1, 16, 12), loader_workers=12)
    assert line == (
        "4 workers on 1 GPU (cuda:0 ×4: several trials share it), 4 CPU threads each, "
        "3 loader workers each (data.num_workers=12 shared out)"
    )
    line = start_line(placement(3, 2, 8, 0), loader_workers=0)
    assert line == "3 workers on 2 GPUs (cuda:0 ×2, cuda:1: several trials share a GPU), 2 CPU threads each, " + (
        "0 loader workers each"
    )
    line = start_line(placement(2, 4, 8, 0), loader_workers=0, available=4)
    assert line.startswith("2 workers on 2 of 4 GPUs (cuda:0, cuda:1: one each), 4 CPU threads each")


def test_the_start_line_on_a_cpu_and_with_the_users_settings():
    assert start_line(placement(2, 0, 2, 0), loader_workers=0) == (
        "2 workers on the CPU, 1 thread each, 0 loader workers each"
    )
    line = start_line(
        placement(2, 2, 8, 4, visible=["2", "3"], threads=2, loader_override=4),
        loader_workers=4,
        loader_override=True,
        user_threads=True,
        visible=["2", "3"],
    )
    assert line == (
        "2 workers on 2 GPUs (GPU 2, GPU 3: one each) of CUDA_VISIBLE_DEVICES=2,3, 2 CPU threads each "
        "(OMP_NUM_THREADS), 4 loader workers each (--set data.num_workers=4: per worker)"
    )


# --------------------------------------------------------------------------------------------------------------
# The workers' environment, without starting them


def test_worker_env_carries_the_share_and_leaves_the_rest_of_the_environment():
    gpu, cpu = placement(2, 1, 8, 6)[1], placement(2, 0, 8, 6)[1]
    parent = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "4"}
    env = worker_env(gpu, parent, started=12.5)
    assert env["PATH"] == "/bin" and env["CUDA_VISIBLE_DEVICES"] == "0"  # the placement's id, not the parent's
    assert env["OMP_NUM_THREADS"] == "4" and env[LOADER_ENV] == "3" and env["ABLATIONS_SWEEP_STARTED"] == "12.5"
    assert from_env(env) == {
        "index": 1,
        "workers": 2,
        "gpus": [0],
        "cuda_visible_devices": "0",
        "threads": 4,
        "loader_workers": 3,
        "device": "cuda:0",
    }
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(cpu, {}, started=1.0)  # the CPU: the variable is not touched
    assert worker_env(cpu, {"CUDA_VISIBLE_DEVICES": ""}, started=1.0)["CUDA_VISIBLE_DEVICES"] == ""
    assert from_env({}) is None and from_env({PLACEMENT_ENV: "not json"}) is None
    assert LOADER_ENV == LOADER_WORKERS_ENV


def _study(workdir, *sets, **fixed):
    return load_study(write_study(workdir, fixed={"data.num_workers": 12, **fixed}), sets=list(sets))


def test_plan_shares_the_configs_loader_workers_and_respects_a_set(workdir, monkeypatch):
    monkeypatch.setattr(workers_module, "_cpus", lambda: 16)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    places, line = workers_module.plan(4, _study(workdir), {}, gpus=1)
    assert [p.cuda_visible_devices for p in places] == ["0"] * 4
    assert {(p.threads, p.loader_workers) for p in places} == {(4, 3)}
    assert line.startswith("4 workers on 1 GPU (cuda:0 ×4: several trials share it), 4 CPU threads each")
    places, line = workers_module.plan(4, _study(workdir, "data.num_workers=2"), {"OMP_NUM_THREADS": "2"}, gpus=2)
    assert {(p.threads, p.loader_workers) for p in places} == {(2, 2)}
    assert line.endswith(
        "2 CPU threads each (OMP_NUM_THREADS), 2 loader workers each (--set data.num_workers=2: per worker)"
    )
    places, line = workers_module.plan(4, _study(workdir), {"CUDA_VISIBLE_DEVICES": "2,3"}, gpus=2)
    assert [p.cuda_visible_devices for p in places] == ["2", "3", "2", "3"]
    assert "(GPU 2 ×2, GPU 3 ×2: several trials share a GPU) of CUDA_VISIBLE_DEVICES=2,3" in line
    places, line = workers_module.plan(2, _study(workdir, "train.accelerator=cpu"), {}, gpus=2)
    assert line == "2 workers on the CPU, 8 threads each, 6 loader workers each (data.num_workers=12 shared out)"


_real_plan = workers_module.plan


def test_spawn_workers_prints_the_placement_and_starts_each_worker_with_its_share(workdir, monkeypatch):
    monkeypatch.setattr(workers_module, "_cpus", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(workers_module, "plan", lambda n, study: _real_plan(n, study, gpus=1))
    started: list[tuple[list[str], dict[str, str]]] = []

    class FakeProcess:
        def __init__(self, command, env):
            started.append((command, env))

        def wait(self):
            return 0

    monkeypatch.setattr(workers_module.subprocess, "Popen", FakeProcess)
    lines: list[str] = []
    study = _study(workdir)
    assert workers_module.spawn_workers(["sweep", "x.yaml"], 2, study=study, started=5.0, printer=lines.append) == 0
    assert lines == [
        "[tiny] 2 workers on 1 GPU (cuda:0 ×2: several trials share it), 2 CPU threads each, "
        "6 loader workers each (data.num_workers=12 shared out)"
    ]
    assert [command[-1] for command, _ in started] == ["--worker", "--worker"]
    assert [json.loads(env[PLACEMENT_ENV])["index"] for _, env in started] == [0, 1]
    assert {(env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"], env[LOADER_ENV]) for _, env in started} == {
        ("0", "2", "6")
    }


# --------------------------------------------------------------------------------------------------------------
# The share reaches the trials' configs, and changes neither the study nor a resume


def test_the_loader_share_caps_the_trials_config_and_not_the_study(workdir, monkeypatch):
    study = _study(workdir)
    fingerprint = study.fingerprint()
    monkeypatch.setenv(LOADER_WORKERS_ENV, "3")
    assert study.resolve(ARMS[0], 0).data.num_workers == 3
    monkeypatch.setenv(LOADER_WORKERS_ENV, "20")
    assert study.resolve(ARMS[0], 0).data.num_workers == 12  # a cap: never more than the config asks
    assert _study(workdir).fingerprint() == fingerprint
    assert "data.num_workers" in RESUME_IGNORES  # a checkpoint resumes under another share
    monkeypatch.delenv(LOADER_WORKERS_ENV)
    assert study.resolve(ARMS[0], 0).data.num_workers == 12


# --------------------------------------------------------------------------------------------------------------
# Real processes


@pytest.mark.e2e
def test_two_real_workers_see_their_placement(workdir):
    # The environment as spawn_workers builds it, read back by two processes.
    script = "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('OMP_NUM_THREADS', " + (
        f"'{LOADER_ENV}', 'CUDA_VISIBLE_DEVICES', '{PLACEMENT_ENV}')}}))"
    )
    base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    seen = []
    for place in placement(2, 1, 4, 4):
        env = worker_env(place, base, started=1.0)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
        seen.append(json.loads(out.stdout))
    assert [s["OMP_NUM_THREADS"] for s in seen] == ["2", "2"]
    assert [s[LOADER_ENV] for s in seen] == ["2", "2"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen] == ["0", "0"]
    assert [json.loads(s[PLACEMENT_ENV])["index"] for s in seen] == [0, 1]


@pytest.mark.e2e
def test_four_local_workers_claim_every_trial_once_each_under_its_placement(workdir):
    """The 4-worker SQLite test of tests/reliability (exactly once), with each trial's recorded placement:
    the config asks for 4 loader workers on the machine, so each of the 4 workers runs its trials with 1."""
    path = write_study(workdir, seeds=[0, 1], fixed={"train.max_steps": 2, "train.val_every": 2, "data.num_workers": 4})
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "OMP_NUM_THREADS")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even where a GPU is present
    command = [sys.executable, "-m", "ablations.cli", "sweep", str(path), "--workers", "4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    threads = max(1, workers_module._cpus() // 4)
    expected = (
        f"[tiny] 4 workers on the CPU, {_threads(threads)} each, 1 loader worker each (data.num_workers=4 shared out)"
    )
    assert expected in result.stdout.splitlines()
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    assert complete_keys(study) == {(a, s): 1 for a in ARMS for s in (0, 1)}
    assert "database is locked" not in result.stdout + result.stderr
    started = re.findall(r"\] trial (\d+): ", result.stdout)  # each worker's start line of each trial it claimed
    assert len(started) == len(set(started)) >= 4, result.stdout[-3000:]
    by_pid: dict[int, set[int]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        placed = t.user_attrs["placement"]
        assert placed["workers"] == 4 and placed["device"] == "cpu" and placed["threads"] == threads
        assert placed["loader_workers"] == 1 == t.user_attrs["config"]["data"]["num_workers"]
        by_pid.setdefault(t.user_attrs["worker"]["pid"], set()).add(placed["index"])
    # Each worker process has one placement, and no two workers share one.
    assert all(len(indices) == 1 for indices in by_pid.values())
    indices = [next(iter(i)) for i in by_pid.values()]
    assert len(set(indices)) == len(indices) and set(indices) <= set(range(4))


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"
