"""The training-protocol fields of DeepLab v2 and v3: the learning-rate policy (step vs poly, v2 Table 2), the loss
on subsampled labels vs upsampled logits (v2 vs v3, v3 Table 8) and frozen BatchNorm (v3 Table 8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablations import ConfigError, load_config
from ablations.data import IGNORE_INDEX
from ablations.training import system as system_module
from ablations.training.system import SegmentationSystem, lr_factor, step_schedule, subsample_labels
from ablations.training.train import train
from tests.test_train import TINY_RUN


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_step_policy_drops_by_gamma_every_step_and_poly_stays_the_default():
    assert [step_schedule(s, every=2000, gamma=0.1) for s in (0, 1999, 2000, 3999, 4000)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01]
    )
    assert [step_schedule(s, every=10, gamma=0.5, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    step = load_config(overrides=["train.lr_policy=step", "train.lr_step=2000", "train.max_steps=6000"]).train
    assert lr_factor(4500, step) == pytest.approx(0.01)
    third = load_config(overrides=["train.lr_policy=step", "train.lr_step=0.3333", "train.max_steps=300"]).train
    assert third.resolved_lr_step == 100 and lr_factor(200, third) == pytest.approx(0.01)
    poly = load_config(overrides=["train.max_steps=100"]).train
    assert poly.lr_policy == "poly" and lr_factor(50, poly) == pytest.approx(0.5**0.9)


def test_subsampled_labels_sit_on_the_logits_grid_and_keep_ignore():
    target = torch.arange(17 * 17).reshape(1, 17, 17) % 7
    target[0, 8, 8] = IGNORE_INDEX
    sampled = subsample_labels(target, (3, 3), 8)  # 17 = 2·8 + 1 pixels at stride 8: cells at 0, 8, 16
    assert torch.equal(sampled, target[:, ::8, ::8])
    assert sampled[0, 1, 1] == IGNORE_INDEX
    assert subsample_labels(torch.zeros(2, 16, 16, dtype=torch.long), (2, 2), 8).shape == (2, 2, 2)


def test_loss_at_labels_is_computed_at_the_feature_resolution(tmp_path, monkeypatch):
    seen = []
    real = system_module.segmentation_loss

    def spy(logits, target, **kwargs):
        seen.append((tuple(logits.shape[-2:]), tuple(target.shape[-2:])))
        return real(logits, target, **kwargs)

    monkeypatch.setattr(system_module, "segmentation_loss", spy)
    sets = [*TINY_RUN, "train.max_steps=2", "train.val_every=2", "train.loss_at=labels"]
    train(load_config(overrides=sets, profile="quick"), tmp_path / "labels", progress_bar=False)
    assert seen and all(shape == ((3, 3), (3, 3)) for shape in seen)  # 48² crop at output stride 16
    seen.clear()
    train(load_config(overrides=[*sets[:-1]], profile="quick"), tmp_path / "logits", progress_bar=False)
    assert seen and all(shape == ((48, 48), (48, 48)) for shape in seen)


def test_frozen_batchnorm_keeps_statistics_and_affine(tmp_path):
    config = load_config(overrides=[*TINY_RUN, "train.max_steps=2", "train.freeze_bn=true"], profile="quick")
    system = SegmentationSystem(config.to_dict(), ("background", "disk"))
    before = {k: v.clone() for k, v in system.model.state_dict().items() if "bn" in k or "running" in k}
    system.train()
    norms = [m for m in system.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert (
        norms and not any(m.training for m in norms) and not any(p.requires_grad for m in norms for p in m.parameters())
    )
    optimizer = system.configure_optimizers()["optimizer"]
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for m in norms for p in m.parameters())
    # A real fit: every BatchNorm tensor (weights, biases, running statistics) is where it started.
    metrics = train(config, tmp_path / "frozen", progress_bar=False)
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key, value in before.items():
        if value.dtype.is_floating_point:
            assert torch.equal(state["model." + key], value), key


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["train.lr_policy=step"], "train.lr_step"),
        (["train.lr_policy=step", "train.lr_step=0"], "train.lr_step"),
        (["train.lr_policy=step", "train.lr_step=1.5"], "train.lr_step"),
        (["train.lr_policy=step", "train.lr_step=10", "train.lr_gamma=1.5"], "train.lr_gamma"),
        (["train.lr_step=10"], "train.lr_step"),
        (["train.lr_policy=cosine"], "train.lr_policy"),
        (["train.loss_at=features"], "train.loss_at"),
        (["train.loss_at=labels", "data.crop_size=100"], "data.crop_size"),  # 100 at output stride 16
    ],
)
def test_bad_protocol_settings_are_one_line_errors(overrides, field):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_loss_at_labels_accepts_the_papers_crops():
    for crop, os_ in ((513, 16), (513, 8), (321, 8), (512, 16)):
        load_config(overrides=["train.loss_at=labels", f"data.crop_size={crop}", f"backbone.output_stride={os_}"])


class _Toy(nn.Module):
    """Logits that depend on the input's size and content: a 1×1 conv, then (optionally) a resize to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x, *, upsample: bool = True):
        return self.conv(x)


