"""Deformable convolution in the backbone (``backbone.deformable``; Dai et al., ICCV 2017, arXiv:1703.06211; Zhu et
al., CVPR 2019, arXiv:1811.11168): every arm of sweeps/deformable.yaml trains a step, a deformable net is its rigid
twin at initialisation (zero offsets, unit modulation) at the training and at another output stride, the
deformable op's multiply-adds are counted, ``describe`` marks the convs and gives no receptive-field number that
would be wrong, and bad values are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from ablations.cli import main
from ablations.config import ConfigError, parse_deformable
from ablations.geometry.analysis import DATA_DEPENDENT, count_flops, count_macs, network_field_of_view
from ablations.geometry.describe import describe, format_summary
from ablations.model import build_model
from ablations.model.deformable import DeformConv2d, deformable_modules
from ablations.sweep.geometry import study_geometry
from ablations.sweep.study import load_study
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
STUDY = load_study(ROOT / "sweeps" / "deformable.yaml", profile="quick")


def arm_overrides(label: str) -> list[tuple]:
    """The study's fixed settings (OS 16, ASPP v3) and the arm's, as (key, value) overrides."""
    return [*STUDY.fixed, *STUDY.arm(label).overrides]


# -- the form of the field ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, stages, version",
    [
        ("layer4:v2", {"layer4": None}, "v2"),
        ("layer3+layer4:v2", {"layer3": None, "layer4": None}, "v2"),
        ("layer4[-2:]:v1", {"layer4": 2}, "v1"),
        ("layer3[-3:]+layer4:v1", {"layer3": 3, "layer4": None}, "v1"),  # Dai et al. Table 1's 6-layer row
    ],
)
def test_the_compact_form(spec, stages, version):
    assert parse_deformable(spec) == (stages, version)
    assert tiny(f"backbone.deformable={spec}").backbone.deformable_stages == (stages, version)


def test_none_and_null_are_off():
    assert tiny("backbone.deformable=null").backbone.deformable is None
    assert tiny("backbone.deformable=none").backbone.deformable is None
    model = build_model(tiny("backbone.deformable=none"))
    assert not deformable_modules(model)


# -- every arm of the study trains a step ---------------------------------------------------------------------


@pytest.mark.parametrize("label", STUDY.arm_labels)
def test_every_arm_of_the_study_trains_a_step(label):
    config = tiny(*arm_overrides(label))
    model = build_model(config).train()
    expected = {"none": 0, "layer4:v1": 3, "layer4:v2": 3, "layer3+layer4:v2": 9}[label]
    assert len(deformable_modules(model)) == expected
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    logits = model(torch.randn(2, 3, 33, 41))
    assert logits.shape == (2, 5, 33, 41)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 33, 41)))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    for name, conv in deformable_modules(model).items():  # the offsets (and masks) learn from the first step
        assert conv.offset.weight.grad.abs().sum() > 0, name
    optimizer.step()
    assert torch.isfinite(loss)
    if expected:
        moved = [n for n, c in deformable_modules(model).items() if c.offset.weight.abs().sum() > 0]
        assert moved == list(deformable_modules(model))


# -- the rigid twin at initialisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["backbone.deformable=layer4:v1"],
        ["backbone.deformable=layer4:v2"],
        ["backbone.deformable=layer3+layer4:v2"],
        ["backbone.deformable=layer4[-2:]:v1", "backbone.multi_grid=1,2,4"],
        ["backbone.name=resnet18", "backbone.multi_grid=1,2", "backbone.deformable=layer3[-1:]+layer4:v2"],
        ["backbone.cascade=1", "backbone.multi_grid=1,2,1", "backbone.deformable=block5:v2"],
    ],
    ids=["layer4-v1", "layer4-v2", "layer3+layer4-v2", "layer4-last2-v1", "resnet18-basic-blocks", "cascade-block5"],
)
def test_a_deformable_net_is_its_rigid_twin_at_initialisation(overrides):
    rigid_overrides = [o for o in overrides if not o.startswith("backbone.deformable")]
    torch.manual_seed(0)
    rigid = build_model(tiny(*rigid_overrides)).double().eval()
    torch.manual_seed(0)
    deformable = build_model(tiny(*overrides)).double().eval()
    # The conversion draws no random numbers: the weights after the backbone are those of the rigid twin already.
    ours = deformable.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in rigid.state_dict().items())
    missing, unexpected = deformable.load_state_dict(rigid.state_dict(), strict=False)
    convs = deformable_modules(deformable)
    assert convs and not unexpected
    assert sorted(missing) == sorted(f"{n}.offset.{p}" for n in convs for p in ("weight", "bias"))
    x = torch.randn(2, 3, 49, 57, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(deformable(x), rigid(x), rtol=0, atol=1e-10)
        # Another evaluation output stride: the deformable convs are re-rated with the plan, offsets and all.
        with deformable.at_output_stride(8), rigid.at_output_stride(8):
            rates = [r["dilation"] for r in deformable.backbone.conv_table()]
            assert rates == [r["dilation"] for r in rigid.backbone.conv_table()]
            assert any(c.dilation[0] > 2 for c in convs.values())
            torch.testing.assert_close(deformable(x), rigid(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(deformable(x), rigid(x), rtol=0, atol=1e-10)


def test_the_deformable_convs_keep_the_planned_rate_and_follow_the_plan():
    model = build_model(tiny("backbone.deformable=layer4:v2", "backbone.multi_grid=1,2,4"))
    layer4 = [u.conv2 for u in model.backbone.layer4]
    assert all(isinstance(c, DeformConv2d) and c.version == "v2" for c in layer4)
    assert [c.dilation[0] for c in layer4] == [2, 4, 8] and [c.padding[0] for c in layer4] == [2, 4, 8]
    assert not any(isinstance(u.conv2, DeformConv2d) for u in model.backbone.layer3)
    model.set_output_stride(8)
    assert [c.dilation[0] for c in layer4] == [4, 8, 16]
    assert {r["deformable"] for r in model.backbone.conv_table() if r["block"] == "layer4"} == {"v2"}
    assert all("deformable" not in r for r in model.backbone.conv_table() if r["block"] != "layer4")
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 5, 33, 33)


def test_imagenet_style_weights_load_into_a_deformable_resnet(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    config = tiny(
        "backbone.name=resnet18", "backbone.width=1.0", "backbone.multi_grid=1,1", f"backbone.weights={path}",
        "backbone.deformable=layer4:v1",
    )  # fmt: skip
    model = build_model(config)
    ours = model.backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))
    assert all(c.offset.weight.abs().sum() == 0 for c in deformable_modules(model).values())
    model.backbone.load_pretrained(str(path))  # into the converted backbone too: the offsets are not required


# -- multiply-adds and parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("version, offset_channels, sampling", [("v1", 18, 4), ("v2", 27, 5)])
def test_the_deformable_ops_multiply_adds_are_counted(version, offset_channels, sampling):
    conv = DeformConv2d(3, 4, 3, padding=2, dilation=2, bias=False, version=version)
    pixels, taps = 10 * 10, 9
    expected = (
        4 * pixels * 3 * taps  # the conv on the sampled values
        + 3 * taps * pixels * sampling  # bilinear sampling (4) and v2's modulation (1) per sampled value
        + offset_channels * pixels * 3 * taps  # the offset (and mask) predictor, an ordinary conv
    )
    assert count_macs(conv, (10, 10)) == expected
    assert count_flops(conv, (10, 10), backward=True) > 2 * expected


@pytest.mark.parametrize("spec", ["layer4:v1", "layer4:v2", "layer3+layer4:v2"])
def test_a_deformable_net_costs_more_than_its_rigid_twin(spec):
    with torch.device("meta"):
        rigid = build_model(tiny()).eval()
        deformable = build_model(tiny(f"backbone.deformable={spec}")).eval()
    assert count_macs(deformable, (65, 65)) > count_macs(rigid, (65, 65))
    extra = sum(p.numel() for c in deformable_modules(deformable).values() for p in c.offset.parameters())
    assert sum(p.numel() for p in deformable.parameters()) == sum(p.numel() for p in rigid.parameters()) + extra


def test_v2_costs_more_than_v1_and_layer3_more_than_layer4_alone():
    macs = {}
    for spec in ("layer4:v1", "layer4:v2", "layer3+layer4:v2"):
        with torch.device("meta"):
            macs[spec] = count_macs(build_model(tiny(f"backbone.deformable={spec}")).eval(), (65, 65))
    assert macs["layer4:v1"] < macs["layer4:v2"] < macs["layer3+layer4:v2"]


# -- describe -------------------------------------------------------------------------------------------------


def test_describe_marks_the_deformable_convs_and_gives_no_wrong_receptive_field():
    rigid = describe(tiny(), (65, 65))
    summary = describe(tiny("backbone.deformable=layer4:v2", "eval.output_stride=8"), (65, 65))
    rf = summary["receptive_field"]
    assert rf["backbone"] == rf["context"] == rf["logits"] == DATA_DEPENDENT
    assert rf["rigid_grid"] == {k: rigid["receptive_field"][k] for k in ("backbone", "context", "logits")}
    assert rf["deformable"] == [f"backbone.layer4.{i}.conv2" for i in range(3)]
    assert summary["eval"]["receptive_field"]["logits"] == DATA_DEPENDENT  # at the evaluation output stride too
    assert [u.get("deformable") for u in summary["units"] if u["block"] == "layer4"] == ["v2"] * 3
    assert all("deformable" not in u for u in summary["units"] if u["block"] != "layer4")
    assert summary["macs"] > rigid["macs"] and summary["params"] > rigid["params"]
    json.dumps(summary)
    text = format_summary(summary)
    assert "deformable layer4:v2" in text and "deformable v2: 3 of 3 convs" in text
    assert f"backbone {DATA_DEPENDENT}, with context {DATA_DEPENDENT}, logits {DATA_DEPENDENT}" in text
    assert f"backbone {rigid['receptive_field']['backbone']} px" in text  # the rigid grid, named as such
    assert "px" not in format_summary(summary).split("receptive field")[1].splitlines()[0]


def test_a_deformable_context_conv_leaves_the_backbones_field_a_number():
    # Any DeformConv2d anywhere counts (context.deformable builds them in the context module): here one branch.
    model = build_model(tiny())
    rigid = network_field_of_view(model)["receptive_field"]
    branch = model.context.branches[1]
    branch[0] = DeformConv2d.from_conv(branch[0], "v1")
    rf = network_field_of_view(model)["receptive_field"]
    assert rf["backbone"] == rigid["backbone"]
    assert rf["context"] == rf["logits"] == DATA_DEPENDENT
    assert rf["deformable"] == ["context.branches.1.0"]


def test_describe_on_the_command_line(capsys):
    argv = ["describe", "--set", "backbone.width=0.125", "--set", "context.channels=16", "--input-size", "65", "65"]
    assert main([*argv, "--set", "backbone.deformable=layer3+layer4:v2"]) == 0
    text = capsys.readouterr().out
    assert "deformable v2: 6 of 6 convs" in text and "deformable v2: 3 of 3 convs" in text
    assert main([*argv, "--json", "--set", "backbone.deformable=layer4[-1:]:v1"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [u.get("deformable") for u in s["units"] if u["block"] == "layer4"] == [None, None, "v1"]
    assert s["receptive_field"]["logits"] == DATA_DEPENDENT


def test_a_trial_records_no_receptive_field_number_for_a_deformable_net():
    from ablations.sweep.trial import trial_stats

    rigid = trial_stats(tiny("data.crop_size=65"))
    stats = trial_stats(tiny("data.crop_size=65", "backbone.deformable=layer4:v1"))
    assert isinstance(rigid["receptive_field"], int) and stats["receptive_field"] is None
    assert stats["macs"] > rigid["macs"] and stats["params"] > rigid["params"]


# -- the study's geometry check -------------------------------------------------------------------------------


def test_the_study_geometry_check_reads_the_deformable_convs():
    geometry = study_geometry(STUDY)
    arms = geometry.arms
    assert geometry.verdict == "answerable"
    assert all(g.same_as is None for g in arms.values())  # no arm is another's network
    layer4 = {f"backbone.layer4.{i}.conv2" for i in range(3)}
    assert set(arms["layer4:v1"].studied) == set(arms["layer4:v2"].studied) == layer4
    assert {f"backbone.layer3.{i}.conv2" for i in range(6)} | layer4 == set(arms["layer3+layer4:v2"].studied)
    assert "rigid grid" in arms["layer4:v2"].note() and "rigid grid" not in arms["none"].note()


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["backbone.deformable=layer9:v1"], ["'layer9:v1'", "stage 'layer9'", "allowed ['layer1'"]),
        (["backbone.deformable=layer5:v2"], ["stage 'layer5'", "block5..block7"]),
        (["backbone.deformable=block5:v1"], ["stage 'block5'", "backbone.cascade ≥ 1"]),
        (["backbone.cascade=1", "backbone.multi_grid=1,2,1", "backbone.deformable=block6:v1"], ["cascade ≥ 2"]),
        (["backbone.deformable=layer4:v3"], ["version 'v3'", "allowed ['v1', 'v2']"]),
        (["backbone.deformable=layer4[-4:]:v1"], ["layer4 has 3 units", "1..3"]),
        (["backbone.deformable=layer4[-0:]:v1"], ["layer4 has 3 units"]),
        (["backbone.deformable=layer4"], ["expected STAGE[+STAGE…]:VERSION"]),
        (["backbone.deformable=layer4+layer4:v1"], ["named twice"]),
        (["backbone.name=mobilenet_v2", "backbone.deformable=layer4:v1"], ["mobilenet_v2", "resnet18|"]),
        (["backbone.name=vgg16", "backbone.output_stride=8", "backbone.deformable=layer4:v2"], ["'vgg16'"]),
    ],
)
def test_bad_values_are_refused_with_one_line(overrides, needles, capsys):
    with pytest.raises(ConfigError) as error:
        tiny(*overrides)
    message = str(error.value)
    assert message.startswith("backbone.deformable=") and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    status = main(["describe", *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "backbone.deformable=" in err, (status, err)
