"""Learned upsampling (``head.upsample`` / ``decoder.upsample: transposed``; FCN, Long et al. CVPR 2015 §3.3):
the kernel is FCN's bilinear filter, the output is aligned as bilinear interpolation aligns it (measured in pixels
on a ramp, and as a value difference on random maps), it learns, and the combinations it cannot follow are refused
in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ablations.config import ConfigError
from ablations.geometry.describe import describe, format_summary
from ablations.model import build_model
from ablations.model.upsampling import TransposedUpsampling, bilinear_kernel
from tests.conftest import tiny


def _up(y: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    with torch.no_grad():
        return TransposedUpsampling(y.shape[1], stride)(y, size)


def _bilinear(y: torch.Tensor, size: tuple[int, int], *, corners: bool = False) -> torch.Tensor:
    return F.interpolate(y, size=size, mode="bilinear", align_corners=corners)


def test_the_kernel_is_fcns_bilinear_filter_on_every_channel():
    # FCN's upsample_filt(4) (surgery.py): factor 2, centre 1.5 → [0.25, 0.75, 0.75, 0.25] per axis.
    line = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear_kernel(4), line[:, None] * line[None, :])
    layer = TransposedUpsampling(5, 16)
    conv = layer.conv
    assert (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((32, 32), (16, 16), (0, 0), 5)
    assert conv.bias is None and conv.weight.shape == (5, 1, 32, 32)
    assert torch.equal(conv.weight, bilinear_kernel(32).expand(5, 1, 32, 32))
    # Each output pixel receives two cells per axis whose weights sum to 1 (a partition of unity).
    line = bilinear_kernel(32).diagonal().sqrt()
    assert torch.allclose(line[:16] + line[16:], torch.ones(16))


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_on_a_multiple_of_the_stride_it_is_bilinear_interpolation_away_from_the_border(stride):
    n = 6
    size = (n * stride, n * stride)
    y = torch.randn(2, 3, n, n)
    up, ref = _up(y, stride, size), _bilinear(y, size)
    inner = (..., slice(stride // 2, -(stride // 2)), slice(stride // 2, -(stride // 2)))
    # Exactly bilinear (float rounding) wherever a pixel lies between two cell centres …
    assert (up - ref)[inner].abs().max() < 1e-5
    # … and only the outer s/2 pixels differ: bilinear repeats the edge cell, the transposed conv fades.
    border = (up - ref).abs()
    border[inner] = 0
    assert border.amax(dim=(-2, -1)).min() > 0.01
    # Alignment, in pixels: on a ramp (cell i holds i) the output reads the position p = (value + ½)·s − ½, as
    # F.interpolate(align_corners=False) places cell i at pixel i·s + s/2 − ½.
    ramp = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 1, n, n)
    pixels = torch.arange(size[1], dtype=torch.float32)[stride // 2 : -(stride // 2)]
    position = (_up(ramp, stride, size)[0, 0, size[0] // 2, stride // 2 : -(stride // 2)] + 0.5) * stride - 0.5
    assert torch.allclose(position, pixels, atol=1e-4)


def test_at_513_from_33_cells_it_is_half_a_pixel_from_exact_stride_16_interpolation():
    """513 = 32·16 + 1: cell i of the stride-16 map is centred on pixel 16·i (the network's convs), where
    F.interpolate(align_corners=True) puts it. The centre crop of the 544-pixel transposed output (15 pixels off
    the top and left) puts it at 16·i + ½. F.interpolate(align_corners=False), DeepLab's bilinear here, stretches
    the map by 513/528 instead: cell i at 15.55·i + 7.3, up to 7.8 pixels from either."""
    n, s, size = 33, 16, (513, 513)
    ramp = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 1, n, n)
    row = _up(ramp, s, size)[0, 0, 256]
    position = row * s + 0.5  # the pixel each output sits at, if cell i is at 16·i + ½
    assert torch.allclose(position[1:], torch.arange(1, 513, dtype=torch.float32), atol=1e-3)
    stretched = _bilinear(ramp, size)[0, 0, 256] * s + 0.5
    assert (stretched - position)[1:].abs().max() == pytest.approx(7.8, abs=0.1)
    # As values: against exact stride-16 interpolation the half-pixel shift is at most ½/16 of the largest step
    # between neighbouring cells per axis (pixel 0 aside, before cell 0's centre, where the layer fades).
    torch.manual_seed(0)
    y = torch.randn(1, 4, n, n)
    up, exact = _up(y, s, size), _bilinear(y, size, corners=True)
    steps = (y.diff(dim=-1).abs().max() + y.diff(dim=-2).abs().max()).item()
    diff = (up - exact)[..., 1:, 1:].abs()
    assert diff.max() <= steps / (2 * s) + 1e-5
    assert diff.mean() < 0.05 * y.std()  # measured 0.04·σ on N(0, 1) cells, the worst case (no smoothness)
    assert (up - _bilinear(y, size))[..., 1:, 1:].abs().mean() > 5 * diff.mean()  # the stretch is the larger


def test_a_target_the_cells_cannot_reach_is_a_clear_error():
    with pytest.raises(ValueError, match=r"reaches at most \(64, 64\) pixels, not \(96, 96\)"):
        _up(torch.zeros(1, 1, 3, 3), 16, (96, 96))


@pytest.mark.parametrize(
    "overrides",
    [
        ["head.upsample=transposed"],
        ["head.upsample=transposed", "context.preset=aspp-l"],  # v2's summed logits, no head
        ["decoder.enabled=true", "decoder.upsample=transposed", "head.upsample=transposed"],
        [
            "decoder.enabled=true",
            "decoder.upsample=transposed",
            "backbone.output_stride=8",
            "decoder.low_level=conv2+conv3",
        ],  # conv3 is at the encoder's stride: only conv3 → conv2 is learned
    ],
)
def test_logits_have_the_input_size_and_the_upsampling_learns(overrides):
    torch.manual_seed(0)
    model = build_model(tiny(*overrides))
    for size in ((37, 45), (33, 33), (96, 96)):
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    learned = [m for m in model.modules() if isinstance(m, TransposedUpsampling)]
    assert learned and all(m.conv.weight.grad is not None and m.conv.weight.grad.abs().sum() > 0 for m in learned)
    # upsample=False (train.loss_at=labels' path) is at the head's stride, whatever the upsampling.
    stride = 4 if "decoder.enabled=true" in overrides else 16 // (2 if "backbone.output_stride=8" in overrides else 1)
    assert model(torch.randn(1, 3, 64, 64), upsample=False).shape == (1, 5, 64 // stride, 64 // stride)


def test_the_decoder_learns_one_upsampling_per_level_that_resizes():
    model = build_model(tiny("decoder.enabled=true", "decoder.upsample=transposed", "decoder.low_level=conv2+conv3"))
    assert {k: m.stride for k, m in model.decoder.upsample.items()} == {"conv3": 2, "conv2": 2}
    assert model.decoder.upsampling() == [("conv3", 2, "transposed"), ("conv2", 2, "transposed")]
    model = build_model(tiny("decoder.enabled=true", "backbone.output_stride=8", "decoder.low_level=conv2+conv3"))
    assert model.decoder.upsampling() == [("conv2", 2, "bilinear")] and not model.decoder.upsample
    # Per-channel (depthwise) over the ASPP's 16 channels: 16 × (2·4)² weights.
    model = build_model(tiny("decoder.enabled=true", "decoder.upsample=transposed"))
    assert sum(p.numel() for p in model.decoder.upsample.parameters()) == 16 * 8 * 8
    assert model.upsampler is None


def test_at_initialisation_the_network_is_the_bilinear_one_away_from_the_border():
    """Built without drawing random numbers, the learned upsampling leaves every other weight as the bilinear
    network's (same seed), so the two networks differ only in the outer s/2 pixels at initialisation."""
    nets = {}
    for mode in ("bilinear", "transposed"):
        torch.manual_seed(0)
        nets[mode] = build_model(tiny(f"head.upsample={mode}")).eval()
    shared = nets["bilinear"].state_dict()
    assert all(torch.equal(v, nets["transposed"].state_dict()[k]) for k, v in shared.items())
    assert sum(p.numel() for p in nets["transposed"].upsampler.parameters()) == 5 * 32 * 32  # classes × (2·16)²
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a, b = nets["bilinear"](x), nets["transposed"](x)
    assert (a - b)[..., 8:-8, 8:-8].abs().max() < 1e-4 and (a - b).abs().max() > 1e-3


def test_the_network_refuses_to_re_plan_a_learned_upsampling_for_another_output_stride():
    model = build_model(tiny("head.upsample=transposed"))
    with pytest.raises(ValueError, match="stride-16 transposed conv; evaluate it at output stride 16"):
        model.set_output_stride(8)
    assert model.output_stride == 16
    with model.at_output_stride(16):  # the training stride itself is fine
        pass
    # With the decoder the logits are at stride 4 whatever the encoder's: a learned head upsampling follows.
    model = build_model(tiny("head.upsample=transposed", "decoder.enabled=true"))
    with model.at_output_stride(8):
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["head.upsample=cubic"], "head.upsample='cubic': allowed ['bilinear', 'transposed']"),
        (["decoder.upsample=nearest"], "decoder.upsample='nearest': allowed ['bilinear', 'transposed']"),
        (["decoder.upsample=transposed"], "decoder.upsample='transposed': used by decoder.enabled=true only"),
        (
            ["head.upsample=transposed", "eval.output_stride=8"],
            "head.upsample='transposed': a learned transposed conv (×16), trained at backbone.output_stride=16, cannot "
            "upsample the eval.output_stride=8 map",
        ),
        (
            ["decoder.enabled=true", "decoder.upsample=transposed", "eval.output_stride=8"],
            "decoder.upsample='transposed': a learned transposed conv (from stride 16",
        ),
        (
            ["head.upsample=transposed", "train.loss_at=labels", "data.crop_size=96"],
            "head.upsample='transposed': train.loss_at=labels takes the loss before the logits are upsampled",
        ),
    ],
)
def test_combinations_it_cannot_follow_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as error:
        tiny(*overrides)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_what_stays_allowed():
    tiny("head.upsample=transposed", "decoder.enabled=true", "eval.output_stride=8")  # logits at stride 4
    tiny("decoder.enabled=true", "decoder.upsample=transposed", "train.loss_at=labels", "data.crop_size=96")


def test_describe_prints_the_upsampling():
    text = format_summary(describe(tiny("head.upsample=transposed"), (96, 96)))
    assert "logits ×16 learned (per-channel transposed conv, kernel 2×factor, bilinear init; FCN)" in text
    assert "upsampler 0.01 M" in text
    config = tiny("decoder.enabled=true", "decoder.upsample=transposed")
    summary = describe(config, (96, 96))
    assert summary["decoder"]["upsampling"] == [["conv2", 4, "transposed"]]
    assert summary["upsampling"] == {"mode": "bilinear", "factor": 4}
    text = format_summary(summary)
    assert "conv2 ×4 learned" in text and "logits ×4 bilinear to the input's size" in text
