"""The fully connected CRF at evaluation (DeepLab v1 §4, v2 §3.2): what it does to a prediction on an image whose
edges are known, its settings' errors, and a training run that records the metrics before and after it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from ablations import ConfigError, load_config
from ablations.results import names
from ablations.training.crf import CrfSettings, dense_crf, refine, to_rgb8
from ablations.training.train import train
from tests.test_train import TINY_RUN


def halves(height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An image of two flat-coloured halves (dark left, bright right) and its labels (0 left, 1 right)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (30, 40, 50)
    image[:, width // 2 :] = (220, 200, 180)
    labels = np.zeros((height, width), np.int64)
    labels[:, width // 2 :] = 1
    return image, labels


def probabilities_for(labels: np.ndarray, confidence: float) -> np.ndarray:
    p = np.where(labels == 0, confidence, 1 - confidence).astype(np.float32)
    return np.stack([p, 1 - p])


def test_the_crf_pulls_a_noisy_prediction_to_the_images_edges():
    image, labels = halves()
    rng = np.random.default_rng(0)
    noisy = labels.copy()
    flipped = rng.random(labels.shape) < 0.2  # a fifth of the pixels predicted as the other half's class
    noisy[flipped] = 1 - noisy[flipped]
    # The network leans toward its (noisy) labels, but not by much: 0.6 against 0.4.
    probabilities = probabilities_for(noisy, 0.6)
    before = (probabilities.argmax(0) == labels).mean()
    after = (dense_crf(probabilities, image).argmax(0) == labels).mean()
    assert before == pytest.approx(0.8, abs=0.03)
    assert after == 1.0  # every pixel takes its flat-coloured region's majority


def test_the_crf_moves_a_misplaced_edge_onto_the_colour_edge():
    image, labels = halves()
    shifted = np.zeros_like(labels)
    shifted[:, 13:] = 1  # the predicted boundary 3 columns left of the colour edge, with low confidence
    probabilities = probabilities_for(shifted, 0.55)
    refined = dense_crf(probabilities, image).argmax(0)
    assert (probabilities.argmax(0) != labels).sum() == 3 * labels.shape[0]
    assert (refined == labels).all()


def test_the_crf_leaves_a_prediction_that_follows_the_edges_unchanged():
    image, labels = halves()
    for confidence in (0.9, 1.0):  # confident, and one-hot (the clipped unary stays finite)
        refined = dense_crf(probabilities_for(labels, confidence), image)
        assert np.isfinite(refined).all()
        assert (refined.argmax(0) == labels).all()
        assert np.allclose(refined.sum(0), 1.0, atol=1e-4)


def test_zero_weights_drop_the_kernels_and_leave_the_softmax_argmax():
    image, labels = halves()
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet((1.0, 1.0), size=labels.shape).transpose(2, 0, 1).astype(np.float32)
    settings = CrfSettings(appearance_weight=0.0, smoothness_weight=0.0 + 1e-9)
    refined = dense_crf(probabilities, image, settings)
    assert (refined.argmax(0) == probabilities.argmax(0)).all()


def test_refine_runs_a_batch_and_converts_the_images():
    image, labels = halves(16, 16)
    images = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(2, 1, 1, 1)
    assert (to_rgb8(images)[0] == image).all()
    probabilities = torch.from_numpy(probabilities_for(labels, 0.55)).unsqueeze(0).repeat(2, 1, 1, 1)
    out = refine(probabilities, images, CrfSettings())
    assert out.shape == probabilities.shape and out.dtype == torch.float32
    assert (out.argmax(1) == torch.from_numpy(labels)).all()


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("eval.crf_iterations=0", "eval.crf_iterations"),
        ("eval.crf_iterations=1000", "eval.crf_iterations"),
        ("eval.crf_appearance_weight=-1", "eval.crf_appearance_weight"),
        ("eval.crf_smoothness_weight=1000", "eval.crf_smoothness_weight"),
        ("eval.crf_appearance_xy=0", "eval.crf_appearance_xy"),
        ("eval.crf_appearance_rgb=-3", "eval.crf_appearance_rgb"),
        ("eval.crf_smoothness_xy=inf", "eval.crf_smoothness_xy"),
        ("eval.crf_processes=0", "eval.crf_processes"),
    ],
)
def test_bad_crf_settings_are_one_line_errors(setting, field):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["eval.crf=true", setting])
    message = str(caught.value)
    assert field in message and "\n" not in message


def test_a_crf_with_no_kernel_is_refused():
    with pytest.raises(ConfigError, match=r"eval\.crf_appearance_weight"):
        load_config(overrides=["eval.crf=true", "eval.crf_appearance_weight=0", "eval.crf_smoothness_weight=0"])


def test_the_crf_without_its_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # what Python does when the import fails
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["eval.crf=true"])
    message = str(caught.value)
    assert "eval.crf" in message and "'crf'" in message and "pip install -e '.[crf]'" in message
    assert "\n" not in message
    load_config(overrides=["eval.crf=false"])  # off, the extra is not needed


def test_a_run_with_the_crf_records_the_metrics_before_and_after_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sets = [*TINY_RUN, "train.max_steps=2", "train.val_every=2", "eval.crf=true", "eval.crf_iterations=3"]
    metrics = train(load_config(overrides=sets, profile="quick"), tmp_path / "crf", progress_bar=False)
    for key in (names.MIOU, names.MIOU_BEFORE_CRF, names.BOUNDARY_MIOU_BEFORE_CRF, names.CRF_MS):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics[names.CRF_MS] > 0
    on_disk = json.loads((tmp_path / "crf" / "metrics.json").read_text())
    assert on_disk[names.MIOU_BEFORE_CRF] == metrics[names.MIOU_BEFORE_CRF]
    # The same network and seed without the CRF: its mIoU is the CRF run's "before".
    plain = train(load_config(overrides=sets[:-2], profile="quick"), tmp_path / "plain", progress_bar=False)
    assert plain[names.MIOU] == pytest.approx(metrics[names.MIOU_BEFORE_CRF], abs=1e-9)
    assert names.MIOU_BEFORE_CRF not in plain


def test_a_pool_of_processes_gives_the_same_marginals_and_counts_each_images_time():
    from ablations.training.crf import CrfRunner

    image, labels = halves(16, 16)
    images = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(3, 1, 1, 1)
    probabilities = torch.from_numpy(probabilities_for(labels, 0.55)).unsqueeze(0).repeat(3, 1, 1, 1)
    alone, pool = CrfRunner(CrfSettings()), CrfRunner(CrfSettings(), processes=2)
    try:
        assert torch.equal(alone(probabilities, images), pool(probabilities, images))
        assert pool._pool is not None  # it did run in worker processes
    finally:
        pool.close()
    assert pool._pool is None
    for runner in (alone, pool):
        assert runner.images == 3 and runner.take_ms_per_image() > 0 and runner.images == 0
