"""Encoders whose every 3×3 conv samples as :func:`ablations.dilation.dilation_plan` says.

Both encoders take plain arguments, return ``{"conv2": …, "conv3": …, "out": …}`` (features at stride 4, at
stride 8 and at the output stride; the v3+ paper's names for the low-level features) and can be re-planned in
place with :meth:`set_output_stride` — same weights, new strides and rates — which is how evaluation runs at an
output stride other than training's (v3 Table 10).

* :class:`ResNet`: ResNet-18/34/50/101 with torchvision's parameter names (``conv1``, ``layer1.0.conv2``, …), so
  ImageNet state dicts from torchvision, timm or smp load as they are, plus cascaded ``block5``..``block7``
  (replicas of layer4, v3 §3.2) and a width multiplier. :meth:`ResNet.make_deformable` turns chosen 3×3 convs
  into deformable ones (``backbone.deformable``; Dai et al. 2017, Zhu et al. 2019).
* :class:`MobileNetV2`: segmentation-models-pytorch's MobileNetV2 encoder with its depthwise 3×3 convs
  re-planned the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ablations.dilation import LAYOUTS, dilation_plan
from ablations.model.deformable import DeformConv2d
from ablations.model.layers import set_rate


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """Two 3×3 convs; the first carries the stride (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = _projection(in_channels, out)

    def atrous_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def make_deformable(self, version: str) -> None:
        self.conv1 = DeformConv2d.from_conv(self.conv1, version)
        self.conv2 = DeformConv2d.from_conv(self.conv2, version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + _shortcut(self, x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, dilated) → 1×1, torchvision's "v1.5" placement of the stride (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out)

    def atrous_convs(self) -> list[nn.Conv2d]:
        return [self.conv2]

    def make_deformable(self, version: str) -> None:
        self.conv2 = DeformConv2d.from_conv(self.conv2, version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + _shortcut(self, x))


def _projection(in_channels: int, out_channels: int) -> nn.Sequential | None:
    if in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def _shortcut(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    if block.downsample is not None:
        return block.downsample(x)
    stride = block.atrous_convs()[0].stride[0]
    # An identity shortcut of a strided unit subsamples, as TF's resnet_utils.subsample does (cascaded blocks).
    return x[:, :, ::stride, ::stride] if stride > 1 else x


_RESNET_BLOCKS = {"resnet18": BasicBlock, "resnet34": BasicBlock, "resnet50": Bottleneck, "resnet101": Bottleneck}


class _Planned(nn.Module):
    """Shared plan bookkeeping: ``stages`` maps a stage name to its units, each unit to its 3×3 convs."""

    name: str

    def _init_plan(self, *, output_stride, multi_grid, cascade, hdc, first_unit) -> None:
        self.layout = LAYOUTS[self.name]
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        self.cascade = cascade
        self.hdc = {k: tuple(v) for k, v in (hdc or {}).items()}
        self.first_unit = first_unit
        self.set_output_stride(output_stride)

    def stage_units(self) -> dict[str, Sequence[Sequence[nn.Conv2d]]]:
        raise NotImplementedError

    def _after_plan(self) -> None:
        """Hook for state that follows the planned strides (ResNet's projection shortcuts)."""

    def set_output_stride(self, output_stride: int) -> None:
        """Re-plan every 3×3 conv for ``output_stride``; the weights stay as they are."""
        plan = dilation_plan(
            self.layout,
            output_stride=output_stride,
            multi_grid=self.multi_grid,
            cascade=self.cascade,
            hdc=self.hdc,
            first_unit=self.first_unit,
        )
        stages = self.stage_units()
        for stage in plan:
            for conv_plan in stage.convs:
                conv = stages[stage.name][conv_plan.unit][conv_plan.conv]
                conv.stride = (conv_plan.stride, conv_plan.stride)
                set_rate(conv, conv_plan.dilation)
        self._after_plan()
        self.output_stride = output_stride
        self.plan = plan

    def conv_table(self) -> list[dict[str, int | str]]:
        """The 3×3 convs of the residual stages as they are now in the modules (not as planned)."""
        rows = []
        for block, units in self.stage_units().items():
            for unit, convs in enumerate(units):
                for index, conv in enumerate(convs):
                    rows.append(
                        {
                            "block": block,
                            "unit": unit,
                            "conv": index,
                            "stride": conv.stride[0],
                            "dilation": conv.dilation[0],
                        }
                    )
                    if isinstance(conv, DeformConv2d):  # rigid rows keep their keys
                        rows[-1]["deformable"] = conv.version
        return rows


class ResNet(_Planned):
    """ResNet-18/34/50/101 (He et al. 2016) with the dilation plan applied and optional cascaded blocks.

    Args:
        name: ``resnet18`` | ``resnet34`` | ``resnet50`` | ``resnet101``.
        width: channel multiplier (1.0 = the published network).
        output_stride, multi_grid, cascade, hdc, first_unit: see :func:`ablations.dilation.dilation_plan`.
    """

    def __init__(
        self, name: str, *, width=1.0, output_stride=16, multi_grid=None, cascade=0, hdc=None, first_unit="full"
    ):
        super().__init__()
        self.name = name
        block = _RESNET_BLOCKS[name]
        units = LAYOUTS[name].units
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        self.stage_names = [f"layer{i + 1}" for i in range(4)] + [f"block{i + 5}" for i in range(cascade)]
        planes_per_stage = [64, 128, 256, 512] + [512] * cascade
        units_per_stage = list(units) + [units[3]] * cascade
        channels = []
        for stage_name, planes, n_units in zip(self.stage_names, planes_per_stage, units_per_stage, strict=True):
            planes = scaled(planes, width)
            layer = nn.Sequential()
            for _ in range(n_units):
                layer.append(block(in_channels, planes))
                in_channels = planes * block.expansion
            self.add_module(stage_name, layer)
            channels.append(in_channels)
        self.channels = {"conv2": channels[0], "conv3": channels[1], "out": channels[-1]}
        self._init_weights()
        self._init_plan(
            output_stride=output_stride, multi_grid=multi_grid, cascade=cascade, hdc=hdc, first_unit=first_unit
        )

    def _init_weights(self) -> None:
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_units(self) -> dict[str, Sequence[Sequence[nn.Conv2d]]]:
        return {name: [unit.atrous_convs() for unit in getattr(self, name)] for name in self.stage_names}

    def _after_plan(self) -> None:
        for name in self.stage_names:
            for unit in getattr(self, name):
                if unit.downsample is not None:  # the projection strides with the unit's first 3×3 conv
                    unit.downsample[0].stride = unit.atrous_convs()[0].stride

    def stem_path(self) -> list[tuple[int, int, int]]:
        """(kernel, stride, dilation) of the stem's layers, for the receptive field."""
        return [(7, 2, 1), (3, 2, 1)]

    def make_deformable(self, stages: Mapping[str, int | None], version: str) -> None:
        """Turn the 3×3 convs of ``stages`` into deformable convs of ``version`` (``v1``: offsets, Dai et al.,
        ICCV 2017; ``v2``: offsets and modulation, Zhu et al., CVPR 2019), in place: ``{stage: k}`` converts the
        last ``k`` units of the stage (``None``: all of them), every 3×3 conv of a unit (a bottleneck's conv2, both
        convs of a basic block). Each keeps its weights, stride and planned rate (deformable + atrous, as Dai et
        al. use in res5), starts with zero offsets (and unit modulation), so the network computes what it did
        before, and :meth:`set_output_stride` re-rates it like any conv. Call it after loading pretrained weights
        or before: the names of the convs' weights do not change, and the offset predictors are left out of the
        weights a state dict must hold."""
        for stage, last in stages.items():
            if stage not in self.stage_names:
                raise ValueError(f"deformable stage {stage!r}: this encoder has {self.stage_names}")
            units = list(getattr(self, stage))
            if last is not None and not 1 <= last <= len(units):
                raise ValueError(f"deformable {stage}[-{last}:]: the stage has {len(units)} units")
            for unit in units[len(units) - (last or len(units)) :]:
                unit.make_deformable(version)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C, H/4, W/4)
        features = {}
        for index, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if index == 0:
                features["conv2"] = x  # (B, C, H/4, W/4): v3+'s "Conv2" low-level features
            elif index == 1:
                features["conv3"] = x  # (B, C, H/8, W/8)
        features["out"] = x  # (B, C, H/os, W/os)
        return features

    def load_pretrained(self, weights: str) -> None:
        state = torchvision_state(self.name, weights)
        _load_into(self, state, weights, optional_prefixes=tuple(f"block{i}." for i in (5, 6, 7)))


_MOBILENET_STAGES = {"layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14), "layer4": (14, 18)}  # features[a:b]


class MobileNetV2(_Planned):
    """MobileNetV2 (Sandler et al. 2018) from segmentation-models-pytorch, its depthwise convs re-planned.

    Stages: ``layer1`` = features[2:4] (stride 4), ``layer2`` = [4:7] (8), ``layer3`` = [7:14] (16),
    ``layer4`` = [14:18] (32, then the final 1×1 conv features[18]). No cascaded blocks.
    """

    def __init__(
        self,
        name="mobilenet_v2",
        *,
        width=1.0,
        output_stride=16,
        multi_grid=None,
        cascade=0,
        hdc=None,
        first_unit="full",
    ):
        super().__init__()
        from segmentation_models_pytorch.encoders.mobilenet import MobileNetV2Encoder

        self.name = name
        self.encoder = MobileNetV2Encoder(out_channels=[], depth=5, width_mult=width)
        features = self.encoder.features
        self.channels = {
            "conv2": features[3].out_channels,
            "conv3": features[6].out_channels,
            "out": features[18].out_channels,
        }
        self._init_plan(
            output_stride=output_stride, multi_grid=multi_grid, cascade=cascade, hdc=hdc, first_unit=first_unit
        )

    def stage_units(self) -> dict[str, Sequence[Sequence[nn.Conv2d]]]:
        features = self.encoder.features
        return {
            name: [[_depthwise(features[i])] for i in range(start, stop)]
            for name, (start, stop) in _MOBILENET_STAGES.items()
        }

    def stem_path(self) -> list[tuple[int, int, int]]:
        return [(3, 2, 1), (3, 1, 1)]  # features[0] conv 3×3/2, features[1] depthwise 3×3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for index, module in enumerate(self.encoder.features):
            x = module(x)
            if index == 3:
                features["conv2"] = x  # (B, C, H/4, W/4)
            elif index == 6:
                features["conv3"] = x  # (B, C, H/8, W/8)
        features["out"] = x  # (B, C, H/os, W/os)
        return features

    def load_pretrained(self, weights: str) -> None:
        if weights == "imagenet":
            from segmentation_models_pytorch.encoders import get_encoder

            encoder = _fetch(
                lambda: get_encoder("mobilenet_v2", weights="imagenet"), "smp mobilenet_v2 ImageNet weights"
            )
            state = encoder.state_dict()
        else:
            state = _read_state_dict(weights)
        _load_into(self.encoder, state, weights)


def _depthwise(unit: nn.Module) -> nn.Conv2d:
    return next(m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


BACKBONES = {
    "resnet18": ResNet,
    "resnet34": ResNet,
    "resnet50": ResNet,
    "resnet101": ResNet,
    "mobilenet_v2": MobileNetV2,
}


class WeightsError(ValueError):
    """Pretrained weights that cannot be had or do not fit; names the source and what is wrong."""


def _fetch(load, what: str):
    try:
        return load()
    except Exception as error:
        raise WeightsError(
            f"backbone.weights='imagenet': could not load the {what} ({type(error).__name__}: {error}). "
            "Without network access, download them once elsewhere and set backbone.weights to the file's path."
        ) from None


def torchvision_state(name: str, weights: str) -> Mapping[str, torch.Tensor]:
    """``backbone.weights`` as a state dict: torchvision's ImageNet weights of ``name`` for ``imagenet``, else the
    file the value names."""
    if weights != "imagenet":
        return _read_state_dict(weights)
    import torchvision

    enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    return _fetch(lambda: enum.get_state_dict(progress=False), f"torchvision {name} ImageNet weights")


def _read_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"backbone.weights={path!r}: no such file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"backbone.weights={path!r}: not a PyTorch state dict ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, optional_prefixes=()) -> None:
    """Load an encoder state dict, tolerating the usual wrappers and classifier heads, nothing else."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith(("fc.", "classifier.")):
            cleaned[key] = value
    own = module.state_dict()
    # A deformable conv's offset predictor is not in an ImageNet state dict; it starts at zero (rigid sampling).
    offsets = {
        f"{name}.offset.{param}"
        for name, m in module.named_modules()
        if isinstance(m, DeformConv2d)
        for param in ("weight", "bias")
    }
    missing = [k for k in own if k not in cleaned and not k.startswith(optional_prefixes) and k not in offsets]
    unexpected = [k for k in cleaned if k not in own]
    wrong = [k for k in cleaned if k in own and cleaned[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"backbone.weights={source!r}: does not fit this encoder (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    module.load_state_dict(cleaned, strict=False)