def test_msc_fuses_the_scales_by_their_elementwise_maximum():
    from ablations.training.system import multi_scale_logits

    torch.manual_seed(0)
    network, images = _Toy(), torch.rand(2, 3, 16, 16)
    per_scale, fused = multi_scale_logits(network, images, (0.5, 0.75, 1.0))
    assert len(per_scale) == 3 and all(m.shape == (2, 2, 16, 16) for m in per_scale)
    assert torch.equal(per_scale[2], network(images))  # scale 1 is the network on the input itself
    assert torch.equal(fused, torch.maximum(torch.maximum(per_scale[0], per_scale[1]), per_scale[2]))


def test_msc_training_takes_a_loss_on_every_scale_and_on_the_fusion(tmp_path, monkeypatch):
    calls = []
    real = system_module.segmentation_loss

    def spy(logits, target, **kwargs):
        calls.append(tuple(logits.shape[-2:]))
        return real(logits, target, **kwargs)

    monkeypatch.setattr(system_module, "segmentation_loss", spy)
    sets = [*TINY_RUN, "train.max_steps=2", "train.val_every=2", "train.msc_scales=[0.5, 0.75, 1]"]
    train(load_config(overrides=sets, profile="quick"), tmp_path / "msc", progress_bar=False)
    assert len(calls) == 2 * 4 and set(calls) == {(48, 48)}  # 2 steps × (3 scales + the fused map)


def test_max_fusion_at_evaluation():
    from ablations.training.inference import predict_probabilities

    torch.manual_seed(0)
    network, images = _Toy(), torch.rand(1, 3, 8, 8)

    def softmax_at(scale):
        x = torch.nn.functional.interpolate(images, size=(round(8 * scale),) * 2, mode="bilinear", align_corners=False)
        logits = torch.nn.functional.interpolate(network(x), size=(8, 8), mode="bilinear", align_corners=False)
        return logits.softmax(1)

    fused = predict_probabilities(network, images, scales=(0.5, 1.0), fusion="max")
    assert torch.allclose(fused, torch.maximum(softmax_at(0.5), softmax_at(1.0)))
    mean = predict_probabilities(network, images, scales=(0.5, 1.0))
    assert torch.allclose(mean, (softmax_at(0.5) + softmax_at(1.0)) / 2)


@pytest.mark.parametrize("scales", ["[]", "[0.5, 0.75]", "[0, 1]", "[1, 1]", "[1, 5]"])
def test_bad_msc_scales_are_one_line_errors(scales):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[f"train.msc_scales={scales}"])
    assert "train.msc_scales" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"eval\.fusion"):
        load_config(overrides=["eval.fusion=median"])
