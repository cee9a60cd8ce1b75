"""Weights from peers' models, mapped onto ours by name.

:func:`torchvision_deeplabv3_state_dict` renames a ``torchvision.models.segmentation.deeplabv3_resnet50/101``
state dict (COCO-trained ones included) for the config that reproduces it::

    backbone: {name: resnet50, output_stride: 8, first_unit: previous}
    context:  {kind: aspp, preset: v3, pooling_norm: batch, dropout: 0.5}
    head:     {style: torchvision}
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_TORCHVISION_RULES = (
    (r"^backbone\.", "backbone."),
    (r"^classifier\.0\.convs\.(\d+)\.", None),  # handled below: the last ASPP entry is the pooling branch
    (r"^classifier\.0\.project\.", "context.project."),
    (r"^classifier\.1\.", "head.refine.0."),
    (r"^classifier\.2\.", "head.refine.1."),
    (r"^classifier\.4\.", "head.classifier."),
)


def torchvision_deeplabv3_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key for each of torchvision's DeepLabV3 keys; the auxiliary FCN head (``aux_classifier``) is dropped."""
    branches = {int(m.group(1)) for k in state if (m := re.match(r"^classifier\.0\.convs\.(\d+)\.", k))}
    pooling = max(branches) if branches else None
    renamed = {}
    for key, value in state.items():
        if key.startswith("aux_classifier."):
            continue
        match = re.match(r"^classifier\.0\.convs\.(\d+)\.(.*)$", key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            new = f"context.image_pooling.{rest}" if index == pooling else f"context.branches.{index}.{rest}"
        else:
            for pattern, replacement in _TORCHVISION_RULES:
                if replacement is not None and re.match(pattern, key):
                    new = re.sub(pattern, replacement, key)
                    break
            else:
                raise KeyError(f"torchvision DeepLabV3 key {key!r} has no counterpart here")
        renamed[new] = value
    return renamed
