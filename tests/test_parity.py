"""Parity with a peer: the config equivalent to torchvision's DeepLabV3-ResNet50 is that network."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from ablations import build_model, load_config
from ablations.geometry.analysis import count_macs, count_params
from ablations.model.interop import torchvision_deeplabv3_state_dict

CONFIG = Path(__file__).parents[1] / "configs" / "torchvision_deeplabv3_r50.yaml"


def _torchvision(aux: bool = False):
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=aux
    )


class _Out(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def test_same_parameters_and_logits_as_torchvision():
    ours, theirs = build_model(load_config(CONFIG)), _torchvision()
    assert count_params(ours) == count_params(theirs) == 39_638_869
    ours.load_state_dict(torchvision_deeplabv3_state_dict(theirs.state_dict()), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 97, 113)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x)["out"], rtol=1e-5, atol=1e-5)


def test_torchvision_weights_with_aux_head_map_too():
    state = torchvision_deeplabv3_state_dict(_torchvision(aux=True).state_dict())
    assert not any(k.startswith("aux") for k in state)
    build_model(load_config(CONFIG)).load_state_dict(state, strict=True)


def test_macs_counter_reproduces_torchvision_published_ops():
    with torch.device("meta"):
        with_aux = _Out(_torchvision(aux=True))
        without_aux = _Out(_torchvision())
        ours = build_model(load_config(CONFIG))
    # DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["_ops"] == 178.722 (GMACs at 520×520, aux head included)
    assert round(count_macs(with_aux, (520, 520)) / 1e9, 3) == 178.722
    assert count_macs(ours, (520, 520)) == count_macs(without_aux, (520, 520))
