"""Small building blocks shared by the context modules and the decoder. They take plain arguments only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """``batch`` | ``group`` | ``none``.

    Group norm uses at most 32 groups of at least two channels each: on a 1×1 pooled map a one-channel group
    would hold a single value and could not be normalised, which is the batch-1 failure this norm avoids.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, max(1, channels // 2)), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm {kind!r}: allowed ['batch', 'group', 'none']")


class ConvNormAct(nn.Sequential):
    """``k×k`` conv (dilated, 'same' padding, optionally in ``groups``) → norm → ReLU. Keys ``0``/``1`` mirror
    torchvision's ASPP."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        dilation: int = 1,
        norm="batch",
        groups: int = 1,
    ):
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=same_padding(kernel_size, dilation),
                dilation=dilation,
                groups=groups,
                bias=norm == "none",
            ),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )

    @property
    def atrous(self) -> nn.Conv2d:
        """The conv whose rate the plan sets."""
        return self[0]


class SeparableConvNormAct(nn.Sequential):
    """Depthwise ``k×k`` (dilated) → norm → ReLU → pointwise 1×1 → norm → ReLU.

    The norm and ReLU after the depthwise conv follow DeepLabv3+ (arXiv:1802.02611, Table 4: removing them
    costs 0.75 top-1 on ImageNet).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1, norm="batch"):
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=in_channels,
                bias=norm == "none",
            ),
            make_norm(norm, in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )

    @property
    def atrous(self) -> nn.Conv2d:
        return self[0]


def conv3x3(
    in_channels: int, out_channels: int, *, dilation: int = 1, separable: bool = False, groups: int = 1
) -> nn.Sequential:
    """A 3×3 conv → norm → ReLU: depthwise-separable (v3+ §3.2), grouped (``groups`` > 1: each of the ``groups``
    groups of output channels reads its own ``in_channels / groups`` inputs, no pointwise conv after) or standard."""
    if separable:
        if groups != 1:
            raise ValueError("a separable conv is depthwise + pointwise already; groups must be 1")
        return SeparableConvNormAct(in_channels, out_channels, 3, dilation=dilation)
    return ConvNormAct(in_channels, out_channels, 3, dilation=dilation, groups=groups)


def same_padding(kernel: int, rate: int) -> int:
    """'Same' padding of a ``kernel``×``kernel`` conv at ``rate``: half its effective size k + (k−1)(r−1) less one.
    An even effective size (an even kernel at an odd rate) has no centred padding: a ``ValueError``."""
    if (kernel - 1) * rate % 2:
        raise ValueError(
            f"a {kernel}×{kernel} conv at rate {rate} spans {kernel + (kernel - 1) * (rate - 1)} pixels, an even "
            "size with no centre; use an even rate with an even kernel"
        )
    return (kernel - 1) * rate // 2


def set_rate(conv: nn.Conv2d, rate: int) -> None:
    """Change the dilation of a conv in place, keeping 'same' padding; the weights are untouched."""
    padding = same_padding(conv.kernel_size[0], rate)
    conv.dilation = (rate, rate)
    conv.padding = (padding, padding)


class PooledBranch(nn.Sequential):
    """Average- or max-pool to ``bins×bins`` → 1×1 conv → norm → ReLU, upsampled back to the input size.

    With ``bins=1`` this is v3's image-level feature (§3.3). BatchNorm over a 1×1 map has one value per channel
    at batch size 1 and cannot train (torchvision #2151); this branch says so instead of failing inside torch.
    Keys ``1``/``2`` mirror torchvision's ``ASPPPooling``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, bins: int = 1, pool: str = "avg", norm: str = "none"):
        pooling = nn.AdaptiveAvgPool2d(bins) if pool == "avg" else nn.AdaptiveMaxPool2d(bins)
        super().__init__(
            pooling,
            nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.training and isinstance(self[2], nn.BatchNorm2d) and x.shape[0] * self.bins**2 == 1:
            raise ValueError(
                "context.pooling_norm='batch' cannot train at batch size 1: BatchNorm over a 1×1 pooled map sees "
                "one value per channel. Use context.pooling_norm='none' or 'group', or a batch of 2 or more."
            )
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)
