"""``ablations gpu-check``: the budget, the watchdog that stops a run at it, the page, and the whole command at toy
sizes on a CPU (``--device cpu --tiny``), run twice in one folder: it stops at its budget and the second run
continues the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations import gpucheck
from ablations.cli import main


def test_budget_keeps_its_reserve():
    budget = gpucheck.Budget(10.0, 2.0, started=time.monotonic() - 3.0)
    assert 4.9 < budget.left() <= 5.0
    assert 3.0 <= budget.elapsed() < 3.1


def test_watchdog_interrupts_a_blocking_wait_at_its_deadline():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), gpucheck.Watchdog(0.3) as watchdog:
        time.sleep(5)
    assert watchdog.fired
    assert time.monotonic() - started < 2.0


def test_watchdog_never_fires_after_its_block():
    with gpucheck.Watchdog(0.2) as watchdog:
        pass
    time.sleep(0.4)
    assert not watchdog.fired


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["gpu-check", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablations: error: --device cuda: no CUDA GPU") and err.count("\n") == 1


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_number_is_refused(capsys, tmp_path, budget):
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--budget-s", budget, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--budget-s" in err and "> 0" in err
    assert not (tmp_path / "gpu-check.json").exists()


def test_the_bench_is_reused_only_on_the_same_device_torch_and_commit(tmp_path):
    env = {"device": "NVIDIA H200", "torch": "2.14.1", "commit": "abc"}
    (tmp_path / "gpu-check.json").write_text(json.dumps({"environment": env, "tiny": False, "bench": {"rows": []}}))
    assert gpucheck._previous_bench(tmp_path, env, tiny=False) == {"rows": []}
    assert gpucheck._previous_bench(tmp_path, {**env, "commit": "def"}, tiny=False) is None
    assert gpucheck._previous_bench(tmp_path, {**env, "device": "NVIDIA L4"}, tiny=False) is None
    assert gpucheck._previous_bench(tmp_path, env, tiny=True) is None


def test_the_page_shows_the_environment_the_trial_and_the_sweep():
    result = {
        "device": "cuda",
        "tiny": False,
        "budget_s": 540.0,
        "wall_s": 530.0,
        "environment": {"device": "NVIDIA H200", "driver": "560.35", "cuda": "12.6", "tf32": {"cudnn": True}},
        "bench_skipped": "--no-bench",
        "trial": {"trial": 0, "arm": "1,1,1", "seed": 0, "val/mIoU": 0.61, "data_wait_share": 0.02},
        "sweep": {"study": "multigrid-faithful", "done": 3, "total": 15, "ran_now": 3, "stopped": "budget: …",
                  "trial_seconds": [40.0, 42.0, 41.0], "summary": "TABLE"},
    }  # fmt: skip
    page = gpucheck.render_page(result)
    assert "| driver | 560.35 |" in page and "| tf32 | cudnn on |" in page
    assert "not run (--no-bench)" in page
    assert "| val/mIoU | 0.6100 |" in page and "| data-wait share | 0.020 |" in page
    assert "3 of 15 trials done" in page and "median 41 s" in page and "TABLE" in page


OUTPUTS = ("gpu-check.md", "gpu-check.json", "bench.csv", "trial.csv", "trials.csv", "sweep/summary.md")


def _gpu_check(out: Path, budget: float) -> tuple[dict, float, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ablations.cli", "gpu-check", "--device", "cpu", "--tiny"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--budget-s", str(budget), "--out", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return json.loads((out / "gpu-check.json").read_text()), wall, done.stdout


@pytest.mark.e2e
def test_tiny_gpu_check_writes_every_output_stops_at_its_budget_and_resumes(tmp_path):
    # 16 s: the bench's quarter (3 s) cannot hold it, so it is skipped; the sweep gets the rest and stops when the
    # next trial would not fit (5 tiny trials take ~12 s on the 2-core AMD EPYC), or completes on a fast machine.
    budget = 16.0
    first, wall, out = _gpu_check(tmp_path, budget)
    for name in OUTPUTS:
        assert (tmp_path / name).is_file(), name
    # Its budget holds: Python's start-up and imports come on top (a few seconds), nothing else.
    assert wall < budget + 20, out
    assert first["wall_s"] <= budget + 1
    sweep = first["sweep"]
    assert sweep["study"] == gpucheck.TINY_STUDY and sweep["total"] == 5
    assert sweep["stopped"] == "complete" if sweep["done"] == 5 else sweep["stopped"].startswith("budget")
    assert "bench" not in first and "its share of the budget" in first["bench_skipped"]
    page = (tmp_path / "gpu-check.md").read_text()
    assert "# gpu-check (tiny, cpu)" in page and "## The sweep: multigrid-tiny" in page
    if first.get("trial"):
        assert 0 <= first["trial"]["val/mIoU"] <= 1 and first["trial"]["train_time_s"] > 0

    # The same command continues: the bench now fits its share, the sweep completes.
    second, wall, out = _gpu_check(tmp_path, 120.0)
    assert second["sweep"]["done"] == 5 and second["sweep"]["stopped"] == "complete", out
    assert second["sweep"]["ran_now"] == 5 - sweep["done"]
    rows = second["bench"]["rows"]
    assert {r["mode"] for r in rows} == {"train", "infer"} and len(rows) == 8
    assert second["trial"]["trial"] == 0 and second["trial"]["overhead_s"] >= 0
    assert (tmp_path / "trials.csv").read_text().count("\n") == 6  # the header and five trials
