"""Receptive field, gridding and HDC numbers against the worked examples of papers.md §4 and §8."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablations.geometry.analysis import (
    count_macs,
    effective_kernel,
    gridding_holes,
    hdc_check,
    hdc_rule,
    network_field_of_view,
    receptive_field,
    receptive_field_trace,
)
from ablations.model import build_model
from tests.conftest import tiny


@pytest.mark.parametrize(("dilation", "k_e"), [(1, 3), (2, 5), (4, 9), (6, 13), (12, 25), (18, 37), (24, 49), (36, 73)])
def test_effective_kernel(dilation, k_e):
    assert effective_kernel(3, dilation) == k_e


def test_effective_kernel_of_larger_kernels():
    assert (effective_kernel(7, 4), effective_kernel(4, 4), effective_kernel(4, 8)) == (25, 13, 25)


@pytest.mark.parametrize(
    ("rates", "trace"),
    [
        ((1, 2, 4), [3, 7, 15]),
        ((1, 2, 4, 8, 16), [3, 7, 15, 31, 63]),
        ((1, 2, 5), [3, 7, 17]),
        ((1, 2, 3), [3, 7, 13]),
        ((1, 2, 9), [3, 7, 25]),
        ((2, 4, 8), [5, 13, 29]),
        ((2, 2, 2), [5, 9, 13]),
        ((1, 2, 5, 9), [3, 7, 17, 35]),
    ],
)
def test_receptive_field_of_dilated_stacks(rates, trace):
    assert receptive_field_trace((3, 1, r) for r in rates) == trace


def test_yu_koltun_context_module():
    layers = [(3, 1, r) for r in (1, 1, 2, 4, 8, 16, 1)] + [(1, 1, 1)]
    assert receptive_field_trace(layers) == [3, 5, 9, 17, 33, 65, 67, 67]  # ICLR 2016 Table 1


def test_strides_multiply_the_increments():
    # A 3×3 rate-6 branch on an OS-16 map adds 12·16 = 192 px; doubled rate at OS 8 adds the same.
    assert receptive_field([(2, 16, 1), (3, 1, 6)]) - receptive_field([(2, 16, 1)]) == 192
    assert receptive_field([(2, 8, 1), (3, 1, 12)]) - receptive_field([(2, 8, 1)]) == 192


@pytest.mark.parametrize(
    ("rates", "holes"),
    [
        ((1, 2, 5), []),
        ((1, 2, 3), []),
        ((1, 2, 4), []),
        ((1, 2, 5, 9), []),
        ((1, 2, 9), [-5, -4, 4, 5]),
        ((2, 4, 8), [o for o in range(-13, 14) if o % 2]),
        ((2, 2, 2), [-5, -3, -1, 1, 3, 5]),
    ],
)
def test_gridding_holes(rates, holes):
    assert gridding_holes(rates) == holes


@pytest.mark.parametrize(
    ("rates", "m2", "gcd", "ok"),
    [
        ((1, 2, 5), 2, 1, True),
        ((1, 2, 9), 5, 1, False),
        ((2, 4, 8), 4, 2, False),
        ((2, 2, 2), 2, 2, False),
        ((1, 2, 3), 2, 1, True),
        ((1, 2, 5, 9), 2, 1, True),
    ],
)
def test_hdc_rule(rates, m2, gcd, ok):
    check = hdc_check(rates)
    assert (check.m2, check.gcd, check.ok) == (m2, gcd, ok)


def test_resnet50_receptive_field_without_dilation_is_427():
    model = build_model(tiny("backbone.output_stride=32", "context.kind=none"))
    fov = network_field_of_view(model)
    assert fov["receptive_field"]["backbone"] == 427
    assert fov["gridding_holes"] == {"output": []}


def test_aspp_adds_its_largest_branch_and_image_pooling_makes_it_global():
    model = build_model(tiny("backbone.output_stride=16"))
    fov = network_field_of_view(model)["receptive_field"]
    assert fov["backbone"] == 459  # layer4 (2,2,2) at OS 16: 427 + 32
    assert fov["context"] == 459 + 36 * 16  # rate 18 at OS 16
    assert fov["global"] is True


def test_serial_topology_compounds_rates():
    model = build_model(tiny("backbone.output_stride=16", "context.topology=serial", "context.image_pooling=false"))
    fov = network_field_of_view(model)["receptive_field"]
    assert fov["context"] == 459 + 2 * (6 + 12 + 18) * 16
    assert fov["global"] is False


def test_decoder_and_torchvision_head_add_their_convs():
    plain = network_field_of_view(build_model(tiny()))["receptive_field"]
    decoded = network_field_of_view(build_model(tiny("decoder.enabled=true", "decoder.convs=3")))["receptive_field"]
    assert decoded["logits"] - plain["logits"] == 3 * 2 * 4
    tv_head = network_field_of_view(build_model(tiny("head.style=torchvision")))["receptive_field"]
    assert tv_head["logits"] - plain["logits"] == 2 * 16


def test_gridding_per_stage_and_on_the_output_grid():
    holes = network_field_of_view(build_model(tiny("backbone.multi_grid=1,2,4")))["gridding_holes"]
    assert holes["layer4"] == [o for o in range(-13, 14) if o % 2]  # (2, 4, 8) grids …
    assert holes["output"] == []  # … but layer3's rate-1 units on the same grid fill the holes
    hdc = network_field_of_view(build_model(tiny("backbone.output_stride=8", "backbone.hdc.layer3=1,2,5")))
    assert hdc["gridding_holes"]["layer3"] == []


def test_macs_of_a_hand_checkable_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 10 * 10, 7)
    )
    expected = 8 * 3 * 9 * 100 + 4 * 8 * 100 + 400 * 7
    assert count_macs(net, (10, 10)) == expected


def test_macs_on_meta_equal_macs_computed_for_real():
    config = tiny("decoder.enabled=true")
    real = count_macs(build_model(config), (65, 65))
    with torch.device("meta"):
        meta = count_macs(build_model(config), (65, 65))
    assert real == meta > 0


@pytest.mark.parametrize(
    ("rates", "groups", "ok"),
    [
        ((1, 2, 5, 1, 2, 5), [[1, 2, 5], [1, 2, 5]], True),
        ((1, 2, 5, 9, 1, 2), [[1, 2, 5, 9], [1, 2]], True),
        ((2, 2, 2), [[2], [2], [2]], False),
        ((5, 9, 17), [[5, 9, 17]], False),  # TuSimple-DUC's res5 on its own
        ((2, 4, 8), [[2, 4, 8]], False),
    ],
)
def test_hdc_rule_is_checked_per_rising_group(rates, groups, ok):
    result = hdc_rule(rates)
    assert (result["groups"], result["ok"]) == (groups, ok)
