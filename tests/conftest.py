"""Tiny configs so that every arm of every axis builds and trains a step on a CPU in well under a second."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from ablations import load_config

# One intra-op thread in the test process (unless OMP_NUM_THREADS says otherwise). The tests' tensors are tiny, so
# a second thread buys nothing on a quiet 2-core host (tests/test_bench.py + test_model.py: 20-21 s with 2 threads,
# 20 s with 1), and on a loaded one its spin-waiting at every op's barrier costs 10-17× (190-342 s with 2 threads,
# 17-19 s with 1, while another suite ran). Subprocesses (CLI, sweep workers) keep their own settings.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

TINY = [
    "backbone.width=0.125",
    "context.channels=16",
    "decoder.channels=16",
    "decoder.low_level_channels=8",
    "head.num_classes=5",
]


def tiny(*overrides: str):
    """A CPU-sized config: the same design point at 1/8 width. Later overrides win."""
    extra = [o for o in TINY if not (o.startswith("context.channels") and "context.kind=none" in overrides)]
    return load_config(overrides=[*extra, *overrides])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_wandb():
    # W&B keeps process-wide settings (read from WANDB_* variables when first used); tests set those variables
    # differently, so each test starts from a fresh W&B state, as a new process would.
    yield
    import wandb

    wandb.teardown()


@pytest.fixture(scope="module")
def geometry_once_per_study():
    """``ablations.sweep.geometry.study_geometry`` computed once per study for the module that asks for it: building
    every arm on the meta device (BatchNorm through torch's Python decompositions) is most of the time of the
    geometry, report and bad-input tests, which check the same studies many times, directly and through
    ``startup_warnings``, ``ablations sweep`` and ``ablations report``. The first call for a study runs the real
    code; later ones get that result. The key is everything ``study_geometry`` reads: the study but its path and
    description (a copy of a study file in another test's folder is the same study), the base config's text, the
    seed."""
    from ablations.report import build
    from ablations.sweep import geometry

    compute, results = geometry.study_geometry, {}

    def once(study, seed=None):
        base = study.base.read_text() if study.base is not None and study.base.is_file() else None
        key = (repr(dataclasses.replace(study, path=None, description="")), base, seed)
        if key not in results:
            results[key] = compute(study, seed)
        return results[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(geometry, "study_geometry", once)  # startup_warnings and results.summary look it up here
        patch.setattr(build, "study_geometry", once)
        yield once


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A run folder for sweep tests: the working directory, W&B offline and quiet, no injected fault."""
    from ablations.training.faults import ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv(ENV, raising=False)  # no injected fault unless a test asks for one
    return tmp_path
