"""Context modules that sit on the backbone's last feature map.

* :class:`AtrousPyramid` — DeepLab v3 ASPP (arXiv:1706.05587 §3.3): a 1×1 branch, one 3×3 atrous branch per
  rate and optionally the image-level branch, concatenated and projected by a 1×1 conv. ``topology="serial"``
  chains the atrous branches instead of running them side by side.
* :class:`SummedAtrousHeads` — DeepLab v2 ASPP (arXiv:1606.00915 §3.3, Fig. 7): one fc6-fc7-fc8 head per rate,
  each ending in class logits, summed. With a single rate of 12 at output stride 8 and 1,024 channels this is
  DeepLab v1's LargeFOV (arXiv:1412.7062 §4.1).
* :class:`PyramidPooling` — SPP-net's spatial pyramid (arXiv:1406.4729 §2.3: 4×4, 2×2, 1×1 max-pooled bins),
  each level projected by a 1×1 conv, upsampled and concatenated with a 1×1 branch, then projected.

Serial topology, precisely: branch 1 applies its 3×3 conv (rate r1) to the backbone features; branch k applies
its conv (rate rk) to branch k−1's output. What is concatenated is the same list as in parallel — the 1×1
branch, every atrous branch's output, the image-level branch — and it is projected by the same 1×1 conv, so the
two topologies differ only in what each atrous conv reads. Branch k ≥ 2 therefore maps ``channels → channels``
rather than ``in_channels → channels``: on a 2,048-channel ResNet-50 map with 256 channels, three branches hold
14.16M weights in parallel and 5.90M in series. ``ablations describe`` reports both counts, so a comparison of the
two can state the cost honestly. Rates compound in series: its field of view is r1 + r2 + r3, not max(r).

All modules take plain arguments and expose ``set_rates`` so that evaluation can run at another output stride
with the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablations.model.layers import ConvNormAct, PooledBranch, conv3x3, set_rate


class AtrousPyramid(nn.Module):
    """v3 ASPP with concatenation and 1×1 projection; outputs ``channels`` features at the input's size."""

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        *,
        rates: Sequence[int],
        topology: str = "parallel",
        separable: bool = False,
        image_pooling: bool = True,
        pooling_norm: str = "none",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.branches = nn.ModuleList([ConvNormAct(in_channels, channels, 1)])
        for index, rate in enumerate(rates):
            reads = in_channels if topology == "parallel" or index == 0 else channels
            self.branches.append(conv3x3(reads, channels, dilation=rate, separable=separable))
        self.image_pooling = PooledBranch(in_channels, channels, norm=pooling_norm) if image_pooling else None
        n_inputs = len(self.branches) + (self.image_pooling is not None)
        self.project = nn.Sequential(*ConvNormAct(n_inputs * channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(branch.atrous.dilation[0] for branch in self.branches[1:])

    def set_rates(self, rates: Sequence[int]) -> None:
        for branch, rate in zip(self.branches[1:], rates, strict=True):
            set_rate(branch.atrous, rate)

    def paths(self) -> list[list[int]]:
        """Rates of the 3×3 convs along each path from input to output (for receptive field and gridding)."""
        rates = list(self.rates)
        if self.topology == "serial":
            return [[]] + [rates[: k + 1] for k in range(len(rates))]
        return [[]] + [[r] for r in rates]

    @property
    def is_global(self) -> bool:
        return self.image_pooling is not None

    @property
    def branch_count(self) -> int:
        """Inputs to the concatenation (1×1, atrous, image pooling) or summed heads."""
        return len(self.branches) + (self.image_pooling is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, channels, h, w)
        outputs = [self.branches[0](x)]
        previous = x
        for branch in self.branches[1:]:
            previous = branch(x if self.topology == "parallel" else previous)
            outputs.append(previous)
        if self.image_pooling is not None:
            outputs.append(self.image_pooling(x))
        return self.project(torch.cat(outputs, dim=1))


class SummedAtrousHeads(nn.Module):
    """v2 ASPP: per rate, fc6 (3×3 atrous) → fc7 (1×1) → fc8 (1×1 to classes); logits summed (TPAMI Fig. 7).

    The published VGG heads have no normalisation; these use BatchNorm like the rest of the network, so the
    ResNet backbones train the same way under every context module. ``kernel_size`` is fc6's (v2 Table 1: 7×7,
    4×4 or 3×3; DeepLab's fc6 is VGG's first fully connected layer as a convolution).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        rates: Sequence[int],
        kernel_size: int = 3,
        channels: int = 1024,
        topology: str = "parallel",
        separable: bool = False,
        image_pooling: bool = False,
        pooling_norm: str = "none",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.fc6 = nn.ModuleList()
        self.heads = nn.ModuleList()
        for index, rate in enumerate(rates):
            reads = in_channels if topology == "parallel" or index == 0 else channels
            if kernel_size == 3:
                self.fc6.append(conv3x3(reads, channels, dilation=rate, separable=separable))
            else:
                self.fc6.append(ConvNormAct(reads, channels, kernel_size, dilation=rate))
            self.heads.append(
                nn.Sequential(
                    nn.Dropout(dropout),
                    ConvNormAct(channels, channels, 1),  # fc7
                    nn.Dropout(dropout),
                    nn.Conv2d(channels, num_classes, 1),  # fc8
                )
            )
        self.image_pooling = (
            nn.Sequential(PooledBranch(in_channels, channels, norm=pooling_norm), nn.Conv2d(channels, num_classes, 1))
            if image_pooling
            else None
        )
        self.out_channels = num_classes
        self.kernel_size = kernel_size

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(fc6.atrous.dilation[0] for fc6 in self.fc6)

    def set_rates(self, rates: Sequence[int]) -> None:
        for fc6, rate in zip(self.fc6, rates, strict=True):
            set_rate(fc6.atrous, rate)

    def paths(self) -> list[list[int]]:
        """Rates of the 3×3 convs along each path from input to output (for receptive field and gridding)."""
        rates = list(self.rates)
        if self.topology == "serial":
            return [rates[: k + 1] for k in range(len(rates))]
        return [[r] for r in rates]

    @property
    def is_global(self) -> bool:
        return self.image_pooling is not None

    @property
    def branch_count(self) -> int:
        return len(self.fc6) + (self.image_pooling is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, classes, h, w)
        logits = 0
        previous = x
        for fc6, head in zip(self.fc6, self.heads, strict=True):
            previous = fc6(x if self.topology == "parallel" else previous)
            logits = logits + head(previous)
        if self.image_pooling is not None:
            logits = logits + self.image_pooling(x)
        return logits


class PyramidPooling(nn.Module):
    """SPP: max-pooled pyramid levels (default 4×4, 2×2, 1×1), concatenated with a 1×1 branch and projected."""

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        *,
        bins: Sequence[int] = (4, 2, 1),
        pooling_norm: str = "none",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvNormAct(in_channels, channels, 1)])
        for b in bins:
            # A 1×1 level sees one value per channel per image: it follows pooling_norm like the image branch.
            self.branches.append(
                PooledBranch(in_channels, channels, bins=b, pool="max", norm=pooling_norm if b == 1 else "batch")
            )
        self.project = nn.Sequential(*ConvNormAct(len(self.branches) * channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels
        self.bins = tuple(bins)
        self.rates = ()

    def set_rates(self, rates: Sequence[int]) -> None:
        if rates:
            raise ValueError("SPP has no atrous rates")

    def paths(self) -> list[list[int]]:
        return [[]]

    @property
    def is_global(self) -> bool:
        return 1 in self.bins

    @property
    def branch_count(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, channels, h, w)
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class NoContext(nn.Identity):
    """``context.kind=none``: the classifier reads the backbone features directly."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels
        self.rates = ()

    def set_rates(self, rates: Sequence[int]) -> None:
        if rates:
            raise ValueError("context.kind=none has no atrous rates")

    def paths(self) -> list[list[int]]:
        return [[]]

    is_global = False
    branch_count = 0
