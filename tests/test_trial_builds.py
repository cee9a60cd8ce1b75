"""One trial, top to bottom: its config is resolved once and its network built once on a real device for training.
The geometry check, ``describe`` and the trial's statistics read one meta-device build per network
(:mod:`ablations.geometry.cache`)."""

from __future__ import annotations

import traceback

import pytest

from ablations.cli import main
from ablations.geometry import cache
from ablations.sweep.study import Study
from tests.test_sweep import write_study


def _callers() -> set[str]:
    return {frame.name for frame in traceback.extract_stack()}


@pytest.mark.e2e
def test_a_trial_resolves_once_and_builds_its_network_once_for_training(workdir, monkeypatch):
    import ablations.model
    import ablations.model.builder
    import ablations.training.system

    real_build, real_resolve = ablations.model.builder.build_model, Study.resolve
    builds: list[tuple[str, str, set[str]]] = []  # (device type, network key, functions on the stack)
    resolves: list[set[str]] = []

    def counting_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        builds.append((next(model.parameters()).device.type, cache.network_key(args[0]), _callers()))
        return model

    def counting_resolve(self, *args, **kwargs):
        resolves.append(_callers())
        return real_resolve(self, *args, **kwargs)

    # Everywhere build_model is looked up: the package, its module (the geometry cache), the training system.
    for module in (ablations.model, ablations.model.builder, ablations.training.system):
        monkeypatch.setattr(module, "build_model", counting_build)
    monkeypatch.setattr(Study, "resolve", counting_resolve)
    cache.clear()  # the arm's meta build is made here, not by an earlier test

    path = write_study(workdir)
    assert main(["sweep", str(path), "--seeds", "0", "--max-trials", "1"]) == 0

    in_trial = [callers for callers in resolves if "run_trial" in callers]
    assert len(in_trial) == 1  # the trial's config, resolved once; training and statistics take it as it is
    real = [callers for device, _, callers in builds if device != "meta"]
    training = [callers for callers in real if "train" in callers]
    assert len(training) == 1, f"{len(training)} builds for training"
    # The only other real build is the inference figures' benchmark of the model as evaluated (timed, not trained).
    assert [c for c in real if c not in training and "inference_figures" not in c] == []
    # The geometry check before the sweep (this study's arms, and under the other profiles, which it searches for
    # one that measures them) and the trial's statistics share one meta build per network.
    meta = [key for device, key, _ in builds if device == "meta"]
    assert len(meta) == len(set(meta)) >= 2


def test_the_meta_cache_keys_on_the_network_and_leaves_the_model_as_found():
    from ablations.geometry.describe import describe
    from tests.conftest import tiny

    config = tiny("eval.output_stride=8")
    reseeded = tiny("eval.output_stride=8", "train.seed=5", "data.crop_size=64")
    other = tiny("eval.output_stride=8", "backbone.multi_grid=1,2,4")
    assert cache.network_key(config) == cache.network_key(reseeded) != cache.network_key(other)
    model = cache.meta_model(config)
    assert cache.meta_model(reseeded) is model
    first = describe(config, (65, 65))
    first["eval"]["units"].clear()  # a caller's copy: the cache keeps its own
    again = describe(reseeded, (65, 65))
    assert again["eval"]["units"] and again["eval"]["measured_output_stride"] == 8
    assert again["config"]["train"]["seed"] == 5  # the config's own fields, not the cached arm's
    assert model.output_stride == 16 and not model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
