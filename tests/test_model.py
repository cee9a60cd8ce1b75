"""Network contracts: sizes, measured output stride, gradients everywhere, branch counts, evaluation at another
output stride, batch size 1, weights. The exact rates, branch counts, output strides, parameters and MACs of every
study arm are in tests/golden/arms.yaml (tests/test_golden.py); ``ARMS`` here holds the configs no study covers."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ablations.geometry.describe import measure_output_stride
from ablations.model import build_model
from ablations.model.backbones import WeightsError
from tests.conftest import tiny

# Configs that no study in sweeps/*.yaml covers (those are checked in tests/test_golden.py): the output strides,
# multi-grid rows, HDC 1-2-5-9 at OS 8, ASPP-L, no context, no image pooling, serial ASPP and the decoder's
# low-level channels are study arms.
ARMS = {
    # backbone.cascade (v3 Table 2 columns) and the no-atrous cascade of Table 1
    "cascade1": ["backbone.cascade=1", "backbone.multi_grid=1,2,1"],
    "cascade2": ["backbone.cascade=2", "backbone.multi_grid=1,2,1"],
    "cascade3": ["backbone.cascade=3", "backbone.multi_grid=1,2,1"],
    "cascade3-os8": ["backbone.cascade=3", "backbone.output_stride=8"],
    "cascade3-os64": ["backbone.cascade=3", "backbone.output_stride=64", "context.kind=none"],
    "cascade3-os256": ["backbone.cascade=3", "backbone.output_stride=256", "context.kind=none"],
    # backbone.hdc and backbone.first_unit
    "hdc-layer4": ["backbone.hdc.layer4=1,2,5"],
    "first-previous": ["backbone.output_stride=8", "backbone.first_unit=previous"],
    "first-half": ["backbone.output_stride=8", "backbone.first_unit=half", "backbone.multi_grid=1,2,4"],
    # backbone.name
    "resnet18": ["backbone.name=resnet18", "backbone.multi_grid=1,2"],
    "resnet34": ["backbone.name=resnet34", "backbone.output_stride=8"],
    "resnet101": ["backbone.name=resnet101", "backbone.multi_grid=1,2,4"],
    "resnet18-cascade": ["backbone.name=resnet18", "backbone.cascade=2", "backbone.output_stride=8"],
    "mobilenet-os8": ["backbone.name=mobilenet_v2", "backbone.output_stride=8"],
    "mobilenet-os16": ["backbone.name=mobilenet_v2", "backbone.multi_grid=1,2,4,8"],
    "mobilenet-os32": ["backbone.name=mobilenet_v2", "backbone.output_stride=32"],
    # context
    "aspp-s": ["context.preset=aspp-s", "backbone.output_stride=8"],
    "aspp-4rates": ["context.rates=6,12,18,24"],
    "largefov": ["context.kind=largefov", "backbone.output_stride=8"],
    "spp": ["context.kind=spp"],
    "pooling-group": ["context.pooling_norm=group"],
    "pooling-batch": ["context.pooling_norm=batch"],
    "serial-sum": ["context.topology=serial", "context.preset=aspp-l"],
    "separable": ["context.separable=true"],
    "sum-with-pooling": ["context.merge=sum", "context.image_pooling=true"],
    # decoder (v3+ Tables 1-2)
    "decoder-1conv": ["decoder.enabled=true", "decoder.convs=1"],
    "decoder-3convs": ["decoder.enabled=true", "decoder.convs=3"],
    "decoder-conv2+conv3": ["decoder.enabled=true", "decoder.low_level=conv2+conv3"],
    "decoder-separable": ["decoder.enabled=true", "decoder.separable=true", "context.separable=true"],
    "decoder-os8": ["decoder.enabled=true", "backbone.output_stride=8"],
    "decoder-none": ["decoder.enabled=true", "context.kind=none"],
    "decoder-mobilenet": ["decoder.enabled=true", "backbone.name=mobilenet_v2"],
    # head
    "head-torchvision": ["head.style=torchvision"],
}


@pytest.fixture(scope="module", params=list(ARMS), ids=list(ARMS))
def arm(request):
    # Built once per arm for the three tests below, which only run it (none changes its structure or weights).
    torch.manual_seed(0)
    config = tiny(*ARMS[request.param])
    return config, build_model(config)


def test_logits_have_the_input_size_on_odd_inputs(arm):
    _, model = arm
    for size in ((37, 45), (33, 33)):
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_measured_output_stride(arm):
    config, model = arm
    with torch.no_grad():
        assert measure_output_stride(model) == config.backbone.output_stride


def test_every_parameter_gets_a_gradient(arm):
    _, model = arm
    model.train()
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 33, 41)).logsumexp(1).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_v3_units_at_output_stride_16_and_8():
    os16 = build_model(tiny("backbone.name=resnet101", "backbone.multi_grid=1,2,4"))
    assert [r["dilation"] for r in os16.backbone.conv_table() if r["block"] == "layer4"] == [2, 4, 8]
    os8 = build_model(tiny("backbone.name=resnet101", "backbone.multi_grid=1,2,4", "backbone.output_stride=8"))
    assert [r["dilation"] for r in os8.backbone.conv_table() if r["block"] == "layer4"] == [4, 8, 16]
    assert {r["dilation"] for r in os8.backbone.conv_table() if r["block"] == "layer3"} == {2}


def test_cascade_blocks_are_replicas_of_block4():
    model = build_model(tiny("backbone.cascade=3"))
    for block in ("block5", "block6", "block7"):
        replica = getattr(model.backbone, block)
        assert len(replica) == len(model.backbone.layer4)
        assert [p.shape for p in replica[1].parameters()] == [p.shape for p in model.backbone.layer4[1].parameters()]
    rates = [
        r["dilation"]
        for r in model.backbone.conv_table()
        if r["unit"] == 0 and r["block"] not in ("layer1", "layer2", "layer3")
    ]
    assert rates == [2, 4, 8, 16]


@pytest.mark.parametrize(
    ("overrides", "rates", "branches"),
    [
        ([], (6, 12, 18), 5),
        (["backbone.output_stride=8"], (12, 24, 36), 5),
        (["backbone.output_stride=32"], (3, 6, 9), 5),
        (["context.image_pooling=false"], (6, 12, 18), 4),
        (["context.rates=6,12,18,24"], (6, 12, 18, 24), 6),
        (["context.preset=aspp-l"], (3, 6, 9, 12), 4),
        (["context.preset=aspp-s", "backbone.output_stride=8"], (2, 4, 8, 12), 4),
        (["context.kind=largefov", "backbone.output_stride=8"], (12,), 1),
        (["context.kind=spp"], (), 4),
    ],
)
def test_context_branches_and_actual_rates(overrides, rates, branches):
    model = build_model(tiny(*overrides))
    assert model.context.rates == rates
    assert model.context.branch_count == branches


def test_sum_merge_outputs_logits_without_a_head():
    model = build_model(tiny("context.preset=aspp-l"))
    assert model.head is None
    assert model.context(torch.randn(1, model.backbone.channels["out"], 5, 5)).shape[1] == 5


def test_serial_branches_read_the_previous_branch():
    model = build_model(tiny("context.topology=serial"))
    branches = model.context.branches
    assert branches[1].atrous.in_channels == model.backbone.channels["out"]
    assert branches[2].atrous.in_channels == branches[3].atrous.in_channels == 16
    seen = {}
    branches[1].register_forward_hook(lambda m, i, o: seen.setdefault("out1", o.clone()))
    branches[2].register_forward_hook(lambda m, i, o: seen.setdefault("in2", i[0].clone()))
    model.eval()
    model(torch.randn(1, 3, 33, 33))
    assert torch.equal(seen["out1"], seen["in2"])
    parallel = build_model(tiny())
    assert sum(p.numel() for p in model.context.parameters()) < sum(p.numel() for p in parallel.context.parameters())


def test_decoder_projection_and_levels():
    model = build_model(tiny("decoder.enabled=true", "decoder.low_level_channels=32", "decoder.low_level=conv2+conv3"))
    assert model.decoder.levels == ("conv3", "conv2")
    assert all(model.decoder.project[level][0].out_channels == 32 for level in model.decoder.levels)
    assert len(model.decoder.refine["conv2"]) == 2


def test_separable_branches_are_depthwise():
    model = build_model(tiny("context.separable=true"))
    conv = model.context.branches[1].atrous
    assert conv.groups == conv.in_channels and conv.dilation == (6, 6)


def test_evaluation_at_another_output_stride_reuses_the_weights():
    config = tiny("backbone.multi_grid=1,2,4", "eval.output_stride=8")
    model = build_model(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad(), model.at_output_stride(config.eval_output_stride):
        assert measure_output_stride(model) == 8
        assert model.context.rates == (12, 24, 36)
        assert [r["dilation"] for r in model.backbone.conv_table() if r["block"] == "layer4"] == [4, 8, 16]
        assert model(x).shape == (1, 5, 49, 49)
    assert model.output_stride == 16 and model.context.rates == (6, 12, 18)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_output_stride_round_trip_gives_identical_logits():
    model = build_model(tiny("backbone.cascade=2")).eval()
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        first = model(x)
        model.set_output_stride(32)
        assert measure_output_stride(model) == 32
        model.set_output_stride(16)
        assert torch.equal(first, model(x))


@pytest.mark.parametrize(
    "overrides",
    [[], ["context.pooling_norm=group"], ["context.kind=spp"], ["context.merge=sum", "context.image_pooling=true"]],
)
def test_batch_size_one_trains_with_image_pooling(overrides):
    model = build_model(tiny(*overrides)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    target = torch.randint(0, 5, (1, 33, 33))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(1, 3, 33, 33)), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_batchnorm_pooling_at_batch_one_says_which_setting_to_change():
    model = build_model(tiny("context.pooling_norm=batch")).train()
    with pytest.raises(ValueError, match=r"context.pooling_norm='batch' cannot train at batch size 1"):
        model(torch.randn(1, 3, 33, 33))
    model.eval()
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 5, 33, 33)


def test_width_multiplier_scales_the_encoder():
    full = build_model(tiny("backbone.width=1.0", "context.kind=none"))
    narrow = build_model(tiny("backbone.width=0.25", "context.kind=none"))
    assert full.backbone.channels["out"] == 2048 and narrow.backbone.channels["out"] == 512


# -- pretrained weights ----------------------------------------------------------------------------------------


def test_resnet_weights_from_a_torchvision_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    model = build_model(
        tiny("backbone.name=resnet18", "backbone.width=1.0", "backbone.multi_grid=1,1", f"backbone.weights={path}")
    )
    ours = model.backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))


def test_cascaded_blocks_may_be_missing_from_imagenet_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    build_model(
        tiny(
            "backbone.name=resnet18",
            "backbone.width=1.0",
            "backbone.cascade=1",
            "backbone.multi_grid=1,2",
            f"backbone.weights={path}",
        )
    )


def test_mobilenet_weights_from_an_smp_state_dict(tmp_path):
    from segmentation_models_pytorch.encoders import get_encoder

    reference = get_encoder("mobilenet_v2", weights=None)
    path = tmp_path / "mbv2.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(tiny("backbone.name=mobilenet_v2", "backbone.width=1.0", f"backbone.weights={path}"))
    assert all(torch.equal(model.backbone.encoder.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_weights_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        build_model(tiny("backbone.width=1.0", f"backbone.weights={tmp_path}/missing.pth"))
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"r18.pth'.*does not fit this encoder"):
        build_model(tiny("backbone.width=1.0", f"backbone.weights={path}"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        build_model(tiny("backbone.width=1.0", f"backbone.weights={garbage}"))
