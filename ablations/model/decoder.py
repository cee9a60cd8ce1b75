"""The DeepLabv3+ decoder (Chen et al., ECCV 2018, arXiv:1802.02611 §3.1, Tables 1–2).

Encoder features are upsampled to the low-level features' size, concatenated with a 1×1 projection of them
(``low_level_channels``, 48 in the paper) and refined by ``convs`` 3×3 convs of ``channels`` (two of 256 in the
paper). With ``levels=("conv3", "conv2")`` the same step runs twice, first with the stride-8 features and then
with the stride-4 ones — the U-Net-like row of Table 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ablations.model.layers import ConvNormAct, conv3x3

LEVEL_STRIDES = {"conv2": 4, "conv3": 8}  # feature stride of each low-level source


class Decoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        low_level_in: Mapping[str, int],
        *,
        levels: Sequence[str] = ("conv2",),
        low_level_channels: int = 48,
        convs: int = 2,
        channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.project = nn.ModuleDict()
        self.refine = nn.ModuleDict()
        reads = in_channels
        for level in self.levels:
            self.project[level] = ConvNormAct(low_level_in[level], low_level_channels, 1)
            layers = []
            for index in range(convs):
                layers.append(
                    conv3x3(reads + low_level_channels if index == 0 else channels, channels, separable=separable)
                )
            self.refine[level] = nn.Sequential(*layers)
            reads = channels
        self.out_channels = channels
        self.convs = convs

    def paths(self) -> list[tuple[int, int]]:
        """``(feature stride, number of 3×3 convs)`` per refinement step, in order."""
        return [(LEVEL_STRIDES[level], self.convs) for level in self.levels]

    def forward(self, x: torch.Tensor, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        for level in self.levels:
            low = self.project[level](features[level])  # (B, low_level_channels, H/4, W/4) for conv2
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[level](torch.cat([x, low], dim=1))
        return x
