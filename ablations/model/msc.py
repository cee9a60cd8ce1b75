"""DeepLab v1's multi-scale features, "MSc" (arXiv:1412.7062 §4, "multi-scale prediction"; Table 1: +1.5 mIoU
for DeepLab, +2.0 for DeepLab-LargeFOV).

A two-layer MLP — 128 3×3 filters, then 128 1×1 filters — on the input image and on the output of each of the
first four max-pools of VGG-16; their 5 × 128 = 640 channels join the last layer's features before the softmax.
A 1×1 classifier on a concatenation is the sum of 1×1 classifiers on its parts, so each branch here ends in its
own 1×1 classifier and its logits are added to the network's: the same function, whichever head (v2's summed
fc8s or a 1×1 head) the network has. Each branch's 3×3 conv strides down to the output stride (at OS 8: 8 on the
input, 4 on pool1, 2 on pool2, 1 on pool3 and pool4), re-planned with the output stride. v1 adds the branches to a
trained network and trains only them; here they train with the rest (one run per design point).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

TAPS = ("input", "pool1", "pool2", "pool3", "pool4")


class MultiScaleFeatures(nn.Module):
    """The five MSc branches: ``in_channels`` maps each tap of :data:`TAPS` to its channels; ``forward`` takes the
    backbone's feature dict (with those taps) and returns the branches' summed logits at the output stride."""

    def __init__(self, in_channels: Mapping[str, int], num_classes: int, *, channels: int = 128, dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleDict(
            {
                tap: nn.Sequential(
                    nn.Conv2d(in_channels[tap], channels, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                    nn.Conv2d(channels, channels, 1),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                    nn.Conv2d(channels, num_classes, 1),
                )
                for tap in TAPS
            }
        )

    def set_strides(self, tap_strides: Mapping[str, int], output_stride: int) -> None:
        """Each branch's first conv strides from its tap's stride to ``output_stride``."""
        for tap, branch in self.branches.items():
            if output_stride % tap_strides[tap]:
                raise ValueError(f"MSc tap {tap} (stride {tap_strides[tap]}) cannot reach stride {output_stride}")
            step = output_stride // tap_strides[tap]
            branch[0].stride = (step, step)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = None
        for tap, branch in self.branches.items():
            y = branch(features[tap])
            out = y if out is None else out + y
        return out
