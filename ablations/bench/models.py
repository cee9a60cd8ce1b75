"""The models benchmarked: ours as built and as evaluated, the peers' DeepLabs with the overrides that make ours
the same network, and the standard configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ablations.config import ExperimentConfig


def build_ours(config: ExperimentConfig) -> nn.Module:
    from ablations.model import build_model

    torch.manual_seed(0)
    return build_model(config, load_weights=config.backbone.weights is not None)


class EvalProtocol(nn.Module):
    """A model evaluated the way its config says: at ``eval.output_stride`` (rates rescaled), over
    ``eval.scales`` and, with ``eval.flip``, their mirror images, softmax averaged."""

    def __init__(self, model: nn.Module, scales: Sequence[float], flip: bool) -> None:
        super().__init__()
        self.model, self.scales, self.flip = model, tuple(scales), flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ablations.training.inference import predict_probabilities

        return predict_probabilities(self.model, x, scales=self.scales, flip=self.flip)


def build_evaluated(config: ExperimentConfig) -> nn.Module:
    """Our model as its config evaluates it (eval output stride, scales, flip)."""
    model = build_ours(config)
    model.set_output_stride(config.eval_output_stride)
    e = config.eval
    return EvalProtocol(model, e.scales, e.flip) if tuple(e.scales) != (1.0,) or e.flip else model


class LogitsOnly(nn.Module):
    """torchvision's segmentation models return ``{"out": logits, …}``; this returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


# --------------------------------------------------------------------------------------------------------------
# Peers and the standard configs

# Each peer with the overrides that make our config the same network (same encoder, output stride, first-unit
# convention, rates, pooling-branch norm, head); the table shows both multiply-add counts, so the match is checked.
_TORCHVISION_DEEPLABV3 = {
    "backbone.name": "resnet50",
    "backbone.output_stride": 8,
    "backbone.first_unit": "previous",
    "context.kind": "aspp",
    "context.preset": "v3",
    "context.pooling_norm": "batch",
    "context.dropout": 0.5,
    "decoder.enabled": False,
    "head.style": "torchvision",
}
PEERS: dict[str, dict[str, Any]] = {
    "torchvision deeplabv3_resnet50": _TORCHVISION_DEEPLABV3,
    # smp dilates every conv of a dilated stage, the first unit's included, at the full rate (smp #183).
    "smp DeepLabV3 (resnet50)": {**_TORCHVISION_DEEPLABV3, "backbone.first_unit": "full"},
    "smp DeepLabV3Plus (resnet50)": {
        "backbone.name": "resnet50",
        "backbone.output_stride": 16,
        "backbone.first_unit": "full",
        "context.kind": "aspp",
        "context.rates": [12, 24, 36],
        "context.reference_output_stride": 16,
        "context.separable": True,
        "context.pooling_norm": "batch",
        "context.dropout": 0.5,
        "decoder.enabled": True,
        "decoder.low_level_channels": 48,
        "decoder.convs": 1,
        "decoder.separable": True,
        "head.style": "deeplab",
    },
}


def build_peer(name: str, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("torchvision"):
        from torchvision.models.segmentation import deeplabv3_resnet50

        return LogitsOnly(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes))
    import segmentation_models_pytorch as smp

    if name.startswith("smp DeepLabV3Plus"):
        return smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=num_classes)
    return smp.DeepLabV3(encoder_name="resnet50", encoder_weights=None, classes=num_classes)


STANDARD_CONTEXTS = {
    "ASPP v3": {"context.kind": "aspp", "context.preset": "v3"},
    "LargeFOV": {"context.kind": "largefov", "context.merge": "concat"},  # features (256), so a decoder can follow
}


def standard_configs() -> list[tuple[str, dict[str, Any]]]:
    """ResNet-50, 21 classes: output stride 8/16/32 × {ASPP v3 with image pooling, LargeFOV (one 3×3 at rate 12
    @ OS 8, rescaled with the stride)} × decoder off / on (48 low-level channels)."""
    configs = []
    for output_stride in (8, 16, 32):
        for context, overrides in STANDARD_CONTEXTS.items():
            for decoder in (False, True):
                label = f"OS {output_stride} · {context} · {'decoder 48' if decoder else 'no decoder'}"
                configs.append(
                    (
                        label,
                        {
                            "backbone.name": "resnet50",
                            "backbone.output_stride": output_stride,
                            **overrides,
                            "decoder.enabled": decoder,
                            "head.num_classes": 21,
                        },
                    )
                )
    return configs
