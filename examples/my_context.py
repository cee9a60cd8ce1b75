"""A custom context module: strip pooling (Hou et al., "Strip Pooling", CVPR 2020, arXiv:2003.13328 §3.1).

Use it with ``context.kind: custom`` and ``context.target: examples.my_context:StripPooling`` (from the repository
root); ``examples/my_context_study.yaml`` sweeps it against v3's ASPP. The contract: docs/custom-modules.md.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: tuple[int, int]) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), nn.BatchNorm2d(cout))


class StripPooling(nn.Module):
    """Each row and each column of the (reduced) map averaged to a strip, a 3-tap conv along the strip, the two
    broadcast back and summed into a sigmoid gate on the features; the features and the gated features are
    concatenated and projected to ``out_channels``. No atrous rates: ``rates`` is accepted and unused."""

    is_global = True  # every output reads the whole height and width of the map (its row and column strips)
    branch_count = 2  # the features and the strip-gated features

    def __init__(self, in_channels: int, out_channels: int, rates=(), output_stride: int = 16, reduction: int = 4):
        super().__init__()
        mid = max(1, in_channels // reduction)
        self.reduce = nn.Sequential(*conv_bn(in_channels, mid, (1, 1)), nn.ReLU(inplace=True))
        self.along_h = conv_bn(mid, mid, (3, 1))  # on the (h × 1) strip of row means
        self.along_w = conv_bn(mid, mid, (1, 3))  # on the (1 × w) strip of column means
        self.gate = nn.Conv2d(mid, mid, 1)
        self.project = nn.Sequential(*conv_bn(2 * mid, out_channels, (1, 1)), nn.ReLU(inplace=True))

    def paths(self) -> list[list[int]]:
        return [[], [1]]  # the 1×1 path, and a 3-tap rate-1 conv along each strip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_channels, h, w) → (B, out_channels, h, w)
        x = self.reduce(x)
        rows = self.along_h(x.mean(dim=3, keepdim=True))  # (B, mid, h, 1)
        cols = self.along_w(x.mean(dim=2, keepdim=True))  # (B, mid, 1, w)
        gate = torch.sigmoid(self.gate(torch.relu(rows + cols)))  # broadcast to (B, mid, h, w)
        return self.project(torch.cat([x, x * gate], dim=1))
