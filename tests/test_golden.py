"""Every arm of every study file against a committed golden table, ``tests/golden/arms.yaml``: the rate of every
3×3 conv of the backbone and the context rates at the training and the evaluation output stride, the context's
branch count, the measured output stride, parameters and multiply-adds at the study's crop.

Each arm is resolved by its study (``sweeps/*.yaml`` under the quick profile, ``study.resolve(arm, first seed)``)
and read off its meta-device build (:mod:`ablations.geometry.cache`). The table changes only on purpose, as
torchvision's expected-value files do: ``ABLATIONS_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py``
rewrites it; otherwise a difference fails, naming the study, the arm and the field. Search studies (``joint``,
``joint_tpe``) have no arms and are not in the table."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ablations.geometry import cache
from ablations.geometry.analysis import stage_dilations
from ablations.geometry.describe import cached_macs, cached_output_stride, describe
from ablations.sweep.study import load_study, study_files

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "arms.yaml"
PROFILE = "quick"
REGENERATE = "ABLATIONS_REGENERATE_GOLDEN"
HOW = f"if the change is intended, regenerate the table: {REGENERATE}=1 .venv/bin/pytest tests/test_golden.py"
HEADER = f"""\
# Golden figures of every arm of every grid study in sweeps/*.yaml (tests/test_golden.py). Each arm is resolved by
# its study under the {PROFILE} profile (first seed) and read off its meta-device build:
#   output_stride     measured (input side / backbone feature side)
#   backbone_rates    the dilation of every 3×3 conv of the backbone, per block, in order
#   context_rates     the context module's atrous rates as built; context_branches its branch count
#   params            parameters of the whole network
#   macs              multiply-adds of one forward pass of one image at crop × crop (the study's training crop)
#   eval              the same at the evaluation output stride (the same weights, re-planned)
# Regenerated only on purpose: {REGENERATE}=1 .venv/bin/pytest tests/test_golden.py
"""


def grid_studies() -> list:
    studies = [load_study(path, profile=PROFILE) for path in study_files(ROOT / "sweeps")]
    return [s for s in studies if s.is_grid]


STUDIES = {s.name: s for s in grid_studies()}
CASES = [(name, arm) for name, s in STUDIES.items() for arm in s.arm_labels]


def arm_figures(config) -> dict[str, Any]:
    """What the table holds for one resolved config."""
    crop = config.data.crop_size or config.data.image_size
    size = (crop, crop)
    summary = describe(config, size)
    eval_os = config.eval_output_stride
    eval_rates = cache.read(config, "context_rates", lambda model: list(model.context.rates), output_stride=eval_os)
    eval_units = cache.read(
        config, "conv_table", lambda model: model.backbone.conv_table(), output_stride=eval_os
    )  # fmt: skip
    return {
        "output_stride": summary["output_stride"],
        "backbone_rates": stage_dilations(summary["units"]),
        "context_rates": summary["context"]["rates"],
        "context_branches": summary["context"]["branches"],
        "params": summary["params"],
        "macs": summary["macs"],
        "eval": {
            "output_stride": cached_output_stride(config, eval_os),
            "backbone_rates": stage_dilations(eval_units),
            "context_rates": eval_rates,
            "macs": cached_macs(config, size, eval_os),
        },
    }


def study_figures(name: str) -> dict[str, Any]:
    study = STUDIES[name]
    seed = study.seeds[0]
    configs = {arm: study.resolve(arm, seed) for arm in study.arm_labels}
    crops = {c.data.crop_size or c.data.image_size for c in configs.values()}
    assert len(crops) == 1, f"{name}: arms train at different crops {sorted(crops)}"
    return {"crop": crops.pop(), "arms": {arm: arm_figures(c) for arm, c in configs.items()}}


def differences(study: str, arm: str, golden: Any, actual: Any, field: str = "") -> list[str]:
    """One line per field where ``actual`` is not ``golden``, naming the study, the arm and the field (dotted)."""
    if isinstance(golden, dict) and isinstance(actual, dict):
        out = []
        for key in list(golden) + [k for k in actual if k not in golden]:
            path = f"{field}.{key}" if field else str(key)
            if key not in actual:
                out.append(f"study {study}, arm {arm}: {path} is in the golden table but no longer measured")
            elif key not in golden:
                out.append(f"study {study}, arm {arm}: {path} = {actual[key]!r} is not in the golden table")
            else:
                out += differences(study, arm, golden[key], actual[key], path)
        return out
    if golden != actual:
        return [f"study {study}, arm {arm}: {field} is {actual!r}, the golden table says {golden!r}"]
    return []


def _dump(table: dict[str, Any]) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper, data):  # rates on one line each
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    Dumper.add_representer(list, represent_list)
    return HEADER + yaml.dump(table, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    if os.environ.get(REGENERATE):
        table = {"profile": PROFILE, "studies": {name: study_figures(name) for name in STUDIES}}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(_dump(table))
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; {HOW}")
    return yaml.safe_load(GOLDEN.read_text())


def test_the_table_holds_every_arm_of_every_study(golden):
    assert golden["profile"] == PROFILE
    held = {(name, arm) for name, s in golden["studies"].items() for arm in s["arms"]}
    missing, stale = sorted(set(CASES) - held), sorted(held - set(CASES))
    assert not missing and not stale, f"arms not in the golden table: {missing}; no longer in a study: {stale}; {HOW}"


@pytest.mark.parametrize(("study", "arm"), CASES, ids=[f"{s}/{a}" for s, a in CASES])
def test_arm_matches_the_golden_table(golden, study, arm):
    entry = golden["studies"].get(study)
    assert entry is not None and arm in entry["arms"], f"study {study}, arm {arm}: not in the golden table; {HOW}"
    s = STUDIES[study]
    config = s.resolve(arm, s.seeds[0])
    assert (config.data.crop_size or config.data.image_size) == entry["crop"], f"study {study}: crop changed; {HOW}"
    found = differences(study, arm, entry["arms"][arm], arm_figures(config))
    assert not found, "\n".join(found) + f"\n{HOW}"


def test_one_changed_rate_is_reported_by_study_arm_and_field(golden):
    study = "multigrid"
    arm = STUDIES[study].arm_labels[-1]
    entry = golden["studies"][study]["arms"][arm]
    assert differences(study, arm, entry, copy.deepcopy(entry)) == []
    for field in ("backbone_rates", "eval.backbone_rates"):
        changed = copy.deepcopy(entry)
        rates = changed["eval"]["backbone_rates"] if field.startswith("eval") else changed["backbone_rates"]
        rates["layer4"][-1] += 1
        (line,) = differences(study, arm, entry, changed)
        assert line.startswith(f"study {study}, arm {arm}: {field}.layer4 is ")
    changed = copy.deepcopy(entry)
    changed["eval"]["context_rates"][0] += 1
    (line,) = differences(study, arm, entry, changed)
    assert f"arm {arm}: eval.context_rates is " in line
    changed = copy.deepcopy(entry)
    del changed["macs"]
    assert differences(study, arm, entry, changed) == [
        f"study {study}, arm {arm}: macs is in the golden table but no longer measured"
    ]
