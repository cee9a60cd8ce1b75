"""Context-module variants: grouped and deformable ASPP branches (``context.groups``, ``context.deformable``),
multi-scale ASPP (``context.rate_sets``) and the non-local block (``context.kind=nonlocal|aspp+nonlocal``).

Every arm of sweeps/aspp_conv.yaml, multiscale_aspp.yaml and nonlocal.yaml builds at 1/8 width and trains a step;
parameter and multiply-add counts follow the grouped-conv formula; rate sets are re-rated with the output stride;
the non-local block and deformable branches start as exactly what they replace; every bad input is a one-line
ConfigError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablations import ConfigError, load_config
from ablations.cli import main
from ablations.geometry.describe import describe
from ablations.model import build_model
from ablations.model.deformable import DeformConv2d
from ablations.model.nonlocal_block import NonLocalBlock, attention_bytes
from ablations.sweep.study import load_study
from tests.conftest import TINY, tiny

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
STUDIES = ("aspp_conv", "multiscale_aspp", "nonlocal")
ARMS = [(name, arm) for name in STUDIES for arm in load_study(SWEEPS / f"{name}.yaml", profile="quick").arm_labels]
SETS = "context.rate_sets=[[1,1,1],[6,12,18],[1,6,12]]"
FEATURES = 256  # tiny(): a 1/8-width ResNet-50's layer4 (512 · 0.125 · 4)
CHANNELS = 16  # tiny()'s context.channels


def arm_config(study: str, arm: str, *extra: str):
    """The arm as its study sets it (fixed settings, then the arm's), at tiny()'s widths."""
    s = load_study(SWEEPS / f"{study}.yaml", profile="quick")
    return load_config(overrides=[*TINY, *s.fixed, *s.arm(arm).overrides, *extra])


@pytest.mark.parametrize(("study", "arm"), ARMS, ids=[f"{s}/{a}" for s, a in ARMS])
def test_every_arm_builds_runs_forward_and_backward(study, arm):
    model = build_model(arm_config(study, arm)).train()
    logits = model(torch.randn(2, 3, 37, 45))
    assert logits.shape == (2, 5, 37, 45)
    model.zero_grad(set_to_none=True)
    logits.logsumexp(1).mean().backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None]


def test_the_studies_hold_the_arms_the_issue_names():
    assert [a for s, a in ARMS if s == "aspp_conv"] == ["standard", "grouped-4", "grouped-16", "depthwise", "separable"]
    assert [a for s, a in ARMS if s == "multiscale_aspp"] == ["v3", "multi-scale"]
    assert [a for s, a in ARMS if s == "nonlocal"] == ["aspp", "nonlocal", "aspp+nonlocal"]
    quick = {a: arm_config("aspp_conv", a) for a in ("grouped-4", "depthwise")}
    assert quick["grouped-4"].context.resolved_groups == 4 and quick["depthwise"].context.resolved_groups == CHANNELS


# --------------------------------------------------------------------------------------------------------------
# Grouped branches


@pytest.mark.parametrize(("groups", "g"), [(1, 1), (4, 4), (16, 16), ("depthwise", CHANNELS)])
def test_grouped_branch_weights_follow_the_formula(groups, g):
    model = build_model(tiny(f"context.groups={groups}"))
    standard = build_model(tiny())
    convs = [branch.atrous for branch in model.context.atrous_branches()]
    assert [c.groups for c in convs] == [g] * 3 and [c.dilation[0] for c in convs] == [6, 12, 18]
    # A grouped conv: C_out · (C_in / g) · 3 · 3 weights, no bias (BatchNorm follows).
    assert all(c.weight.numel() == CHANNELS * (FEATURES // g) * 9 and c.bias is None for c in convs)
    saved = 3 * CHANNELS * FEATURES * 9 * (g - 1) // g
    assert sum(p.numel() for p in standard.parameters()) - sum(p.numel() for p in model.parameters()) == saved


def test_depthwise_has_no_pointwise_conv_and_separable_has_one():
    depthwise = build_model(tiny("context.groups=depthwise")).context.branches[1]
    separable = build_model(tiny("context.separable=true")).context.branches[1]
    assert [type(m).__name__ for m in depthwise] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert depthwise.atrous.groups == CHANNELS and depthwise.atrous.out_channels == CHANNELS
    assert separable.atrous.groups == FEATURES and [m.kernel_size for m in separable if hasattr(m, "kernel_size")] == [
        (3, 3),
        (1, 1),
    ]


def test_describe_counts_the_grouped_convs_macs_and_names_the_groups():
    size = (65, 65)
    standard, grouped = describe(tiny(), size), describe(tiny("context.groups=4"), size)
    h, w = grouped["feature_size"]
    assert standard["macs"] - grouped["macs"] == 3 * CHANNELS * FEATURES * 9 * h * w * 3 // 4
    assert grouped["context"]["groups"] == [4] and standard["context"]["groups"] == [1]
    assert "groups" not in describe(tiny("context.separable=true"), size)["context"]


def test_groups_apply_to_both_merges_and_serial_branches():
    summed = build_model(tiny("context.preset=aspp-l", "context.groups=8"))
    assert [fc6.atrous.groups for fc6 in summed.context.fc6] == [8] * 4
    serial = build_model(tiny("context.topology=serial", "context.groups=4"))
    assert [b.atrous.in_channels for b in serial.context.atrous_branches()] == [FEATURES, CHANNELS, CHANNELS]


# --------------------------------------------------------------------------------------------------------------
# Deformable branches


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_deformable_aspp_equals_its_rigid_twin_at_initialisation(version):
    torch.manual_seed(0)
    rigid = build_model(tiny()).eval()
    torch.manual_seed(0)
    deformable = build_model(tiny(f"context.deformable={version}")).eval()
    missing, unexpected = deformable.load_state_dict(rigid.state_dict(), strict=False)
    assert not unexpected and missing and all(".offset." in k for k in missing)
    convs = [b.atrous for b in deformable.context.atrous_branches()]
    assert all(isinstance(c, DeformConv2d) and c.version == version for c in convs)
    assert [c.dilation[0] for c in convs] == [6, 12, 18]
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(deformable(x), rigid(x), rtol=1e-5, atol=1e-5)
        with rigid.at_output_stride(8), deformable.at_output_stride(8):  # the deformable convs follow the rates
            assert [c.dilation[0] for c in convs] == [12, 24, 36]
            torch.testing.assert_close(deformable(x), rigid(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Multi-scale ASPP


def test_rate_sets_share_one_image_pooling_branch_and_one_projection():
    context = build_model(tiny(SETS)).context
    assert context.rate_sets == ((1, 1, 1), (6, 12, 18), (1, 6, 12))
    assert context.rates == (1, 1, 1, 6, 12, 18, 1, 6, 12)
    assert context.branch_count == 3 * 4 + 1  # per set a 1×1 and three 3×3 branches; one image pooling
    assert context.project[0].in_channels == 13 * CHANNELS and context.project[0].out_channels == CHANNELS
    assert sum(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in context.modules()) == 1


def test_rate_sets_rescale_with_the_output_stride():
    os8 = build_model(tiny(SETS, "backbone.output_stride=8"))
    assert os8.context.rate_sets == ((2, 2, 2), (12, 24, 36), (2, 12, 24))
    model = build_model(tiny(SETS, "eval.output_stride=8")).eval()
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        first = model(x)
        with model.at_output_stride(8):
            assert model.context.rate_sets == ((2, 2, 2), (12, 24, 36), (2, 12, 24))
            assert model(x).shape == (1, 5, 49, 49)
        assert model.context.rate_sets == ((1, 1, 1), (6, 12, 18), (1, 6, 12))
        assert torch.equal(first, model(x))


def test_rate_sets_stated_at_os8_scale_like_rates():
    # (2,4,8) and (12,24) at OS 8 are (1,2,4) and (6,12) at OS 16; the eval stride 8 gives them back.
    config = tiny("context.rate_sets=[[2,4,8],[12,24]]", "context.reference_output_stride=8", "eval.output_stride=8")
    summary = describe(config, (65, 65))
    assert summary["context"]["stated_rate_sets"] == [[2, 4, 8], [12, 24]]
    assert summary["context"]["rate_sets"] == [[1, 2, 4], [6, 12]]
    assert summary["eval"]["context_rates"] == [2, 4, 8, 12, 24]
    with pytest.raises(
        ConfigError, match=r"^context\.rate_sets=\[\[2, 4, 8\], \[12, 24\]\] with eval\.output_stride=32"
    ):
        tiny("context.rate_sets=[[2,4,8],[12,24]]", "context.reference_output_stride=8", "eval.output_stride=32")


def test_one_rate_set_is_the_v3_aspp():
    torch.manual_seed(0)
    v3 = build_model(tiny()).eval()
    torch.manual_seed(0)
    one = build_model(tiny("context.rate_sets=[[6,12,18]]")).eval()
    assert v3.state_dict().keys() == one.state_dict().keys()
    assert all(torch.equal(v, one.state_dict()[k]) for k, v in v3.state_dict().items())
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(v3(x), one(x))


# --------------------------------------------------------------------------------------------------------------
# Non-local block


def test_the_non_local_block_starts_as_the_identity_and_can_leave_it():
    block = NonLocalBlock(8)
    assert block.channels == 4  # half the input's channels (Wang et al. §3.3)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    for train in (True, False):
        block.train(train)
        assert torch.equal(block(x), x)
    attention = block.attention(x)
    assert attention.shape == (2, 35, 35)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 35))
    block.train()
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.out[1].weight.grad.abs().sum() > 0  # γ gets a gradient: training moves the block off identity
    with torch.no_grad():
        block.out[1].weight.fill_(1.0)
    assert not torch.equal(block(x), x)


def test_aspp_after_a_non_local_block_starts_as_the_aspp():
    torch.manual_seed(0)
    aspp = build_model(tiny()).eval()
    torch.manual_seed(0)
    both = build_model(tiny("context.kind=aspp+nonlocal")).eval()
    missing, unexpected = both.load_state_dict(aspp.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context.attention.") for k in missing)
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(both(x), aspp(x))


def test_non_local_widths_and_attention_figures():
    model = build_model(tiny("context.kind=nonlocal", "context.nonlocal_channels=24"))
    assert model.context.attention.channels == 24 and model.context.attention.theta.in_channels == FEATURES
    assert model.context.project[0].out_channels == CHANNELS and model.context.rates == ()
    summary = describe(tiny("context.kind=nonlocal", "eval.output_stride=8", "data.crop_size=96"), (65, 65))
    n = summary["nonlocal"]
    assert n["channels"] == FEATURES // 2 and n["in_channels"] == FEATURES
    assert n["attention"]["map"] == [5, 5] and n["attention"]["entries"] == 25**2
    assert n["eval"]["map"] == [9, 9] and n["eval"]["bytes"] == 81**2 * 4
    batch = summary["config"]["data"]["batch_size"]
    assert n["train_batch"]["map"] == [6, 6] and n["train_batch"]["bytes"] == batch * 36**2 * 4
    assert attention_bytes(33, 33) == 1089**2 * 4 and describe(tiny(), (65, 65))["nonlocal"] is None


def test_training_refuses_attention_that_cannot_fit_before_any_work(tmp_path):
    from ablations.training.train import check_attention_memory, train

    huge = tiny("context.kind=nonlocal", "backbone.output_stride=8", "data.image_size=4096", "data.crop_size=4096")
    with pytest.raises(ConfigError) as caught:
        train(huge, tmp_path / "run")
    message = str(caught.value)
    assert message.startswith("context.kind='nonlocal': the non-local attention matrices of one training batch need ")
    assert "(512·512)²" in message and "data.crop_size=4096" in message and "\n" not in message
    assert not (tmp_path / "run" / "config.yaml").exists()
    check_attention_memory(tiny("context.kind=aspp+nonlocal"))  # 513² crop at OS 16, batch 16: 72 MiB


# --------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (["context.groups=3"], "context.groups"),  # does not divide context.channels=16
        (["context.groups=0"], "context.groups"),
        (["context.groups=2.5"], "context.groups"),
        (["context.groups=true"], "context.groups"),
        (["context.groups=pointwise"], "context.groups"),
        (["context.groups=4", "context.separable=true"], "context.groups"),
        (["context.groups=4", "context.kind=spp"], "context.groups"),
        (["context.deformable=v3"], "context.deformable"),
        (["context.deformable=v1", "context.separable=true"], "context.deformable"),
        (["context.deformable=v2", "context.groups=2"], "context.deformable"),
        (["context.deformable=v1", "context.kind=nonlocal"], "context.deformable"),
        (["context.rate_sets=[]"], "context.rate_sets"),
        (["context.rate_sets=[[6,12],[]]"], "context.rate_sets"),
        (["context.rate_sets=6,12,18"], "context.rate_sets"),  # a flat list is not three one-rate sets
        (["context.rate_sets=[[6,0,12]]"], "context.rate_sets"),
        (["context.rate_sets=[[6,-1]]"], "context.rate_sets"),
        (["context.rate_sets=[[6,12.5]]"], "context.rate_sets"),
        (["context.rate_sets=[[6,12],[6,12]]"], "context.rate_sets"),
        (["context.rate_sets=[[6,12]]", "context.rates=6,12"], "context.rate_sets"),
        (["context.rate_sets=[[6,12]]", "context.preset=v3"], "context.rate_sets"),
        (["context.rate_sets=[[6,12]]", "context.merge=sum"], "context.rate_sets"),
        (["context.rate_sets=[[6,12]]", "context.kind=largefov"], "context.rate_sets"),
        (["context.rate_sets=[[3,6]]", "eval.output_stride=32"], "context.rate_sets"),
        (["context.kind=aspp+nonlocal", "context.merge=sum"], "context.merge"),
        (["context.kind=nonlocal", "context.rates=6,12"], "context.rates"),
        (["context.nonlocal_channels=8"], "context.nonlocal_channels"),
        (["context.kind=nonlocal", "context.nonlocal_channels=0"], "context.nonlocal_channels"),
        (["context.kind=voronoi"], "context.kind"),
    ],
)
def test_bad_variant_settings_are_one_line_errors_naming_the_field(settings, field):
    with pytest.raises(ConfigError) as caught:
        tiny(*settings)
    message = str(caught.value)
    assert message.startswith(field) and "\n" not in message


def test_groups_that_do_not_divide_the_backbone_channels_are_refused_when_built():
    config = tiny("context.channels=24", "context.groups=3")  # 3 divides 24 but not the backbone's 256
    for build in (build_model, lambda c: describe(c, (65, 65))):
        with pytest.raises(ConfigError) as caught:
            build(config)
        message = str(caught.value)
        assert message.startswith("context.groups=3: ") and "256 channels" in message and "[1, 2, 4, 8]" in message
        assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^context\.groups='depthwise' \(depthwise = context\.channels = 24"):
        build_model(tiny("context.channels=24", "context.groups=depthwise"))


# --------------------------------------------------------------------------------------------------------------
# ablations describe


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["context.groups=4"], ["grouped 3×3 (groups 4)"]),
        (["context.groups=depthwise"], ["depthwise 3×3 (groups 64 = channels, no pointwise)"]),
        (["context.separable=true"], ["separable 3×3"]),
        (["context.deformable=v2"], ["standard 3×3, deformable v2", "r6 0.77 (deformable v2, rigid grid)"]),
        (
            [SETS, "eval.output_stride=8"],
            [
                "multi-scale, 3 rate sets (1, 1, 1) (6, 12, 18) (1, 6, 12) at OS 16 → (1, 1, 1) (6, 12, 18) (1, 6, 12) "
                "at OS 16, one shared image pooling on",
                "13 branches",
                "context rates (2, 2, 2, 12, 24, 36, 2, 12, 24)",
            ],
        ),
        (
            ["context.kind=nonlocal", "eval.output_stride=8"],
            [
                "context   non-local block (embedded Gaussian, Wang et al. 2018) on the 512 features, θ/φ/g 256 "
                "channels",
                "attention (h·w)² per image at 513×513: 33×33 map, 1,185,921 entries, 4.5 MiB fp32 (OS 16); at eval "
                "OS 8: 65×65 map, 17,850,625 entries, 68.1 MiB fp32; one training batch (8 × 96² crop): 6×6 map, "
                "10,368 entries, 40.5 KiB fp32",
            ],
        ),
        (["context.kind=aspp+nonlocal"], ["ASPP after a non-local block", "non-local block first"]),
    ],
)
def test_describe_prints_each_variant(capsys, settings, expected):
    assert main(["describe", "--profile", "quick", *[a for s in settings for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out
