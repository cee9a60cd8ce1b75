"""The dilation plan: output stride × multi-grid × cascade × HDC → stride and rate of every 3×3 conv.

This module is the only place in the project that computes atrous rates. It is pure Python (no torch) so
that the config can validate against it and tests can pin it without building a network.

Semantics (``../shared/design/DESIGN-SPACE.md``; DeepLab v3, arXiv:1706.05587, §3.1–3.3):

* A residual stage keeps its natural stride until the feature stride would exceed ``output_stride``; from
  then on each stage runs at stride 1 and its *base rate* is multiplied by the stride it gave up (v3 §3.1).
  OS 16 → layer4 base rate 2; OS 8 → layer3 2, layer4 4; OS 32 → no dilation. Cascaded blocks
  block5..block7 (v3 §3.2) are replicas of layer4 that would each stride by 2; at a fixed output stride their
  base rates keep doubling (OS 16: layer4..block7 = 2, 4, 8, 16).
* ``multi_grid`` multiplies the base rate of each unit of layer4 and of every cascaded block
  (v3 §3.2: "the final atrous rate … is equal to the multiplication of the unit rate and the corresponding
  rate"), as TF DeepLab and detectron2 do — not MMSegmentation's absolute rates. OS 16, (1, 2, 4) → (2, 4, 8).
* ``hdc`` gives absolute per-unit rates for a stage (Wang et al., WACV 2018, hybrid dilated convolution),
  cycled over the stage's units as the official TuSimple-DUC code cycles (1, 2, 5, 9) through res4. It
  replaces base rate × multi-grid for that stage.
* ``first_unit`` is the convention for the conv that carried the stride in the first unit of a stage whose
  stride became dilation:

  - ``"full"`` (default): it runs at the unit's full rate, like every other conv of the stage — detectron2,
    smp and TF's multi-grid units. With it, OS 16 + multi-grid (1, 2, 4) is exactly the paper's (2, 4, 8).
  - ``"previous"``: it runs at the previous stage's base rate — torchvision and timm (``previous_dilation``);
    required to reproduce torchvision's DeepLabV3 and its pretrained receptive fields.
  - ``"half"``: it runs at half the unit's rate (at least 1) — MMSegmentation's ``contract_dilation``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

RESIDUAL_STAGES = ("layer1", "layer2", "layer3", "layer4")
CASCADE_STAGES = ("block5", "block6", "block7")
FIRST_UNIT_CONVENTIONS = ("full", "previous", "half")
MAX_CASCADE = len(CASCADE_STAGES)


@dataclass(frozen=True)
class ConvPlan:
    """One 3×3 convolution of a residual unit: where it sits and how it samples."""

    block: str  # "layer1".."layer4" | "block5".."block7"
    unit: int  # index of the residual unit inside the block
    conv: int  # index of the 3×3 conv inside the unit (0 for bottlenecks; 0, 1 for basic blocks)
    stride: int
    dilation: int


@dataclass(frozen=True)
class StagePlan:
    """A stage after the plan: its stride, its rates and the feature strides around it."""

    name: str
    stride: int  # stride of the first unit (its natural stride, or 1 once that became dilation)
    base_rate: int  # rate of the stage before multi-grid / HDC (1 while the stage keeps its stride)
    in_stride: int  # feature stride entering the stage
    out_stride: int  # feature stride leaving the stage
    unit_rates: tuple[int, ...]  # rate of each unit (base × multi-grid, or the HDC schedule)
    convs: tuple[ConvPlan, ...]

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(c.dilation for c in self.convs)


@dataclass(frozen=True)
class BackboneLayout:
    """What the plan needs to know about an encoder: units per stage and where strides sit."""

    units: tuple[int, int, int, int]  # residual units in layer1..layer4
    convs_per_unit: int  # 3×3 convs per unit: 1 for bottlenecks / inverted residuals, 2 for basic blocks
    stem_stride: int  # feature stride entering layer1
    natural_strides: tuple[int, int, int, int]  # stride of layer1..layer4 without dilation
    supports_cascade: bool = True
    # VGG-16: the strides sit in max-pools, not in a stage's first conv; pool1..pool4 open layer1..layer4 and
    # pool5 (``tail_stride``) follows layer4. There are no residual units, so no multi-grid and no HDC.
    strided_pools: bool = False
    tail_stride: int = 1

    def stage_names(self, cascade: int) -> tuple[str, ...]:
        return RESIDUAL_STAGES + CASCADE_STAGES[:cascade]

    def stage_units(self, stage: str) -> int:
        if stage in CASCADE_STAGES:
            return self.units[3]
        return self.units[RESIDUAL_STAGES.index(stage)]

    def natural_output_stride(self, cascade: int) -> int:
        stride = self.stem_stride * self.tail_stride
        for s in self.natural_strides:
            stride *= s
        return stride * 2**cascade

    def valid_output_strides(self, cascade: int) -> tuple[int, ...]:
        """Powers of two from 8 to the stride the network reaches with no dilation at all."""
        top = self.natural_output_stride(cascade)
        return tuple(2**k for k in range(3, top.bit_length()) if 2**k <= top)


# ResNet-18/34 use basic blocks (two 3×3 convs, the first strided); ResNet-50/101 bottlenecks (the 3×3
# conv2 strided, torchvision's "v1.5"). The stem (7×7/2 conv + 3×3/2 max-pool) leaves stride 4.
# MobileNetV2 (torchvision layout, as smp wraps it): stages at strides 4, 8, 16, 32 are features[2:4],
# [4:7], [7:14], [14:18]; each inverted residual has one 3×3 depthwise conv, which carries the stride.
LAYOUTS: dict[str, BackboneLayout] = {
    "resnet18": BackboneLayout((2, 2, 2, 2), 2, 4, (1, 2, 2, 2)),
    "resnet34": BackboneLayout((3, 4, 6, 3), 2, 4, (1, 2, 2, 2)),
    "resnet50": BackboneLayout((3, 4, 6, 3), 1, 4, (1, 2, 2, 2)),
    "resnet101": BackboneLayout((3, 4, 23, 3), 1, 4, (1, 2, 2, 2)),
    "mobilenet_v2": BackboneLayout((2, 3, 7, 4), 1, 2, (2, 2, 2, 2), supports_cascade=False),
    # DeepLab v1/v2's VGG-16 (arXiv:1412.7062 §3.1, TPAMI §4.1): conv1_1..2 before pool1; layer1..layer4 are
    # pool1 + conv2_x, pool2 + conv3_x, pool3 + conv4_x and pool4 + conv5_x, one 3×3 conv per "unit"; pool5 ends
    # it. Output stride 8 = pool4 and pool5 at stride 1, conv5 at rate 2 (the papers' network).
    "vgg16": BackboneLayout(
        (2, 3, 3, 3), 1, 1, (2, 2, 2, 2), supports_cascade=False, strided_pools=True, tail_stride=2
    ),
    "vgg16_bn": BackboneLayout(
        (2, 3, 3, 3), 1, 1, (2, 2, 2, 2), supports_cascade=False, strided_pools=True, tail_stride=2
    ),
}


def tail_stride(layout: BackboneLayout, plan: Sequence[StagePlan], output_stride: int) -> int:
    """The stride of what follows the last stage (VGG's pool5): natural while the output stride allows it."""
    reached = plan[-1].out_stride
    return layout.tail_stride if reached * layout.tail_stride <= output_stride else 1


def multi_grid_stages(cascade: int) -> tuple[str, ...]:
    """The blocks multi-grid applies to: block4 (``layer4``) and every cascaded replica of it (v3 §3.2)."""
    return ("layer4", *CASCADE_STAGES[:cascade])


def dilation_plan(
    layout: BackboneLayout,
    *,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    cascade: int = 0,
    hdc: Mapping[str, Sequence[int]] | None = None,
    first_unit: str = "full",
) -> tuple[StagePlan, ...]:
    """Stride and dilation of every 3×3 conv of every residual unit, cascaded blocks included.

    Raises ``ValueError`` with the offending argument when the request cannot be planned.
    """
    hdc = dict(hdc or {})
    if not 0 <= cascade <= MAX_CASCADE:
        raise ValueError(f"cascade={cascade}: allowed 0..{MAX_CASCADE}")
    if cascade and not layout.supports_cascade:
        raise ValueError(f"cascade={cascade}: this backbone has no cascaded blocks (allowed 0)")
    allowed = layout.valid_output_strides(cascade)
    if output_stride not in allowed:
        raise ValueError(f"output_stride={output_stride}: allowed {list(allowed)}")
    if first_unit not in FIRST_UNIT_CONVENTIONS:
        raise ValueError(f"first_unit={first_unit!r}: allowed {list(FIRST_UNIT_CONVENTIONS)}")
    block4_units = layout.units[3]
    if layout.strided_pools:
        if multi_grid is not None and any(m != 1 for m in multi_grid):
            raise ValueError(f"multi_grid={list(multi_grid)}: VGG-16 has no residual units to multiply; allowed null")
        if hdc:
            raise ValueError(
                f"hdc={ {k: list(v) for k, v in hdc.items()} }: VGG-16 has no residual units; allowed {{}}"
            )
        if first_unit != "full":
            raise ValueError(
                f"first_unit={first_unit!r}: VGG-16's strides sit in its pools, not in a conv; allowed 'full'"
            )
    multi_grid = tuple(multi_grid) if multi_grid is not None else (1,) * block4_units
    if len(multi_grid) != block4_units:
        raise ValueError(
            f"multi_grid={list(multi_grid)}: needs one rate per unit of block4, i.e. {block4_units} values"
        )
    if any(m < 1 for m in multi_grid):
        raise ValueError(f"multi_grid={list(multi_grid)}: unit rates must be integers ≥ 1")
    stages = layout.stage_names(cascade)
    for name, rates in hdc.items():
        if name not in stages:
            raise ValueError(f"hdc.{name}: no such stage here; allowed {list(stages)}")
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"hdc.{name}={list(rates)}: give one or more rates, each an integer ≥ 1")
        if len(rates) > layout.stage_units(name):
            raise ValueError(f"hdc.{name}={list(rates)}: longer than the stage's {layout.stage_units(name)} units")

    plans = []
    stride, rate = layout.stem_stride, 1
    mg_stages = multi_grid_stages(cascade)
    for index, name in enumerate(stages):
        natural = layout.natural_strides[index] if index < len(RESIDUAL_STAGES) else 2
        n_units = layout.stage_units(name)
        previous_rate = rate
        in_stride = stride
        if stride * natural > output_stride:
            unit_stride, rate = 1, rate * natural  # trade the stride for dilation (v3 §3.1)
        else:
            unit_stride, stride = natural, stride * natural
        if name in hdc:
            unit_rates = tuple(itertools.islice(itertools.cycle(hdc[name]), n_units))
        elif name in mg_stages:
            unit_rates = tuple(rate * m for m in multi_grid)
        else:
            unit_rates = (rate,) * n_units
        dilated_first = unit_stride == 1 and natural > 1 and name not in hdc
        convs = []
        for unit, unit_rate in enumerate(unit_rates):
            for conv in range(layout.convs_per_unit):
                carries_stride = unit == 0 and conv == 0
                dilation = unit_rate
                if carries_stride and dilated_first:
                    if first_unit == "previous":
                        dilation = previous_rate
                    elif first_unit == "half":
                        dilation = max(1, unit_rate // 2)
                convs.append(ConvPlan(name, unit, conv, unit_stride if carries_stride else 1, dilation))
        plans.append(StagePlan(name, unit_stride, rate, in_stride, stride, unit_rates, tuple(convs)))
    return tuple(plans)


def scale_rates(rates: Sequence[int], reference_output_stride: int, output_stride: int) -> tuple[int, ...]:
    """Rates stated at ``reference_output_stride``, as they must run at ``output_stride``.

    Halving the output stride doubles every rate so that each branch keeps its field of view in input
    pixels (v3 §3.3: (6, 12, 18) at OS 16 is (12, 24, 36) at OS 8; the TF/torchvision OS16↔OS8 bug is to
    forget this). A rate that would stop being a whole number is an error, never rounded silently.
    """
    factor = Fraction(reference_output_stride, output_stride)
    scaled = [Fraction(r) * factor for r in rates]
    if any(s.denominator != 1 or s < 1 for s in scaled):
        raise ValueError(
            f"rates {list(rates)} stated at output stride {reference_output_stride} do not scale to whole rates "
            f"≥ 1 at output stride {output_stride} (×{factor}); give rates for that output stride"
        )
    return tuple(int(s) for s in scaled)
