"""Config contracts: round trips, presets, overrides, and one clear error for every bad input."""

from __future__ import annotations

import re

import pytest
import yaml

from ablations import ConfigError, ExperimentConfig, load_config
from ablations.config import CONTEXT_PRESETS, apply_override, field_docs

ARMS = [
    [],
    ["backbone.name=resnet101", "backbone.output_stride=8", "backbone.multi_grid=1,2,4"],
    ["backbone.name=mobilenet_v2", "backbone.width=0.5"],
    ["backbone.cascade=3", "backbone.output_stride=256", "context.kind=none"],
    ["backbone.output_stride=8", "backbone.hdc.layer3=1,2,5,9", "backbone.hdc.layer4=5,9,17"],
    ["context.preset=aspp-s", "backbone.output_stride=8"],
    ["context.preset=aspp-l"],
    ["context.kind=largefov", "backbone.output_stride=8"],
    ["context.kind=spp", "context.bins=6,3,2,1"],
    ["context.topology=serial", "context.separable=true", "context.pooling_norm=group"],
    ["decoder.enabled=true", "decoder.low_level=conv2+conv3", "decoder.separable=true", "decoder.convs=3"],
    ["eval.output_stride=8", "eval.scales=0.5,0.75,1,1.25,1.5,1.75", "eval.flip=true"],
    ["head.style=torchvision", "head.num_classes=19"],
]


@pytest.mark.parametrize("overrides", ARMS, ids=lambda o: " ".join(o) or "defaults")
def test_round_trip_is_equality(overrides, tmp_path):
    config = load_config(overrides=overrides)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_defaults_are_the_v3_paper_setting():
    config = load_config()
    assert config.backbone.output_stride == 16
    assert config.backbone.multi_grid == (1, 1, 1)
    assert (config.context.rates, config.context.reference_output_stride) == ((6, 12, 18), 16)
    assert config.context.image_pooling is True
    assert config.context.merge == "concat"
    assert config.decoder.low_level_channels == 48


def test_overrides_parse_lists_nested_maps_and_scalars():
    config = load_config(
        overrides=["backbone.multi_grid=1,2,4", "backbone.hdc.layer3=1,2,5", "context.rates=12", "eval.flip=true"]
    )
    assert config.backbone.multi_grid == (1, 2, 4)
    assert config.backbone.hdc == {"layer3": (1, 2, 5)}
    assert config.context.rates == (12,)
    assert config.eval.flip is True


def test_overrides_apply_on_top_of_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone:\n  output_stride: 8\n  name: resnet101\n")
    config = load_config(path, ["backbone.output_stride=16"])
    assert (config.backbone.name, config.backbone.output_stride) == ("resnet101", 16)


@pytest.mark.parametrize("preset", CONTEXT_PRESETS)
def test_presets_fill_their_values(preset):
    context = load_config(overrides=[f"context.preset={preset}", "backbone.output_stride=8"]).context
    for key, value in CONTEXT_PRESETS[preset].items():
        assert getattr(context, key) == value


def test_largefov_is_one_rate_12_branch_at_output_stride_8():
    context = load_config(overrides=["context.kind=largefov", "backbone.output_stride=8"]).context
    assert (context.rates, context.reference_output_stride, context.merge, context.channels) == ((12,), 8, "sum", 1024)


def test_class_count_follows_the_dataset():
    assert load_config().head.num_classes == 8
    assert load_config(overrides=["data.shapes=disk,cross,bar"]).head.num_classes == 4
    assert load_config(overrides=["data.name=cityscapes"]).head.num_classes == 19
    assert load_config(overrides=["data.name=folder", "head.num_classes=3"]).head.num_classes == 3


def test_every_field_has_a_doc_line():
    docs = field_docs()
    assert len(docs) > 30
    assert all(doc for doc in docs.values()), [k for k, v in docs.items() if not v]


