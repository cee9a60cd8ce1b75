"""DeepLab v1/v2's VGG-16 and the field-of-view fields (fc6 kernel × rate, fc6/fc7 width): v2 Table 1's parameter
counts and receptive fields, the pools' strides at every output stride, torchvision's weights, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ablations import ConfigError, build_model, load_config
from ablations.geometry.describe import describe, format_summary
from ablations.model.vgg import VGG16

# v2 Table 1 (= v1 Table 2): fc6 kernel, rate, fc6/fc7 width → the paper's parameter count (M). The receptive
# field at fc6 is the theoretical one of DeepLab's VGG-16 (3×3 pools, pool4/5 at stride 1, conv5 at rate 2):
# papers.md's calculator gives 419, 323, 419, 419 px (the paper's "FOV" column is another quantity).
TABLE_1 = [(7, 4, 4096, 134.3, 419), (4, 4, 4096, 65.1, 323), (4, 8, 4096, 65.1, 419), (3, 12, 1024, 20.5, 419)]


def vgg(*overrides: str, name: str = "vgg16"):
    return load_config(
        overrides=[
            f"backbone.name={name}", "backbone.output_stride=8", "context.kind=largefov", "data.name=voc",
            *overrides,
        ]
    )  # fmt: skip


@pytest.mark.parametrize(("kernel", "rate", "channels", "params_m", "rf"), TABLE_1)
def test_v2_table1_parameters_and_receptive_field(kernel, rate, channels, params_m, rf):
    config = vgg(f"context.kernel_size={kernel}", f"context.rates=[{rate}]", f"context.channels={channels}")
    summary = describe(config, (513, 513))
    # The published heads have biases where ours have BatchNorm (+1 parameter per channel): well inside 0.1M.
    assert abs(summary["params"] / 1e6 - params_m) < 0.1
    assert summary["receptive_field"]["context"] == rf
    assert summary["output_stride"] == 8 and summary["feature_size"] == [65, 65]


def test_the_papers_network_at_output_stride_8_16_32():
    for output_stride, pools, conv5 in ((8, [2, 2, 2, 1, 1], 2), (16, [2, 2, 2, 2, 1], 1), (32, [2] * 5, 1)):
        with torch.device("meta"):
            model = build_model(vgg(f"backbone.output_stride={output_stride}"), load_weights=False)
        backbone = model.backbone
        assert [p.stride for p in backbone._pools] == pools
        rates = {row["block"]: row["dilation"] for row in backbone.conv_table() if row["unit"] == 0}
        assert rates == {"layer1": 1, "layer2": 1, "layer3": 1, "layer4": conv5}
        assert all(c.stride == (1, 1) for c in backbone._convs)
        assert describe(vgg(f"backbone.output_stride={output_stride}"), (64, 64))["output_stride"] == output_stride


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_trains_forward_and_backward_and_evaluates_at_another_stride(name):
    config = vgg("backbone.width=0.125", "context.channels=16", "context.rates=[2]", name=name)
    model = build_model(config)
    x = torch.rand(2, 3, 40, 40)
    logits = model(x)
    assert logits.shape == (2, 21, 40, 40)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        before = model(x)
        with model.at_output_stride(16):
            assert model(x).shape == before.shape
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_torchvision_state_dicts_load_by_name(tmp_path, name):
    import torchvision

    reference = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # features.* and classifier.* (fc6-fc8, left out)
    model = VGG16(name)
    model.load_pretrained(str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_describe_shows_the_vgg_network():
    text = format_summary(describe(vgg("context.kernel_size=7", "context.rates=[4]", "context.channels=4096")))
    assert "vgg16" in text and "output stride 8 (measured 8" in text
    assert "receptive field  backbone 227 px, with context 419 px" in text


@pytest.mark.parametrize(
    ("override", "field", "allowed"),
    [
        ("backbone.multi_grid=[1,2,4]", "multi_grid", "no residual units"),
        ("backbone.cascade=1", "cascade", "no cascaded blocks"),
        ("backbone.hdc={layer4: [1, 2, 3]}", "hdc", "no residual units"),
        ("backbone.output_stride=4", "output_stride", "[8, 16, 32]"),
        ("backbone.first_unit=previous", "first_unit", "pools"),
        ("context.kernel_size=4", "context.kernel_size", "even"),  # 4×4 at LargeFOV's rate 12 is fine …
        ("context.kernel_size=0", "context.kernel_size", "1..15"),
    ],
)
def test_bad_vgg_settings_are_one_line_errors(override, field, allowed):
    overrides = [override] + (["context.rates=[3]"] if override == "context.kernel_size=4" else [])  # … rate 3 not
    with pytest.raises(ConfigError) as caught:
        vgg(*overrides)
    message = str(caught.value)
    assert "\n" not in message and field in message and allowed in message


def test_kernel_size_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match=r"context\.kernel_size"):
        load_config(overrides=["context.kernel_size=7"])  # v3 ASPP: 3×3 branches
    with pytest.raises(ConfigError, match="separable"):
        load_config(overrides=["context.kind=largefov", "context.kernel_size=7", "context.separable=true"])


def test_a_bad_vgg_setting_exits_2_with_one_line():
    command = [
        sys.executable,
        "-m",
        "ablations.cli",
        "describe",
        "--set",
        "backbone.name=vgg16",
        "--set",
        "backbone.cascade=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "backbone.cascade=2" in done.stderr


# v1's MSc branches (§4): 3×3 → 128, 1×1 → 128, 1×1 → classes on the input and pool1..pool4.
def msc_params(width_channels: dict[str, int], classes: int, channels: int = 128) -> int:
    return sum(c * channels * 9 + channels + channels * channels + channels + channels * classes + classes
               for c in width_channels.values())  # fmt: skip


def test_msc_branches_add_their_logits_and_the_papers_parameters():
    plain = build_model(vgg())
    config = vgg("head.msc=true")
    model = build_model(config)
    taps = {"input": 3, "pool1": 64, "pool2": 128, "pool3": 256, "pool4": 512}
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == msc_params(taps, 21)
    assert [b[0].stride[0] for b in model.msc.branches.values()] == [8, 4, 2, 1, 1]
    model.eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        features = model.backbone(x)
        main = model.context(features["out"])
        expected = main + sum(branch(features[tap]) for tap, branch in model.msc.branches.items())
        assert torch.allclose(model(x, upsample=False), expected, atol=1e-5)
    summary = describe(config, (513, 513))
    assert summary["msc"]["strides"] == [8, 4, 2, 1, 1] and "MSc" in format_summary(summary)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_msc_trains_and_follows_the_output_stride(output_stride):
    config = vgg("head.msc=true", "backbone.width=0.125", f"backbone.output_stride={output_stride}",
                 "context.channels=16", "head.msc_channels=8", "head.num_classes=3")  # fmt: skip
    model = build_model(config)
    for size in (64, 67):
        logits = model(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 3, size, size)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.msc.parameters())
    model.set_output_stride(8)
    assert [b[0].stride[0] for b in model.msc.branches.values()] == [8, 4, 2, 1, 1]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["head.msc=true", "backbone.name=resnet50"], "backbone.name='resnet50'"),
        (["head.msc=true", "decoder.enabled=true"], "decoder"),
        (["head.msc=true", "head.msc_channels=0"], "head.msc_channels"),
    ],
)
def test_bad_msc_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as caught:
        vgg(*overrides)
    assert needle in str(caught.value) and "head.msc" in str(caught.value) and "\n" not in str(caught.value)
