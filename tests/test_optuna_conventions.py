"""The conventions Optuna's own tools expect (issue 17, item 5), read back through Optuna's public API only: every
study names its objectives (``Study.metric_names``), and every validation of a trial is an intermediate value at
its global step (``FrozenTrial.intermediate_values``), so that optuna-dashboard and ``optuna trials`` show named
objectives and learning curves."""

from __future__ import annotations

import os
import subprocess
import warnings

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ablations import sweep
from ablations.cli import main
from ablations.sweep.study import load_study
from ablations.sweep.trial import INTERMEDIATE_ATTR, report_validations
from ablations.training.faults import ENV
from tests.test_sweep import TINY_FIXED, stored, sweep_command, write_study


@pytest.mark.e2e
def test_a_finished_grid_study_names_its_objective_and_holds_every_validation(workdir):
    path = write_study(workdir, seeds=[0])  # two arms; four steps, validating at steps 2 and 4
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    assert study.metric_names == ["val/mIoU"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        # A grid study has no pruner, and every validation is still there, at its optimiser step.
        assert sorted(t.intermediate_values) == [2, 4]
        assert all(0.0 <= v <= 1.0 for v in t.intermediate_values.values())
        # The objective is the last validation's mIoU (never the best of the curve), and every validation is kept.
        assert t.values[0] == t.intermediate_values[4] and t.user_attrs["metrics"]["final_step"] == 4
        assert [v["step"] for v in t.user_attrs["validations"]] == [2, 4]
        assert t.user_attrs["metrics"]["best/val/mIoU"] == pytest.approx(max(t.intermediate_values.values()))
        assert INTERMEDIATE_ATTR not in t.user_attrs  # single objective: Optuna's own intermediate values


@pytest.mark.e2e
def test_a_multi_objective_study_names_both_and_keeps_its_curves_as_a_user_attribute(workdir):
    # Optuna refuses Trial.report for more than one objective; the per-validation values are a user attribute.
    path = workdir / "two.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "profile": "quick",
                "fixed": TINY_FIXED,
                "search_space": {"backbone.output_stride": {"choices": [16, 32]}},
                "sampler": "random",
                "budget": 1,
                "objectives": [
                    {"metric": "val/mIoU", "direction": "maximize"},
                    {"metric": "params", "direction": "minimize"},
                ],
            }
        )
    )
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "two", "two")
    assert study.metric_names == ["val/mIoU", "params"]
    (trial,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert trial.intermediate_values == {}
    curves = trial.user_attrs[INTERMEDIATE_ATTR]
    assert list(curves) == ["val/mIoU"]  # params is not measured at validation
    assert sorted(curves["val/mIoU"], key=int) == ["2", "4"]
    assert trial.values[0] == pytest.approx(max(curves["val/mIoU"].values()))


def test_a_study_stored_without_metric_names_gets_them_when_opened(workdir):
    url = f"sqlite:///{workdir / 'old.db'}"
    optuna.create_study(storage=url, study_name="tiny", direction="maximize")  # as stored before the names
    assert optuna.load_study(study_name="tiny", storage=url).metric_names is None
    study = load_study(write_study(workdir))
    sweep.open_study(study, sweep.open_storage(url), "tiny")
    assert optuna.load_study(study_name="tiny", storage=url).metric_names == ["val/mIoU"]


def _board(workdir, name="tiny", **extra):
    study = load_study(write_study(workdir, name, **extra))
    board = sweep.open_study(study, sweep.open_storage(f"sqlite:///{workdir / 'curves.db'}"), name)
    return study, board


HISTORY = [{"step": 2, "val/mIoU": 0.25, "val/pixel_acc": 0.5}, {"step": 4, "val/mIoU": 0.5, "val/pixel_acc": 0.6}]


@pytest.mark.parametrize("inherit", [False, True])
def test_a_resumed_trial_reports_its_whole_curve_and_no_step_twice(workdir, inherit):
    # A trial validated at step 2, then its worker died; the retry resumes from the checkpoint, whose history holds
    # step 2, and validates at step 4. Whether or not the retry inherited step 2, nothing is reported twice.
    study, board = _board(workdir)
    sweep.top_up(study, board)
    first = sweep.claim(study, board)
    report_validations(board, first, study, HISTORY[:1])
    report_validations(board, first, study, HISTORY[:1])  # the report after training repeats the live one
    board.storage.set_trial_state_values(board.trial_id(first.number), TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=inherit)(board.study, board.get(first.number))
    retry = max(board.trials((TrialState.WAITING,)), key=lambda t: t.number)
    assert sorted(retry.intermediate_values) == ([2] if inherit else [])
    board.storage.set_trial_state_values(board.trial_id(retry.number), TrialState.RUNNING)
    resumed = optuna.Trial(board.study, board.trial_id(retry.number))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns (and ignores the value) when a step is reported twice
        report_validations(board, resumed, study, HISTORY)
        report_validations(board, resumed, study, HISTORY)
    assert board.get(retry.number).intermediate_values == {2: 0.25, 4: 0.5}
    assert board.get(first.number).intermediate_values == {2: 0.25}


def test_a_multi_objective_trial_merges_its_curves_without_duplicates(workdir):
    objectives = [{"metric": "val/mIoU", "direction": "maximize"}, {"metric": "val/pixel_acc", "direction": "maximize"}]
    study, board = _board(workdir, "two", objectives=objectives)
    sweep.top_up(study, board)
    trial = sweep.claim(study, board)
    report_validations(board, trial, study, HISTORY[:1])
    report_validations(board, trial, study, HISTORY)
    frozen = board.get(trial.number)
    assert frozen.intermediate_values == {}
    assert frozen.user_attrs[INTERMEDIATE_ATTR] == {
        "val/mIoU": {"2": 0.25, "4": 0.5},
        "val/pixel_acc": {"2": 0.5, "4": 0.6},
    }


@pytest.mark.e2e
def test_a_trial_killed_after_a_checkpoint_resumes_with_its_whole_curve(workdir):
    # The first trial is killed (kill -9) after step 3, with a checkpoint at step 2; the next run of the sweep
    # retries it in the same folder from that checkpoint.
    path = write_study(workdir, seeds=[0], fixed={"train.checkpoint_every": 2})
    env = {**os.environ, ENV: "sigkill@3@0000-"}
    killed = subprocess.run(sweep_command(path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert killed.returncode != 0
    assert main(["sweep", str(path)]) == 0
    study = stored(workdir / "runs" / "sweeps" / "tiny")
    first = study.trials[0]
    assert first.state == TrialState.FAIL and sorted(first.intermediate_values) == [2]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    retry = next(t for t in complete if t.user_attrs["arm"] == first.user_attrs["arm"])
    assert retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]  # resumed, not started again
    assert sorted(retry.intermediate_values) == [2, 4]
    assert retry.intermediate_values[2] == pytest.approx(first.intermediate_values[2])


@pytest.mark.e2e
def test_a_multi_device_trial_reports_its_curve_from_its_own_process(workdir):
    # train.devices=2 trains as `ablations train` in its own process, without the reporting callback: its curve is
    # reported from the run's history after training.
    path = write_study(workdir, "ddp", fixed={"train.devices": 2, "train.accelerator": "cpu"}, seeds=[0])
    assert main(["sweep", str(path), "--max-trials", "1"]) == 0
    (trial,) = stored(workdir / "runs" / "sweeps" / "ddp", "ddp").get_trials(states=(TrialState.COMPLETE,))
    assert sorted(trial.intermediate_values) == [2, 4]
    assert trial.values[0] == pytest.approx(max(trial.intermediate_values.values()))
