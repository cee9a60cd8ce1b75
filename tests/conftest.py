"""Tiny configs so that every arm of every axis builds and trains a step on a CPU in well under a second."""

from __future__ import annotations

import pytest
import torch

from ablations import load_config

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
