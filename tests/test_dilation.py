"""The dilation plan, pinned value by value (DeepLab v3 §3.1–3.2, Table 2/3 settings; HDC)."""

from __future__ import annotations

import pytest

from ablations.dilation import LAYOUTS, dilation_plan, scale_rates

R50, R101, R18, MBV2 = LAYOUTS["resnet50"], LAYOUTS["resnet101"], LAYOUTS["resnet18"], LAYOUTS["mobilenet_v2"]


def rates(plan, stage):
    return next(s for s in plan if s.name == stage).dilations


def strides(plan):
    return {s.name: s.stride for s in plan}


@pytest.mark.parametrize(
    ("output_stride", "layer3", "layer4"),
    [(32, (1,) * 6, (1, 1, 1)), (16, (1,) * 6, (2, 2, 2)), (8, (2,) * 6, (4, 4, 4))],
)
def test_output_stride_trades_strides_for_rates(output_stride, layer3, layer4):
    plan = dilation_plan(R50, output_stride=output_stride)
    assert rates(plan, "layer3") == layer3
    assert rates(plan, "layer4") == layer4
    assert plan[-1].out_stride == output_stride
    expected_strides = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}[output_stride]
    assert tuple(strides(plan).values()) == expected_strides


@pytest.mark.parametrize(
    ("multi_grid", "os16", "os8"),
    [
        ((1, 1, 1), (2, 2, 2), (4, 4, 4)),
        ((1, 2, 1), (2, 4, 2), (4, 8, 4)),
        ((1, 2, 3), (2, 4, 6), (4, 8, 12)),
        ((1, 2, 4), (2, 4, 8), (4, 8, 16)),
        ((2, 2, 2), (4, 4, 4), (8, 8, 8)),
    ],
)
def test_multi_grid_multiplies_the_block_rate(multi_grid, os16, os8):
    assert rates(dilation_plan(R101, output_stride=16, multi_grid=multi_grid), "layer4") == os16
    assert rates(dilation_plan(R101, output_stride=8, multi_grid=multi_grid), "layer4") == os8


def test_multi_grid_at_output_stride_32_multiplies_rate_one():
    assert rates(dilation_plan(R50, output_stride=32, multi_grid=(1, 2, 4)), "layer4") == (1, 2, 4)


def test_cascade_doubles_base_rates_at_fixed_output_stride():
    plan = dilation_plan(R50, output_stride=16, cascade=3)
    assert [s.name for s in plan] == ["layer1", "layer2", "layer3", "layer4", "block5", "block6", "block7"]
    assert [s.base_rate for s in plan[3:]] == [2, 4, 8, 16]  # v3 Fig. 3(b)
    assert all(s.stride == 1 for s in plan[3:])


def test_multi_grid_applies_inside_every_cascaded_block():
    plan = dilation_plan(R101, output_stride=16, cascade=3, multi_grid=(1, 2, 1))
    assert [rates(plan, b) for b in ("layer4", "block5", "block6", "block7")] == [
        (2, 4, 2),
        (4, 8, 4),
        (8, 16, 8),
        (16, 32, 16),
    ]


def test_cascade_without_atrous_keeps_striding_to_256():
    plan = dilation_plan(R50, output_stride=256, cascade=3)  # v3 Table 1, last column
    assert all(d == 1 for s in plan for d in s.dilations)
    assert [s.out_stride for s in plan] == [4, 8, 16, 32, 64, 128, 256]


def test_cascade_at_output_stride_64_dilates_only_what_is_past_it():
    plan = dilation_plan(R50, output_stride=64, cascade=3)
    assert strides(plan) == {"layer1": 1, "layer2": 2, "layer3": 2, "layer4": 2, "block5": 2, "block6": 1, "block7": 1}
    assert [s.base_rate for s in plan[4:]] == [1, 2, 4]


@pytest.mark.parametrize(
    ("first_unit", "layer3", "layer4"),
    [
        ("full", (2, 2, 2, 2, 2, 2), (4, 4, 4)),
        ("previous", (1, 2, 2, 2, 2, 2), (2, 4, 4)),  # torchvision's deeplabv3_resnet50 exactly
        ("half", (1, 2, 2, 2, 2, 2), (2, 4, 4)),
    ],
)
def test_first_unit_conventions(first_unit, layer3, layer4):
    plan = dilation_plan(R50, output_stride=8, first_unit=first_unit)
    assert rates(plan, "layer3") == layer3
    assert rates(plan, "layer4") == layer4


