"""Study files: every file in sweeps/ is valid, every arm and every choice of every study builds and runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ablations.model import build_model
from ablations.sweep.study import StudyError, label_of, load_study, parse_study, study_files

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
FILES = study_files(SWEEPS)
REQUIRED = {
    "output_stride",
    "multigrid",
    "aspp_rates",
    "image_pooling",
    "decoder_channels",
    "cascade",
    "hdc",
    "aspp_topology",
    "separable",
    "eval_strategy",
    "joint",
}
# Width and class count shrunk so that every arm's network runs a forward pass on a CPU in milliseconds.
SMALL = ["backbone.width=0.125", "head.num_classes=3"]


def test_every_required_axis_has_a_study_file():
    assert {f.stem for f in FILES} >= REQUIRED
    for f in FILES:
        assert load_study(f).name == f.stem  # make sweep-<name> finds sweeps/<name>.yaml


def _cases():
    for f in FILES:
        study = load_study(f)
        for arm in study.arm_labels:
            yield pytest.param(f, arm, None, id=f"{f.stem}:{arm}")
        for p in study.search_space:
            for choice in p.choices or (p.low, p.high):
                yield pytest.param(f, None, (p.name, choice), id=f"{f.stem}:{p.name}={choice}")


@pytest.mark.parametrize(("path", "arm", "param"), list(_cases()))
def test_every_arm_and_choice_resolves_builds_and_runs(path, arm, param):
    study = load_study(path, sets=SMALL)
    params = dict([param]) if param else None
    config = study.resolve(arm, study.seeds[0], params)
    assert config.train.seed == study.seeds[0]
    if arm is not None:
        for key, value in study.arm(arm).overrides:
            section, field = key.split(".", 1)
            got = getattr(getattr(config, section), field)
            assert got == value or (isinstance(value, dict) and dict(got) == value), (key, got, value)
    model = build_model(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 65))
    assert out.shape == (1, 3, 65, 65) and torch.isfinite(out).all()


def test_arms_of_a_study_differ_and_the_grid_is_seed_major():
    study = load_study(SWEEPS / "multigrid.yaml")
    configs = {arm: study.resolve(arm, 0).backbone.multi_grid for arm in study.arm_labels}
    assert configs == {
        "(1,1,1)": (1, 1, 1),
        "(1,2,1)": (1, 2, 1),
        "(1,2,3)": (1, 2, 3),
        "(1,2,4)": (1, 2, 4),
        "(2,2,2)": (2, 2, 2),
    }
    assert study.grid()[:5] == [(arm, study.seeds[0]) for arm in study.arm_labels]
    assert study.total == len(study.arm_labels) * len(study.seeds) >= 10


def test_precedence_fixed_then_set_then_arm_then_seed():
    raw = {
        "name": "p",
        "profile": "quick",
        "fixed": {"train.lr": 0.5, "backbone.output_stride": 8},
        "axis": {"name": "os", "key": "backbone.multi_grid", "values": [[1, 1, 1], [1, 2, 4]]},
        "seeds": [3],
    }
    study = parse_study(raw, sets=["train.lr=0.25"])
    config = study.resolve("(1,2,4)", 3)
    assert config.train.lr == 0.25 and config.backbone.output_stride == 8
    assert config.backbone.multi_grid == (1, 2, 4) and config.train.seed == 3
    assert config.data.name == "synthetic" and config.data.shapes == ("disk",)  # the quick profile


def test_command_line_seeds_budget_and_profile_win():
    study = load_study(SWEEPS / "joint.yaml", seeds=[4, 5], budget=3, profile="paper")
    assert study.seeds == (4, 5) and study.total == 3 and study.profile == "paper"


def test_fingerprint_ignores_seeds_and_description_but_not_settings():
    a = load_study(SWEEPS / "multigrid.yaml")
    assert a.fingerprint() == load_study(SWEEPS / "multigrid.yaml", seeds=[7]).fingerprint()
    assert a.fingerprint() != load_study(SWEEPS / "multigrid.yaml", sets=["train.lr=0.1"]).fingerprint()
    assert a.fingerprint() != load_study(SWEEPS / "multigrid.yaml", profile="paper").fingerprint()


def test_labels():
    assert label_of([1, 2, 4]) == "(1,2,4)"
    assert label_of(True) == "true" and label_of(None) == "none" and label_of(8) == "8"


BASE = {"name": "s", "axis": {"name": "a", "key": "backbone.output_stride", "values": [8, 16]}}


@pytest.mark.parametrize(
    ("change", "sets", "needle"),
    [
        ({"colour": 1}, (), "unknown field(s) ['colour']"),
        ({"name": "a b"}, (), "name='a b'"),
        ({"profile": "fast"}, (), "profile='fast': allowed ['faithful', 'paper', 'quick', 'auto']"),
        ({"seeds": [0, 0]}, (), "seeds=[0, 0]: a non-empty list of distinct integers 0 … 4294967295"),
        ({"seeds": []}, (), "seeds=[]"),
        ({"sampler": "cmaes"}, (), "sampler='cmaes': allowed ['grid', 'random', 'tpe', 'nsga2']"),
        ({"axis": {"name": "a", "key": "backbone.output_stride", "values": [8]}}, (), "at least two values"),
        ({"axis": {"name": "a", "key": "output_stride", "values": [8, 16]}}, (), "expected a dotted config key"),
        ({"axis": {"name": "a", "arms": {"x": {}}, "key": "k"}}, (), "give either key + values or arms"),
        (
            {"axis": {"name": "a", "key": "backbone.output_stride", "values": [8, 12]}},
            (),
            "arm '12': backbone.output_stride",
        ),
        ({"axis": {"name": "a", "arms": {"x": {"backbone.multi_grid": [1, 2]}, "y": {}}}}, (), "arm 'x'"),
        ({"fixed": {"train.lr": "fast"}}, (), "the shared settings"),
        ({}, ("backbone.output_stride=8",), "sets backbone.output_stride, which the study varies"),
        ({}, ("train.seed=3",), "sets train.seed"),
        ({"objectives": [{"metric": "val/mIoU", "direction": "up"}]}, (), "direction='up'"),
        ({"pruner": {"kind": "asha"}}, (), "pruner={'kind': 'asha'}"),
        ({"axis": None, "search_space": {"train.lr": {"low": 0.1, "high": 0.01}}, "budget": 3}, (), "need low < high"),
        ({"axis": None, "search_space": {"train.lr": {"low": 0.001, "high": 0.01}}}, (), "budget=None"),
        ({"axis": None}, (), "needs an axis"),
        ({"base": "no/such.yaml"}, (), "base='no/such.yaml'"),
    ],
)
def test_bad_study_files_name_the_field_and_what_is_allowed(change, sets, needle):
    raw = {**BASE, **change}
    with pytest.raises(StudyError, match=re.escape(needle)):
        parse_study({k: v for k, v in raw.items() if v is not None}, sets=sets)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(StudyError, match="cannot be read"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match=r"not valid YAML at line"):
        load_study(bad)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
@pytest.mark.parametrize("profile", ["quick", "paper", "faithful"])
def test_every_study_is_valid_under_every_profile(path, profile):
    study = load_study(path, profile=profile)
    assert study.profile == profile and study.total >= 2


@pytest.mark.parametrize(("gpu", "expected"), [(True, "faithful"), (False, "quick")])
def test_profile_auto_picks_the_papers_geometry_with_a_gpu(monkeypatch, gpu, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    study = load_study(SWEEPS / "multigrid.yaml")
    assert study.requested_profile == "auto" and study.profile == expected
    assert study.describe()["profile"] == expected  # what the storage records
