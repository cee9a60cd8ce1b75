"""Tiny configs so that every arm of every axis builds and trains a step on a CPU in well under a second."""

from __future__ import annotations

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
