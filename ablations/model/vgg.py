"""DeepLab v1/v2's VGG-16 (arXiv:1412.7062 §3.1; TPAMI arXiv:1606.00915 §4.1), re-planned like every encoder.

The convs carry torchvision's parameter names (``features.0`` … ``features.28`` for ``vgg16``; with a BatchNorm
after every conv for ``vgg16_bn``), so torchvision's ImageNet state dicts load as they are (its ``classifier.*``,
the fully connected fc6-fc8, are left out: DeepLab's fc6/fc7 are the context module's convs). The pools are
DeepLab's: 3×3 max-pools with padding 1, stride 2 while the output stride allows it, else stride 1 — so output
stride 8 (the papers' network) is pool4 and pool5 at stride 1 with conv5_1..3 at rate 2; 16 keeps pool4 and
drops pool5's stride; 32 is the plain VGG-16. Multi-grid, cascaded blocks and HDC do not apply (no residual
units) and the config refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablations.dilation import dilation_plan, tail_stride
from ablations.model.backbones import _load_into, _Planned, scaled, torchvision_state
from ablations.model.layers import set_rate

# Channels of conv1..conv5 and their conv counts (Simonyan & Zisserman 2015, configuration D).
_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")  # pool1+conv2, pool2+conv3, pool3+conv4, pool4+conv5


class VGG16(_Planned):
    """VGG-16 with DeepLab's pools; ``name`` is ``vgg16`` (no normalisation, the papers') or ``vgg16_bn``.

    Returns ``{"conv2": conv3_3 (stride 4), "conv3": conv4_3 (stride 8), "out": pool5's output}``: the features at
    strides 4 and 8 that the v3+ decoder reads, and the output-stride map the context module (fc6) reads; and the
    taps of v1's MSc branches (:mod:`ablations.model.msc`): ``input`` and ``pool1`` … ``pool4``.
    """

    def __init__(
        self, name="vgg16", *, width=1.0, output_stride=8, multi_grid=None, cascade=0, hdc=None, first_unit="full"
    ):
        super().__init__()
        self.name = name
        norm = name.endswith("_bn")
        layers: list[nn.Module] = []
        self._convs: list[nn.Conv2d] = []
        self._pools: list[nn.MaxPool2d] = []
        self._taps: dict[int, str] = {}  # index in features → the feature map returned after it
        in_channels = 3
        for stage, (channels, n_convs) in enumerate(_STAGES):
            channels = scaled(channels, width)
            for _ in range(n_convs):
                conv = nn.Conv2d(in_channels, channels, 3, padding=1)
                self._convs.append(conv)
                layers.append(conv)
                if norm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = channels
            if stage == 2:
                self._taps[len(layers) - 1] = "conv2"  # conv3_3 at stride 4
            elif stage == 3:
                self._taps[len(layers) - 1] = "conv3"  # conv4_3 at stride 8
            pool = nn.MaxPool2d(3, stride=2, padding=1)
            self._pools.append(pool)
            layers.append(pool)
            if stage < 4:
                self._taps[len(layers) - 1] = f"pool{stage + 1}"
        self.features = nn.Sequential(*layers)
        self.channels = {"conv2": scaled(256, width), "conv3": scaled(512, width), "out": in_channels, "input": 3}
        self.channels.update({f"pool{i + 1}": scaled(c, width) for i, (c, _) in enumerate(_STAGES[:4])})
        self._init_weights()
        self._init_plan(
            output_stride=output_stride, multi_grid=multi_grid, cascade=cascade, hdc=hdc, first_unit=first_unit
        )

    def _init_weights(self) -> None:
        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_units(self) -> dict[str, Sequence[Sequence[nn.Conv2d]]]:
        """conv2_1 … conv5_3, each its own unit (conv1_1..2 are the stem: stride 1, rate 1 always)."""
        units, start = {}, _STAGES[0][1]
        for name, (_, n_convs) in zip(STAGE_NAMES, _STAGES[1:], strict=True):
            units[name] = [[conv] for conv in self._convs[start : start + n_convs]]
            start += n_convs
        return units

    def set_output_stride(self, output_stride: int) -> None:
        """Re-plan for ``output_stride``: the plan's stage strides go to pool1..pool4, pool5 keeps its stride while
        the output stride allows it, every conv runs at stride 1 and at the planned rate."""
        plan = dilation_plan(
            self.layout, output_stride=output_stride, multi_grid=self.multi_grid, cascade=self.cascade, hdc=self.hdc,
            first_unit=self.first_unit,
        )  # fmt: skip
        stages = self.stage_units()
        for index, stage in enumerate(plan):
            self._pools[index].stride = stage.stride
            for conv_plan in stage.convs:
                conv = stages[stage.name][conv_plan.unit][conv_plan.conv]
                conv.stride = (1, 1)
                set_rate(conv, conv_plan.dilation)
        self._pools[-1].stride = tail_stride(self.layout, plan, output_stride)
        self.output_stride = output_stride
        self.plan = plan

    def tap_strides(self) -> dict[str, int]:
        """The stride of each MSc tap under the current plan: the input 1, pool k the product of pool1..pool k."""
        strides, total = {"input": 1}, 1
        for index, pool in enumerate(self._pools[:4]):
            total *= _one(pool.stride)
            strides[f"pool{index + 1}"] = total
        return strides

    def conv_table(self) -> list[dict[str, int | str]]:
        """The 3×3 convs of layer1..layer4 as they are now; ``stride`` is the stride of the pool that opens the
        stage (on the stage's first conv, as for the other encoders, whose first conv carries it)."""
        rows = super().conv_table()
        pools = {name: self._pools[i].stride for i, name in enumerate(STAGE_NAMES)}
        for row in rows:
            row["stride"] = pools[row["block"]] if row["unit"] == 0 else 1
        return rows

    def stem_path(self) -> list[tuple[int, int, int]]:
        return [(3, 1, 1), (3, 1, 1)]  # conv1_1, conv1_2; pool1 opens layer1

    def layer_path(self) -> list[tuple[int, int, int]]:
        """(kernel, stride, dilation) of every conv and pool in order, pool5 last (for the receptive field)."""
        return [
            (m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0], _one(m.stride), _one(m.dilation))
            for m in self.features
            if isinstance(m, nn.Conv2d | nn.MaxPool2d)
        ]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {"input": x}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._taps:
                features[self._taps[index]] = x
        features["out"] = x  # (B, C, H/os, W/os): pool5's output
        return features

    def load_pretrained(self, weights: str) -> None:
        _load_into(self, torchvision_state(self.name, weights), weights)


def _one(value) -> int:
    return value if isinstance(value, int) else value[0]