BAD = [
    (
        ["backbone.outptu_stride=8"],
        "backbone.outptu_stride: unknown key; allowed [",
        "did you mean backbone.output_stride",
    ),
    (["model.depth=50"], "model: unknown key", None),
    (["backbone.output_stride=12"], "backbone.output_stride=12: allowed [8, 16, 32]", None),
    (["backbone.multi_grid=1,2"], "backbone.multi_grid=[1, 2]: needs one rate per unit of block4, i.e. 3 values", None),
    (["backbone.multi_grid=1,2,4,8"], "backbone.multi_grid=[1, 2, 4, 8]", None),
    (["context.rates=0,6"], "context.rates=[0, 6]: one or more integer rates ≥ 1", None),
    (["context.rates=-6,12"], "context.rates=[-6, 12]", None),
    (["context.channels=-1"], "context.channels=-1: an integer ≥ 1", None),
    (["decoder.low_level_channels=-48"], "decoder.low_level_channels=-48: an integer ≥ 1", None),
    (["decoder.convs=0"], "decoder.convs=0", None),
    (["backbone.name=vgg19"], "backbone.name='vgg19': allowed ['resnet18'", None),
    (["backbone.width=0"], "backbone.width=0", None),
    (["backbone.cascade=4"], "backbone.cascade=4: allowed 0..3", None),
    (["backbone.output_stride=eight"], "backbone.output_stride='eight': expected an integer", None),
    (["backbone.output_stride=true"], "backbone.output_stride=True: expected an integer", None),
    (["backbone.output_stride=8.5"], "backbone.output_stride=8.5: expected an integer", None),
    (
        ["context.kind=psp"],
        "context.kind='psp': allowed ['aspp', 'largefov', 'spp', 'nonlocal', 'aspp+nonlocal', 'custom', 'none']",
        None,
    ),
    (["context.preset=aspp-xl"], "context.preset='aspp-xl': allowed ['v3', 'aspp-s', 'aspp-l']", None),
    (
        ["context.preset=aspp-s", "context.rates=6,12,18"],
        "context.rates=[6, 12, 18] contradicts context.preset='aspp-s'",
        None,
    ),
    (["context.kind=spp", "context.rates=6,12"], "context.rates=[6, 12]: not used by spp", None),
    (["context.kind=largefov", "context.rates=6,12"], "LargeFOV has exactly one rate", None),
    (["context.topology=diagonal"], "context.topology='diagonal': allowed ['parallel', 'serial']", None),
    (["context.pooling_norm=layer"], "context.pooling_norm='layer'", None),
    (["context.dropout=1.5"], "context.dropout=1.5", None),
    (
        ["context.preset=aspp-s", "backbone.output_stride=32"],
        "context.rates=[2, 4, 8, 12] with backbone.output_stride=32",
        None,
    ),
    (["eval.output_stride=12"], "eval.output_stride=12: allowed [8, 16, 32]", None),
    (["eval.scales=0,1"], "eval.scales=[0.0, 1.0]", None),
    (["context.preset=aspp-l", "decoder.enabled=true"], "decoder.enabled=True: the decoder needs features", None),
    (
        ["backbone.hdc.layer4=1,2,5", "backbone.multi_grid=1,2,4"],
        "backbone.multi_grid=[1, 2, 4]: cannot be combined with hdc",
        None,
    ),
    (
        ["backbone.hdc.layer3=1,2,5", "backbone.output_stride=8", "eval.output_stride=16"],
        "HDC schedules cannot follow",
        None,
    ),
    (["backbone.hdc.layer8=1,2,5"], "backbone.hdc.layer8: no such stage here", None),
    (
        ["backbone.weights=/x.pth", "backbone.width=0.5"],
        "backbone.weights='/x.pth': pretrained weights need backbone.width=1.0",
        None,
    ),
    (
        ["backbone.name=mobilenet_v2", "backbone.cascade=1"],
        "backbone.cascade=1: this backbone has no cascaded blocks",
        None,
    ),
    (["data.shapes=disk,hexagon"], "data.shapes=['disk', 'hexagon']: distinct names from ['disk'", None),
    (["data.name=imagenet"], "data.name='imagenet': allowed ['synthetic', 'voc'", None),
    (["data.background_contrast=2"], "data.background_contrast=2.0", None),
    (["data.name=folder"], "head.num_classes=None: required with data.name='folder'", None),
    (["train.val_every=7"], "train.val_every=7: a divisor of train.max_steps=30000", None),
    (["train.precision=fp8"], "train.precision='fp8'", None),
    (["backbone"], "override 'backbone': expected KEY=VALUE", None),
    (["backbone=8"], "backbone: expected a mapping of fields, got 8", None),
    (["backbone.output_stride.x=8"], "backbone.output_stride={'x': 8}: expected an integer", None),
    (["backbone.output_stride=8", "backbone.output_stride.x=8"], "backbone.output_stride is not a section", None),
]


@pytest.mark.parametrize(("overrides", "message", "hint"), BAD, ids=lambda v: str(v))
def test_bad_input_names_field_value_and_what_is_allowed(overrides, message, hint):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(overrides=overrides)
    if hint:
        assert hint in str(error.value)
    assert "\n" not in str(error.value)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("backbone:\n  output_stride: [8, 16\n")
    with pytest.raises(ConfigError, match=r"broken.yaml'.*not valid YAML at line 3"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config("/nonexistent/config.yaml")


def test_configs_are_frozen():
    config = load_config()
    with pytest.raises(AttributeError):
        config.backbone.output_stride = 8  # type: ignore[misc]


def test_null_hdc_means_none():
    assert load_config(overrides=["backbone.hdc=null"]).backbone.hdc == {}
    with pytest.raises(ConfigError, match=r"backbone.hdc=\[1, 2, 5\]: expected a mapping"):
        load_config(overrides=["backbone.hdc=1,2,5"])


def test_apply_override_builds_nested_sections():
    data: dict = {}
    apply_override(data, "backbone.hdc.layer3=1,2,5")
    assert data == {"backbone": {"hdc": {"layer3": [1, 2, 5]}}}


def test_shipped_example_configs_load():
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    for file in files:
        assert yaml.safe_load(file.read_text())
        load_config(file)
