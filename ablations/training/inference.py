"""Inference strategies of DeepLab v3 §4.3 (Tables 4 and 6): multi-scale inputs and left-right flips, with the
class probabilities (softmax) averaged over all of them, as TF DeepLab and MMSegmentation do."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` resized by ``scale`` (bilinear; each side rounded, at least 1), or themselves at scale 1."""
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fusion: str = "mean",
) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised images → ``(B, C, H, W)`` softmax at the input resolution, averaged over the
    scales and flips (``fusion="mean"``, v3) or their element-wise maximum (``"max"``, v2's MSC fusion)."""
    height, width = images.shape[-2:]
    total = None
    count = 0
    for scale in scales:
        scaled = rescale(images, scale)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            logits = model(inputs)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = logits.float().softmax(dim=1)
            if total is None:
                total = probabilities
            elif fusion == "max":
                total = torch.maximum(total, probabilities)
            else:
                total = total + probabilities
            count += 1
    return total if fusion == "max" else total / count
