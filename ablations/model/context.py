"""Context modules that sit on the backbone's last feature map.

* :class:`AtrousPyramid` — DeepLab v3 ASPP (arXiv:1706.05587 §3.3): a 1×1 branch, one 3×3 atrous branch per
  rate and optionally the image-level branch, concatenated and projected by a 1×1 conv. ``topology="serial"``
  chains the atrous branches instead of running them side by side. With several ``rate_sets`` it is the notes'
  multi-scale ASPP; with ``nonlocal_block`` a non-local block runs first (below).
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

Grouped branches (``groups``): each 3×3 atrous conv splits its inputs and outputs into ``groups`` groups, group k
of the outputs reading group k of the inputs only, so the conv holds ``channels · in/groups · 9`` weights instead
of ``channels · in · 9``. ``groups = channels`` is the notes' GDASPP sketch: one output channel per group, each
reading ``in / channels`` inputs — "depthwise" without the pointwise conv of v3+'s separable branches (which is what
separates the two: a separable branch mixes all channels in its 1×1; a grouped one mixes only within a group,
until the projection). Deformable branches (``make_deformable``) turn every 3×3 atrous conv into a
:class:`~ablations.model.deformable.DeformConv2d` at its rate (Dai et al. 2017 use deformable + atrous in res5),
starting from zero offsets: the module computes what its rigid twin computes until the offsets learn.

Multi-scale ASPP (``rate_sets``; the notes' ``MultiScaleASPP``): one ASPP per rate set on the same map at the same
output stride — each set its own 1×1 branch and one 3×3 branch per rate (a v3 ASPP's branches, without its
projection) — and ONE image-level branch for all of them; every branch output is concatenated and one 1×1 conv
projects it to ``channels``. One set is exactly :class:`AtrousPyramid` with those ``rates`` (the same modules, in
the same order, under the same names). ``rates`` and ``set_rates`` list the 3×3 branches of every set, set after
set, so the model re-rates all sets at another output stride exactly as it re-rates one.

Non-local context (:mod:`ablations.model.nonlocal_block`, Wang et al. CVPR 2018): :class:`NonLocalContext` is the
block and a 1×1 projection to ``channels`` in place of the ASPP (``context.kind=nonlocal``);
``AtrousPyramid(nonlocal_block=…)`` runs the block on the backbone's map before the ASPP reads it
(``context.kind=aspp+nonlocal``). The block is the identity at initialisation, so aspp+nonlocal starts as the
ASPP alone.

All modules take plain arguments and expose ``set_rates`` so that evaluation can run at another output stride
with the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablations.model.deformable import DeformConv2d
from ablations.model.layers import ConvNormAct, PooledBranch, conv3x3, set_rate
from ablations.model.nonlocal_block import NonLocalBlock


class AtrousPyramid(nn.Module):
    """v3 ASPP with concatenation and 1×1 projection; outputs ``channels`` features at the input's size.

    ``rates`` (one ASPP) or ``rate_sets`` (several sharing the image-level branch and the projection: multi-scale
    ASPP); ``groups`` for the 3×3 atrous convs; ``nonlocal_block``, a module run on the input first (aspp+nonlocal).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        *,
        rates: Sequence[int] | None = None,
        rate_sets: Sequence[Sequence[int]] | None = None,
        topology: str = "parallel",
        separable: bool = False,
        groups: int = 1,
        image_pooling: bool = True,
        pooling_norm: str = "none",
        dropout: float = 0.1,
        nonlocal_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (rates is None) == (rate_sets is None):
            raise ValueError("give rates (one ASPP) or rate_sets (multi-scale ASPP), not both or neither")
        sets = [tuple(rates)] if rates is not None else [tuple(r) for r in rate_sets]
        self.topology = topology
        self.attention = nonlocal_block  # runs on the input before every branch (aspp+nonlocal)
        # Branches of every set, set after set: its 1×1 branch, then one 3×3 atrous branch per rate.
        self.branches = nn.ModuleList()
        self.set_sizes = tuple(len(r) for r in sets)
        for set_rates in sets:
            self.branches.append(ConvNormAct(in_channels, channels, 1))
            for index, rate in enumerate(set_rates):
                reads = in_channels if topology == "parallel" or index == 0 else channels
                self.branches.append(conv3x3(reads, channels, dilation=rate, separable=separable, groups=groups))
        self.image_pooling = PooledBranch(in_channels, channels, norm=pooling_norm) if image_pooling else None
        n_inputs = len(self.branches) + (self.image_pooling is not None)
        self.project = nn.Sequential(*ConvNormAct(n_inputs * channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels
        self.groups = groups

    def _sets(self) -> list[tuple[nn.Module, list[nn.Module]]]:
        """``[(1×1 branch, [3×3 atrous branches]) per rate set]``."""
        out, index = [], 0
        for size in self.set_sizes:
            out.append((self.branches[index], list(self.branches[index + 1 : index + 1 + size])))
            index += 1 + size
        return out

    def atrous_branches(self) -> list[nn.Module]:
        """The 3×3 atrous branches of every set, set after set (the order of ``rates`` and ``set_rates``)."""
        return [branch for _, atrous in self._sets() for branch in atrous]

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(branch.atrous.dilation[0] for branch in self.atrous_branches())

    @property
    def rate_sets(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(b.atrous.dilation[0] for b in atrous) for _, atrous in self._sets())

    def set_rates(self, rates: Sequence[int]) -> None:
        for branch, rate in zip(self.atrous_branches(), rates, strict=True):
            set_rate(branch.atrous, rate)

    def make_deformable(self, version: str) -> None:
        """Every 3×3 atrous conv becomes its deformable twin (same weights and rate, zero offsets)."""
        for branch in self.atrous_branches():
            branch[0] = DeformConv2d.from_conv(branch[0], version)

    def paths(self) -> list[list[int]]:
        """Rates of the 3×3 convs along each path from input to output (for receptive field and gridding)."""
        paths: list[list[int]] = [[]]
        for rates in self.rate_sets:
            if self.topology == "serial":
                paths += [list(rates[: k + 1]) for k in range(len(rates))]
            else:
                paths += [[r] for r in rates]
        return paths

    @property
    def is_global(self) -> bool:
        return self.image_pooling is not None or self.attention is not None

    @property
    def branch_count(self) -> int:
        """Inputs to the concatenation (1×1, atrous, image pooling) or summed heads."""
        return len(self.branches) + (self.image_pooling is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, channels, h, w)
        if self.attention is not None:
            x = self.attention(x)  # (B, C_in, h, w): every position now reads every other
        outputs = []
        for pointwise, atrous in self._sets():
            outputs.append(pointwise(x))
            previous = x
            for branch in atrous:
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
        groups: int = 1,
        image_pooling: bool = False,
        pooling_norm: str = "none",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.groups = groups
        self.fc6 = nn.ModuleList()
        self.heads = nn.ModuleList()
        for index, rate in enumerate(rates):
            reads = in_channels if topology == "parallel" or index == 0 else channels
            if kernel_size == 3:
                self.fc6.append(conv3x3(reads, channels, dilation=rate, separable=separable, groups=groups))
            else:
                self.fc6.append(ConvNormAct(reads, channels, kernel_size, dilation=rate, groups=groups))
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

    def atrous_branches(self) -> list[nn.Module]:
        """The fc6 of every head (its ``atrous`` is the conv the rates set)."""
        return list(self.fc6)

    def make_deformable(self, version: str) -> None:
        """Every fc6 (the atrous conv of each head) becomes its deformable twin (same weights and rate)."""
        for fc6 in self.fc6:
            fc6[0] = DeformConv2d.from_conv(fc6[0], version)

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


class NonLocalContext(nn.Module):
    """``context.kind=nonlocal``: a non-local block (Wang et al. CVPR 2018) on the backbone's map, then a 1×1
    conv + BN + ReLU to ``channels`` and dropout, in place of the ASPP. No atrous rates; every position reads
    every other (``is_global``)."""

    def __init__(
        self, in_channels: int, channels: int = 256, *, nonlocal_channels: int | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.attention = NonLocalBlock(in_channels, nonlocal_channels)
        self.project = nn.Sequential(*ConvNormAct(in_channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels
        self.rates = ()

    def set_rates(self, rates: Sequence[int]) -> None:
        if rates:
            raise ValueError("context.kind=nonlocal has no atrous rates")

    def paths(self) -> list[list[int]]:
        return [[]]

    is_global = True
    branch_count = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, channels, h, w)
        return self.project(self.attention(x))


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
