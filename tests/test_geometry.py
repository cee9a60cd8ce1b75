"""The geometry check: the share of a dilated 3×3 conv's taps on the feature map (DeepLab v3 Fig. 4), on known
cases, and per study: which arms a crop can tell apart. The table of ../shared/reference/geometry.md is the
reference; studies are taken from sweeps/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablations.geometry.analysis import is_degenerate, network_signature, tap_indices, valid_taps
from ablations.geometry.describe import describe
from ablations.model import build_model
from ablations.sweep.geometry import ANSWERABLE, CANNOT, PARTLY, study_geometry
from ablations.sweep.study import load_study, parse_study, study_files

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"

# Each arm's geometry is computed once per process (ablations.geometry.cache), however many tests ask for it.


@pytest.mark.parametrize(
    ("side", "rates", "shares"),
    [
        (6, (2, 4, 8), (0.60, 0.31, 0.11)),  # multi-grid (1,2,4) at OS 16, 96² crop
        (33, (2, 4, 8), (0.92, 0.84, 0.70)),  # the same at 513²
        (6, (6, 12, 18), (0.11, 0.11, 0.11)),  # ASPP v3 at OS 16, 96²
        (33, (6, 12, 18), (0.77, 0.57, 0.40)),  # ... at 513²
        (65, (12, 24, 36), (0.77, 0.57, 0.40)),  # ASPP v3 at OS 8, 513²
        (6, (3, 6, 9, 12), (0.44, 0.11, 0.11, 0.11)),  # ASPP-L run at OS 16, 96²
        (12, (5, 9, 17), (0.52, 0.25, 0.11)),  # HDC layer4 at OS 8, 96²
        (33, (16, 32), (0.46, 0.12)),  # cascade block7 at OS 16, 513²
    ],
)
def test_valid_taps_reproduce_the_reference_table(side, rates, shares):
    assert tuple(round(valid_taps(side, r), 2) for r in rates) == shares


def test_rate_at_least_the_side_leaves_the_centre_tap():
    for side, rate in ((6, 6), (6, 100), (1, 1)):
        assert valid_taps(side, rate) == pytest.approx(1 / 9)
        assert is_degenerate(side, rate)
    assert not is_degenerate(6, 5) and valid_taps(6, 5) > 1 / 9
    assert valid_taps(64, 1) == pytest.approx((1 - 2 / (3 * 64)) ** 2)  # only the border loses taps
    # A strided conv: 7 outputs of a 13-cell map, stride 2, rate 1, padding 1; only the first output's left tap
    # and the last one's right tap fall off the map.
    assert valid_taps(13, 1, stride=2, padding=1) == pytest.approx((1 - 2 / 21) ** 2)
    assert tap_indices(6, 6) == tuple((None, o, None) for o in range(6)) == tap_indices(6, 8)


def test_describe_reports_valid_taps_per_unit_and_context_branch():
    config = load_study(SWEEPS / "multigrid.yaml").resolve("(1,2,4)", 0)
    quick = describe(config, (96, 96))
    layer4 = [round(u["valid_taps"], 2) for u in quick["units"] if u["block"] == "layer4"]
    assert layer4 == [0.60, 0.31, 0.11]
    assert [round(c["valid_taps"], 2) for c in quick["context_geometry"]] == [0.11] * 3
    assert all(c["degenerate"] for c in quick["context_geometry"])
    paper = describe(config, (513, 513))
    assert [round(c["valid_taps"], 2) for c in paper["context_geometry"]] == [0.77, 0.57, 0.40]
    assert not any(c["degenerate"] for c in paper["context_geometry"])


def test_equal_signatures_compute_the_same_function_and_different_ones_do_not():
    study = load_study(SWEEPS / "multigrid.yaml")
    outputs, signatures = {}, {}
    for arm in ("(1,2,3)", "(1,2,4)", "(1,2,1)"):
        torch.manual_seed(0)
        model = build_model(study.resolve(arm, 0), load_weights=False).eval()
        signatures[arm] = network_signature(model, (96, 96))
        torch.manual_seed(1)
        with torch.no_grad():
            outputs[arm] = model(torch.randn(2, 3, 96, 96))
    # rates (2,4,6) and (2,4,8) on a 6×6 map: the last unit is a 1×1 conv either way
    assert signatures["(1,2,3)"] == signatures["(1,2,4)"] != signatures["(1,2,1)"]
    assert torch.allclose(outputs["(1,2,3)"], outputs["(1,2,4)"], atol=1e-4)
    assert not torch.allclose(outputs["(1,2,3)"], outputs["(1,2,1)"], atol=1e-2)
    # At 513² the two differ
    with torch.device("meta"):
        big = {a: network_signature(build_model(study.resolve(a, 0), load_weights=False), (513, 513))
               for a in ("(1,2,3)", "(1,2,4)")}  # fmt: skip
    assert big["(1,2,3)"] != big["(1,2,4)"]


def test_multigrid_on_quick_is_partly_answerable_and_on_the_paper_geometry_answerable():
    quick = study_geometry(load_study(SWEEPS / "multigrid.yaml"))
    assert quick.crop == 96 and quick.verdict == PARTLY
    assert quick.identical_to == {"(1,2,4)": "(1,2,3)"}
    assert quick.arms["(1,2,4)"].degenerate == ("backbone.layer4.2.conv2",)
    paper = study_geometry(load_study(SWEEPS / "multigrid.yaml", profile="paper"))
    assert paper.crop == 513 and paper.verdict == ANSWERABLE and not paper.identical_to


def test_a_study_whose_arms_differ_only_in_degenerate_convs_cannot_be_answered():
    study = parse_study(
        {
            "name": "rates",
            "profile": "quick",
            "fixed": {"context.preset": None, "context.reference_output_stride": 16},
            "axis": {"name": "rates", "key": "context.rates", "values": [[6, 12, 18], [8, 16, 24]]},
        }
    )
    geometry = study_geometry(study)
    assert geometry.verdict == CANNOT and "cannot answer" in geometry.summary()
    assert geometry.identical_to == {"(8,16,24)": "(6,12,18)"}


@pytest.mark.parametrize("path", study_files(SWEEPS), ids=lambda p: p.stem)
def test_every_grid_study_has_a_geometry_for_every_arm(path):
    study = load_study(path)
    geometry = study_geometry(study)
    if not study.is_grid:
        assert geometry is None
        return
    assert list(geometry.arms) == list(study.arm_labels)
    for arm in geometry.arms.values():
        assert all(0 < arm.convs[n]["valid_taps"] <= 1 for n in arm.studied)
        assert arm.note()


def test_the_sweep_warns_at_start_up_when_the_quick_crop_cannot_measure_an_arm():
    from ablations.sweep.geometry import startup_warnings

    lines = startup_warnings(load_study(SWEEPS / "multigrid.yaml"))
    assert lines == [
        "geometry: arm (1,2,3): layer4.2.conv2 r6 on 6×6 sees only the centre tap (a 1×1 conv) at 96²; profile "
        "faithful (513²) measures it",
        "geometry: arm (1,2,4): layer4.2.conv2 r8 on 6×6 sees only the centre tap (a 1×1 conv) at 96²; it is the "
        "same network as (1,2,3) at 96²; profile faithful (513²) measures it",
    ]
    assert startup_warnings(load_study(SWEEPS / "multigrid.yaml", profile="paper")) == []
    assert startup_warnings(load_study(SWEEPS / "image_pooling.yaml")) == []


def test_strict_refuses_before_anything_is_created(tmp_path, monkeypatch, capsys):
    from ablations.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(SWEEPS / "multigrid.yaml"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablations: error: --strict: arm (1,2,3): layer4.2.conv2 r6 on 6×6") and "(and 1 more)" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", study_files(SWEEPS), ids=lambda p: p.stem)
def test_the_faithful_profile_leaves_no_studied_conv_degenerate(path):
    from ablations.sweep.geometry import startup_warnings

    study = load_study(path, profile="faithful")
    geometry = study_geometry(study)
    # Frozen BatchNorm means frozen *pretrained* statistics (v3 Table 8); the synthetic benchmark trains from
    # scratch, so that arm is not measurable under any profile without backbone.weights, whatever the crop.
    caveats = {"protocol": {"frozen-bn"}}.get(path.stem, set())
    assert geometry is None or set(geometry.unmeasurable) == caveats
    assert geometry is None or (
        geometry.crop == 513 and (geometry.verdict == ANSWERABLE or caveats)
        and not any(g.degenerate or g.same_as for g in geometry.arms.values())
    )  # fmt: skip
    assert len(startup_warnings(study)) == len(caveats)
