"""The DeepLabv3+ decoder (Chen et al., ECCV 2018, arXiv:1802.02611 §3.1, Tables 1–2).

Encoder features are upsampled to the low-level features' size, concatenated with a 1×1 projection of them
(``low_level_channels``, 48 in the paper) and refined by ``convs`` 3×3 convs of ``channels`` (two of 256 in the
paper). With ``levels=("conv3", "conv2")`` the same step runs twice, first with the stride-8 features and then
with the stride-4 ones — the U-Net-like row of Table 2.

``upsample`` is how the encoder features reach each level's size: ``bilinear`` (the paper, §3.1) or
``transposed``, FCN's learned upsampling (Long et al., CVPR 2015 §3.3): a per-channel ``ConvTranspose2d`` of stride
``encoder stride / level stride`` (×4 from OS 16 to conv2), kernel twice that, initialised to bilinear
interpolation (:class:`~ablations.model.upsampling.TransposedUpsampling`). A level already at the encoder's stride
(conv3 at OS 8) is not resized, so none is learned there. The transposed convs are built for ``output_stride``,
the training one; the model refuses to re-plan them for another (``DeepLab.set_output_stride``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ablations.model.layers import ConvNormAct, conv3x3
from ablations.model.upsampling import UPSAMPLING, TransposedUpsampling

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
        upsample: str = "bilinear",
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample={upsample!r}: allowed {list(UPSAMPLING)}")
        if upsample == "transposed" and output_stride is None:
            raise ValueError("upsample='transposed' needs the encoder's output_stride (the stride of its factor)")
        self.levels = tuple(levels)
        self.output_stride = output_stride
        self.project = nn.ModuleDict()
        self.refine = nn.ModuleDict()
        self.upsample = nn.ModuleDict()  # level → its learned upsampling (transposed only, factor ≥ 2)
        reads = in_channels
        stride = output_stride
        for level in self.levels:
            if upsample == "transposed" and stride // LEVEL_STRIDES[level] >= 2:
                self.upsample[level] = TransposedUpsampling(reads, stride // LEVEL_STRIDES[level])
            stride = LEVEL_STRIDES[level]
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

    def upsampling(self) -> list[tuple[str, int, str]]:
        """``(level, factor, "bilinear" | "transposed")`` per level that resizes its input, in order; the factors
        are read off the built transposed convs, or from ``output_stride`` for bilinear (when it is known)."""
        out, stride = [], self.output_stride
        for level in self.levels:
            if level in self.upsample:
                out.append((level, self.upsample[level].stride, "transposed"))
            elif stride is None or stride > LEVEL_STRIDES[level]:
                out.append((level, stride // LEVEL_STRIDES[level] if stride else 0, "bilinear"))
            stride = LEVEL_STRIDES[level]
        return out

    def forward(self, x: torch.Tensor, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        for level in self.levels:
            low = self.project[level](features[level])  # (B, low_level_channels, H/4, W/4) for conv2
            if level in self.upsample:
                x = self.upsample[level](x, low.shape[-2:])  # learned ×(stride ratio), centre-cropped
            else:
                x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[level](torch.cat([x, low], dim=1))
        return x