def test_first_unit_conventions_with_multi_grid():
    assert rates(dilation_plan(R50, output_stride=16, multi_grid=(1, 2, 4), first_unit="previous"), "layer4") == (
        1,
        4,
        8,
    )
    assert rates(dilation_plan(R50, output_stride=16, multi_grid=(2, 2, 2), first_unit="half"), "layer4") == (2, 4, 4)


def test_basic_blocks_plan_both_convs_and_stride_the_first():
    plan = dilation_plan(R18, output_stride=8)
    layer3 = next(s for s in plan if s.name == "layer3")
    assert [(c.unit, c.conv, c.stride, c.dilation) for c in layer3.convs] == [
        (0, 0, 1, 2),
        (0, 1, 1, 2),
        (1, 0, 1, 2),
        (1, 1, 1, 2),
    ]
    layer2 = next(s for s in plan if s.name == "layer2")
    assert [(c.unit, c.conv, c.stride) for c in layer2.convs][:2] == [(0, 0, 2), (0, 1, 1)]


def test_hdc_schedule_is_absolute_and_cycled():
    plan = dilation_plan(R50, output_stride=8, hdc={"layer3": (1, 2, 5, 9), "layer4": (5, 9, 17)})
    assert rates(plan, "layer3") == (1, 2, 5, 9, 1, 2)
    assert rates(plan, "layer4") == (5, 9, 17)
    official = dilation_plan(R101, output_stride=8, hdc={"layer3": (1, 2, 5, 9)})
    assert rates(official, "layer3") == (1, 2, 5, 9) * 5 + (1, 2, 5)  # TuSimple-DUC res4, bar its first unit


def test_hdc_on_a_striding_stage_keeps_the_stride():
    plan = dilation_plan(R50, output_stride=16, hdc={"layer3": (1, 2, 3)})
    assert strides(plan)["layer3"] == 2
    assert rates(plan, "layer3") == (1, 2, 3, 1, 2, 3)


def test_mobilenet_layout():
    plan = dilation_plan(MBV2, output_stride=8)
    assert [s.out_stride for s in plan] == [4, 8, 8, 8]
    assert rates(plan, "layer3") == (2,) * 7
    assert rates(plan, "layer4") == (4,) * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 12}, "output_stride=12: allowed [8, 16, 32]"),
        ({"output_stride": 64}, "output_stride=64: allowed [8, 16, 32]"),
        ({"output_stride": 4}, "output_stride=4"),
        ({"output_stride": 16, "multi_grid": (1, 2)}, "multi_grid=[1, 2]: needs one rate per unit of block4, i.e. 3"),
        ({"output_stride": 16, "multi_grid": (1, 0, 1)}, "multi_grid=[1, 0, 1]: unit rates must be integers ≥ 1"),
        ({"output_stride": 16, "cascade": 4}, "cascade=4: allowed 0..3"),
        ({"output_stride": 16, "hdc": {"layer9": (1, 2)}}, "hdc.layer9: no such stage"),
        ({"output_stride": 16, "hdc": {"block5": (1, 2)}}, "hdc.block5: no such stage"),
        ({"output_stride": 16, "hdc": {"layer4": (1, 2, 5, 9)}}, "longer than the stage's 3 units"),
        ({"output_stride": 16, "hdc": {"layer4": (0, 1)}}, "each an integer ≥ 1"),
        ({"output_stride": 16, "first_unit": "sideways"}, "first_unit='sideways'"),
    ],
)
def test_plan_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dilation_plan(R50, **kwargs)


def test_mobilenet_has_no_cascade():
    with pytest.raises(ValueError, match="no cascaded blocks"):
        dilation_plan(MBV2, output_stride=16, cascade=1)


@pytest.mark.parametrize(
    ("stated", "reference", "actual", "expected"),
    [
        ((6, 12, 18), 16, 8, (12, 24, 36)),
        ((6, 12, 18), 16, 16, (6, 12, 18)),
        ((6, 12, 18), 16, 32, (3, 6, 9)),
        ((2, 4, 8, 12), 8, 16, (1, 2, 4, 6)),
        ((12,), 8, 16, (6,)),
    ],
)
def test_scale_rates(stated, reference, actual, expected):
    assert scale_rates(stated, reference, actual) == expected


def test_scale_rates_refuses_to_round():
    with pytest.raises(ValueError, match="do not scale to whole rates"):
        scale_rates((2, 4, 8, 12), 8, 32)
