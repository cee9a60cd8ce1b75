"""Bad input, by class (issue 12): every class of mistake exits with status 2 and one line naming the field or
file, the value and what is allowed, before any work starts, and loses nothing. No training runs here: each
bad input is refused before the first step."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ablations.cli import main
from ablations.config import ConfigError, ExperimentConfig, load_config
from ablations.data.datasets import DatasetError, FolderSegmentation
from ablations.ioutil import check_name, check_writable_dir, load_yaml, redact
from ablations.report.papers import load_papers
from ablations.results import ResultsError, names
from ablations.results.names import run_metrics
from ablations.sweep.study import StudyError, load_study, parse_study, study_files

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pw"
# A study that resolves in milliseconds: two arms of a 1/8-width network on 64² synthetic images.
TINY_STUDY = """name: tiny
profile: quick
fixed:
  backbone.width: 0.125
  head.num_classes: 2
  data.image_size: 64
  data.crop_size: 64
  train.max_steps: 2
  train.val_every: null
axis: {name: os, key: backbone.output_stride, values: [8, 16]}
seeds: [0]
"""
# The sweep commands below check the tiny study's geometry before they fail; each arm's is computed once per process
# (ablations.geometry.cache).


def _one_line_error(capsys, argv, *needles: str, code: int = 2) -> str:
    """Run the CLI; it must exit with ``code`` and print exactly one line on stderr holding every needle."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    captured = capsys.readouterr()
    assert status == code, (status, captured.err[-2000:])
    err = captured.err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and err.startswith("ablations"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY)
    return path


def _study(**fields) -> dict:
    raw = load_yaml(TINY_STUDY, "test")
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


# --------------------------------------------------------------------------------------------------------------
# Security: no password of a storage URL is ever printed, stored or logged.

URLS = [
    f"postgresql://user:{SECRET}@127.0.0.1:1/db",
    f"postgresql://user@127.0.0.1:1/db?password={SECRET}",
    f"postgresql://user@127.0.0.1:1/db?sslmode=require&sslpassword={SECRET}",
    f"mysql+pymysql://user@127.0.0.1:1/db?api_key={SECRET}&charset=utf8",
    f"postgresql://127.0.0.1:1/db?token={SECRET}",
    f"postgresql//user:{SECRET}@127.0.0.1/db",  # malformed: SQLAlchemy's parse error quotes it
]


@pytest.mark.parametrize("url", URLS)
def test_redact_hides_the_password_of_every_url_form(url):
    shown = redact(url)
    assert SECRET not in shown and "***" in shown
    assert "127.0.0.1" in shown  # where it points stays readable
    assert SECRET not in redact(f"cannot connect to '{url}' (refused)")  # inside a message too
    assert redact(f"--storage {url}: refused").endswith(": refused")  # and the message around it is kept
    assert redact("sqlite:////tmp/a/optuna.db") == "sqlite:////tmp/a/optuna.db"


@pytest.mark.parametrize("url", URLS[:3] + URLS[5:])
def test_sweep_and_report_never_print_a_storage_password(capsys, tiny_study, tmp_path, url):
    err = _one_line_error(
        capsys, ["sweep", str(tiny_study), "--storage", url, "--out", str(tmp_path / "run")], "--storage"
    )
    assert SECRET not in err
    err = _one_line_error(
        capsys, ["report", "--storage", url, "--study", "tiny", "--sweeps", str(tmp_path), "--out",
                 str(tmp_path / "reports"), "--no-wandb"], "storage",
    )  # fmt: skip
    assert SECRET not in err
    assert not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------------------------------------------
# Non-finite numbers: no config or study field accepts inf or nan.


def _float_fields(cls=ExperimentConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _float_fields(hint, f"{prefix}{f.name}.")
            continue
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple) else ()
        if hint is float or float in args:
            yield f"{prefix}{f.name}"


FLOAT_FIELDS = sorted(_float_fields())


def test_the_float_fields_are_found():
    assert {"train.lr", "train.weight_decay", "data.scale_max", "eval.scales", "backbone.width"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("key", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_config_field_refuses_inf_and_nan(key, value):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[(key, value)])
    message = str(error.value)
    assert message.startswith(f"{key}=") and "finite" in message, message
    assert ("nan" if math.isnan(value) else "inf") in message


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_the_command_line_refuses_non_finite_values(capsys, value):
    _one_line_error(capsys, ["describe", "--set", f"train.lr={value}"], "train.lr=", "0 < lr ≤ 100", "finite")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_effect": math.inf}, "min_effect=inf: a finite number > 0"),
        ({"min_effect": math.nan}, "min_effect=nan"),
        ({"fixed": {"train.lr": math.inf}}, "train.lr=inf: 0 < lr ≤ 100"),
        ({"fixed": {"train.momentum": math.nan}}, "train.momentum=nan"),
        ({"axis": None, "search_space": {"train.lr": {"low": math.nan, "high": 0.1}}, "budget": 2}, "low=nan"),
        ({"axis": None, "search_space": {"train.lr": {"low": 1e-3, "high": math.inf}}, "budget": 2}, "high=inf"),
        ({"axis": None, "search_space": {"train.lr": {"low": 1e-3, "high": 0.1}}, "budget": 1.5}, "budget=1.5"),
        ({"axis": None, "search_space": {"train.lr": {"low": 1e-3, "high": 0.1}}, "budget": math.inf}, "budget=inf"),
        ({"pruner": {"kind": "percentile", "percentile": math.inf}}, "percentile=inf"),
        ({"pruner": {"kind": "median", "startup_trials": -1}}, "startup_trials=-1: an integer ≥ 0"),
        ({"pruner": {"kind": "hyperband", "min_resource": 0.5}}, "min_resource=0.5: an integer ≥ 1"),
    ],
)
def test_every_numeric_study_field_is_finite_and_in_range(fields, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        parse_study(_study(**fields))


# --------------------------------------------------------------------------------------------------------------
# File-system trouble: every path the tool reads or writes is checked before work starts.


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("backbone: {name: r\xe9snet}\n".encode("latin-1"))
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"file": afile, "binary": binary, "latin1": latin, "folder": folder, "missing": tmp_path / "missing.yaml"}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "cannot be read (no such file)"),
        ("folder", "cannot be read (a folder; expected a file)"),
        ("binary", "is a binary file (NUL byte at offset 0)"),
        ("latin1", "is not UTF-8 text"),
    ],
)
def test_config_and_study_paths_must_be_text_files(capsys, files, kind, message):
    path = str(files[kind])
    _one_line_error(capsys, ["describe", "--config", path], f"config file {path!r}: {message}")
    _one_line_error(capsys, ["sweep", path, "--out", str(files["folder"] / "run")], f"study {path!r}: {message}")
    assert not (files["folder"] / "run").exists()


def test_out_that_is_a_file_or_under_a_file_is_refused_before_work(capsys, files, tiny_study):
    afile = files["file"]
    _one_line_error(capsys, ["train", "--profile", "quick", "--out", str(afile)], "--out", str(afile), "is a file")
    _one_line_error(capsys, ["sweep", str(tiny_study), "--out", str(afile / "run")], "--out", "cannot be created")
    _one_line_error(capsys, ["report", "--out", str(afile), "--no-wandb"], "--out", "is a file")
    _one_line_error(capsys, ["report", "--data", str(afile), "--out", str(files["folder"]), "--no-wandb"], "--data")
    assert afile.read_text() == "keep me\n"  # nothing lost


def test_an_unwritable_folder_is_refused(tmp_path):
    # Root may write anywhere that exists, so the unwritable folder here is one on a read-only file system.
    target = Path("/proc/ablations-test-run")
    with pytest.raises(ConfigError, match="cannot be written"):
        check_writable_dir("--out", target, ConfigError)
    assert not target.exists()
    check_writable_dir("--out", tmp_path / "new" / "deep", ConfigError)  # can be created: fine, creates nothing
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())


def test_report_folders_are_checked(capsys, files, tmp_path):
    out = str(tmp_path / "reports")
    _one_line_error(capsys, ["report", "--runs", str(files["file"]), "--out", out, "--no-wandb"], "--runs", "is a file")
    _one_line_error(capsys, ["report", "--runs", str(tmp_path / "no"), "--out", out, "--no-wandb"], "no such folder")
    _one_line_error(capsys, ["report", "--sweeps", str(files["file"]), "--out", out, "--no-wandb"], "--sweeps")
    assert not Path(out).exists()


def test_bench_out_is_checked_before_timing(capsys, files):
    argv = ["bench", "--input-size", "32", "32", "--set", "backbone.width=0.125", "--iters", "1", "--repeats", "1"]
    _one_line_error(capsys, [*argv, "--out", str(files["folder"])], "--out", "is a folder")
    _one_line_error(capsys, [*argv, "--out", str(files["file"] / "bench.md")], "--out", "cannot be created")


@pytest.mark.parametrize("kind", ["missing", "folder", "file", "binary"])
def test_evaluate_checkpoint_path(capsys, files, kind):
    path = str(files[kind])
    needle = {"missing": "no such file", "folder": "a folder"}.get(kind, "cannot be loaded")
    _one_line_error(capsys, ["evaluate", path], f"checkpoint {path!r}" if kind in ("missing", "folder") else path,
                    needle)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Study semantics at load: objectives name a metric a run records; every field has its type and range.


def test_an_objective_no_run_records_fails_at_load_with_a_hint(tiny_study):
    raw = _study(objectives=[{"metric": "val/miou", "direction": "maximize"}])
    with pytest.raises(StudyError, match=r"objective metric='val/miou': no trial .* did you mean 'val/mIoU'"):
        parse_study(raw)
    for metric in ("val/IoU/disk", "val/mIoU_small", "infer/images_per_s", "params", "macs", "receptive_field"):
        parse_study(_study(objectives=[{"metric": metric, "direction": "minimize"}]))
    with pytest.raises(StudyError, match="val/IoU/cat"):
        parse_study(_study(objectives=[{"metric": "val/IoU/cat"}]))  # not a class of this dataset
    with pytest.raises(StudyError, match="val/mIoU_small"):  # per-size mIoU is the embedded benchmark's only
        parse_study(_study(objectives=["val/mIoU_small"], fixed={"data.name": "voc", "head.num_classes": 21}))


def test_every_metric_the_recorded_trials_hold_is_an_allowed_objective():
    """The committed trial data was recorded by real runs: each of its numeric metrics must stay allowed."""
    checked = 0
    for path in study_files(ROOT / "sweeps"):
        csv = ROOT / "reports" / "data" / f"{path.stem}.csv"
        if not csv.is_file():
            continue
        study = load_study(path, profile="quick")
        config = study.resolve(study.arms[0].label if study.arms else None, study.seeds[0])
        df = pd.read_csv(csv)
        skip = {*names.TRIAL_COLUMNS, names.COMMIT, names.INFER_ERROR}
        recorded = {
            c for c in df.columns
            if c not in skip and not c.startswith(names.PARAM) and pd.api.types.is_numeric_dtype(df[c])
            and df[c].notna().any() and c not in (names.CHANNELS_LAST, names.COMPILE, names.ONEDNN)
        }  # fmt: skip
        missing = recorded - run_metrics(config)
        assert not missing, (path.stem, sorted(missing))
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"objectives": [{"metric": "val/mIoU", "direction": "maximise"}]}, "direction='maximise'"),
        ({"objectives": "val/mIoU"}, "objectives='val/mIoU': a non-empty list"),
        ({"objectives": []}, "objectives=[]"),
        ({"objectives": ["val/mIoU", "val/mIoU"]}, "each metric at most once"),
        ({"objectives": [{"metric": "val/mIoU", "goal": "max"}]}, "unknown field(s) ['goal']"),
        ({"seed": [0]}, "unknown field(s) ['seed']"),
        ({"name": ".."}, "name='..'"),
        ({"name": "a/b"}, "name='a/b'"),
        ({"base": 3}, "base=3"),
        ({"description": ["a"]}, "description=['a']"),
        ({"sampler": ["tpe"]}, "sampler=['tpe']"),
        ({"seeds": [0, 0]}, "seeds=[0, 0]"),
        ({"seeds": [-1]}, "seeds=-1: an integer 0 … 4294967295"),
        ({"baseline": "32"}, "baseline='32': one of the arms"),
        ({"pruner": {"kind": "median", "n_startup_trials": 3}}, "unknown setting(s) ['n_startup_trials']"),
        ({"pruner": {"kind": "fast"}}, "pruner={'kind': 'fast'}"),
        ({"axis": None, "search_space": ["train.lr"], "budget": 2}, "search_space=['train.lr']"),
        ({"axis": None, "search_space": {"train.lr": {"low": 1e-3, "high": 0.1, "logg": True}}, "budget": 2},
         "unknown field(s) ['logg']"),
        ({"axis": None, "search_space": {"train.max_steps": {"low": 1, "high": 4, "int": "yes"}}, "budget": 2},
         "int='yes': expected true or false"),
        ({"axis": None, "search_space": {"train.max_steps": {"low": 1.5, "high": 4, "int": True}}, "budget": 2},
         "int: true needs whole numbers"),
    ],
)  # fmt: skip
def test_every_study_field_is_checked_at_load(fields, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        parse_study(_study(**fields))


def test_a_bad_objective_exits_2_before_any_trial(capsys, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(TINY_STUDY + "objectives: [{metric: val/miou}]\n")
    _one_line_error(capsys, ["sweep", str(path), "--out", str(tmp_path / "run")], "val/miou", "did you mean")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------------------
# YAML duplicate keys: an error everywhere YAML is read, with the file and line.


def test_load_yaml_refuses_duplicate_keys_with_the_line():
    with pytest.raises(ValueError, match=r"x.yaml: duplicate key 'a' at line 3 \(first at line 1\)"):
        load_yaml("a: 1\nb: 2\na: 3\n", "x.yaml")
    with pytest.raises(ValueError, match="duplicate key 'k' at line 2"):
        load_yaml("top:\n  {k: 1, k: 2}\n", "x.yaml")
    assert load_yaml("base: &b {a: 1, b: 2}\nuse: {<<: *b, a: 3}\n", "x.yaml")["use"] == {"a": 3, "b": 2}


def test_duplicate_keys_fail_in_configs_studies_overrides_and_papers(capsys, tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text("backbone:\n  output_stride: 8\n  output_stride: 16\n")
    _one_line_error(capsys, ["describe", "--config", str(config)], "duplicate key 'output_stride' at line 3")
    study = tmp_path / "arms.yaml"
    study.write_text(
        TINY_STUDY.replace(
            "axis: {name: os, key: backbone.output_stride, values: [8, 16]}",
            "axis:\n  name: ctx\n  arms:\n    a: {context.kind: aspp}\n    b: {context.kind: none}\n"
            "    a: {context.kind: largefov}",
        )
    )
    _one_line_error(capsys, ["sweep", str(study), "--out", str(tmp_path / "run")], "duplicate key 'a' at line")
    _one_line_error(capsys, ["describe", "--set", "backbone.hdc={layer3: 1, layer3: 2}"], "duplicate key 'layer3'")
    papers = tmp_path / "papers.yaml"
    papers.write_text('- study: toy\n  paper: P\n  table: T\n  values: {"8": 75.0, "16": 73.0, "8": 70.0}\n')
    with pytest.raises(ResultsError, match=r"papers.yaml'?: duplicate key '8' at line 4"):
        load_papers(papers)
    assert not (tmp_path / "run").exists()


def test_no_module_parses_yaml_without_the_unique_key_loader():
    pattern = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load)\(")
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "ablations").rglob("*.py")
        if p.name != "ioutil.py" and pattern.search(p.read_text())
    ]  # fmt: skip
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------------------------
# Names that become file or folder names.


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "..", ".", "", "  ", "a\x00b", "tab\there"])
def test_names_with_separators_are_refused(capsys, tiny_study, tmp_path, name):
    with pytest.raises(ValueError):
        check_name("--study-name", name)
    _one_line_error(capsys, ["sweep", str(tiny_study), "--study-name", name, "--out", str(tmp_path / "run")],
                    "--study-name")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written, nowhere
    assert check_name("--study-name", "multigrid-v2.1_a") == "multigrid-v2.1_a"


# --------------------------------------------------------------------------------------------------------------
# data.check=full decodes the images, not only the masks.


@pytest.fixture
def corrupt_folder(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{i}.png"
            )
            Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8), mode="L").save(
                root / "masks" / split / f"{i}.png"
            )
    bad = root / "images" / "train" / "1.png"
    bad.write_bytes(bad.read_bytes()[:120])  # the header survives, the pixels do not
    return root, bad


def test_full_check_decodes_every_image(corrupt_folder):
    root, bad = corrupt_folder
    FolderSegmentation(root, "train", num_classes=3, check="headers")  # the header alone looks fine
    with pytest.raises(DatasetError, match=re.escape(f"image {bad} cannot be decoded")):
        FolderSegmentation(root, "train", num_classes=3, check="full")


def test_a_corrupt_image_stops_training_before_the_first_step(capsys, corrupt_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    root, bad = corrupt_folder
    out = tmp_path / "run"
    sets = ["data.name=folder", f"data.root={root}", "head.num_classes=3", "data.crop_size=32", "data.batch_size=1",
            "data.num_workers=0", "backbone.width=0.125", "train.max_steps=1", "context.channels=8"]  # fmt: skip
    _one_line_error(capsys, ["train", *[a for s in sets for a in ("--set", s)], "--out", str(out)], str(bad))
    assert not (out / "metrics.json").exists()


# --------------------------------------------------------------------------------------------------------------
# What a new user mistypes on the command line: one line each, status 2.


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["describe", "--set", "backbone.depth=50"], "unknown key"),
        (["describe", "--set", "backbone.output_stride=sixteen"], "expected an integer"),
        (["describe", "--set", "train.max_steps=1.5"], "expected an integer"),
        (["describe", "--set", "backbone.output_stride"], "expected KEY=VALUE"),
        (["describe", "--profile", "fast"], "invalid choice: 'fast'"),
        (["sweep", "sweeps/multigrid.yaml", "--workers", "0"], "--workers: 0 must be 1 …"),
        (["sweep", "sweeps/multigrid.yaml", "--seeds", "0,0"], "distinct integers"),
        (["sweep", "sweeps/multigrid.yaml", "--seeds", "a"], "expected integers"),
        (["sweep", "sweeps/multigrid.yaml", "--set", "backbone.multi_grid=1,2,4"], "which the study varies"),
        (["report", "--study", "nope", "--no-wandb"], "study 'nope': no study file"),
        (["report", "--format", "pdf", "--no-wandb"], "unknown ['pdf']"),
        (["bench", "--batch-sizes", "0"], "--batch-sizes"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_common_mistakes_give_one_line(capsys, monkeypatch, tmp_path, argv, needle):
    monkeypatch.chdir(ROOT)
    _one_line_error(capsys, argv, needle)


# --------------------------------------------------------------------------------------------------------------
# Seeds and integers that reach a library: the range the libraries accept, refused in one line before any work.


def _seed_fields(cls=ExperimentConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _seed_fields(hints[f.name], f"{prefix}{f.name}.")
        elif "seed" in f.name:
            yield f"{prefix}{f.name}"


SEED_FIELDS = list(_seed_fields())


def test_the_seed_range_is_the_one_the_libraries_accept():
    from lightning.fabric.utilities.seed import max_seed_value, min_seed_value

    from ablations.config import SEED_MAX

    assert (min_seed_value, max_seed_value) == (0, SEED_MAX) == (0, 2**32 - 1)
    np.random.seed(SEED_MAX)  # the legacy generator seed_everything seeds: 0 … 2**32 − 1
    with pytest.raises(ValueError):
        np.random.seed(SEED_MAX + 1)
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    assert SEED_FIELDS == ["data.seed", "train.seed"]


@pytest.mark.parametrize("key", SEED_FIELDS)
def test_every_seed_field_accepts_exactly_0_to_2_32_minus_1(key):
    for good in (0, 2**32 - 1):
        load_config(overrides=[(key, good)])
    for bad in (-1, 2**32, 2**64):
        with pytest.raises(ConfigError, match=re.escape(f"{key}={bad}: an integer 0 … 4294967295")):
            load_config(overrides=[(key, bad)])


def test_a_negative_training_seed_is_one_line_before_training(capsys, tmp_path):
    argv = ["train", "--profile", "quick", "--set", "train.seed=-1", "--out", str(tmp_path / "run")]
    _one_line_error(capsys, argv, "train.seed=-1", "0 … 4294967295")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seeds", ["99999999999", "0,4294967296", "-1"])
def test_sweep_seeds_out_of_range_are_one_line_before_anything_is_created(capsys, monkeypatch, tmp_path, seeds):
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", str(ROOT / "sweeps" / "multigrid.yaml"), f"--seeds={seeds}"]
    _one_line_error(capsys, argv, "--seeds", repr(seeds), "0 … 4294967295")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seeds", [[-1], [0, 2**32], [99999999999]])
def test_study_file_seeds_out_of_range_are_refused_at_load(seeds):
    bad = next(s for s in seeds if not 0 <= s < 2**32)
    with pytest.raises(StudyError, match=re.escape(f"seeds={bad}: an integer 0 … 4294967295")):
        parse_study(_study(seeds=seeds))
    parse_study(_study(seeds=[0, 2**32 - 1]))


def test_the_largest_seed_is_suggested_under_a_study_stored_with_the_old_seed_range(tmp_path):
    # Grid trials suggested "seed" in 0 … 2**31 − 1 before; a stored study keeps that distribution. Optuna compares
    # a parameter's distributions by kind and log scale only, so the wider range and its largest seed go on.
    import optuna
    from optuna.trial import TrialState

    from ablations import sweep
    from ablations.sweep.trial import _suggest

    study = parse_study(_study(seeds=[0, 2**32 - 1]))
    board = sweep.open_study(study, sweep.open_storage(f"sqlite:///{tmp_path / 'old.db'}"), "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna: a heartbeat storage is meant for Study.optimize
        old = board.study.ask()
    old.suggest_categorical("arm", list(study.arm_labels))
    old.suggest_int("seed", 0, 2**31 - 1)
    board.study.tell(old, values=[0.5])
    sweep.top_up(study, board)
    seeds = []
    while (trial := sweep.claim(study, board)) is not None:
        seeds.append(_suggest(study, trial)[1])
        board.study.tell(trial, values=[0.5])
    assert sorted(seeds) == [0, 0, 2**32 - 1, 2**32 - 1]
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'old.db'}")
    assert {t.params["seed"] for t in stored.get_trials(states=(TrialState.COMPLETE,))} >= {2**32 - 1}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.max_objects=18446744073709551616", "data.max_objects=18446744073709551616"),
        ("train.max_steps=9223372036854775808", "train.max_steps=9223372036854775808"),
        ("context.rates=6,12,99999999999999999999", "context.rates=[6, 12, 99999999999999999999]"),
    ],
)
def test_an_integer_beyond_64_bits_is_one_line(capsys, override, needle):
    # torch, NumPy and Lightning hold integers in 64 bits; beyond that they fail deep inside with an overflow.
    _one_line_error(capsys, ["describe", "--set", override], needle, "a 64-bit integer")


def test_an_input_size_beyond_64_bits_is_one_line(capsys):
    _one_line_error(capsys, ["describe", "--input-size", "1", str(2**63)], "--input-size", "2**63 − 1")


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "mps"])
def test_an_accelerator_this_machine_lacks_is_one_line_before_training(capsys, tmp_path, accelerator):
    import torch

    if accelerator != "mps" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if accelerator == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    argv = ["train", "--profile", "quick", "--set", f"train.accelerator={accelerator}", "--out", str(tmp_path / "r")]
    _one_line_error(capsys, argv, f"train.accelerator={accelerator!r}", "use auto or cpu")
    assert not (tmp_path / "r").exists()


def test_more_gpus_than_the_machine_has_is_one_line(monkeypatch):
    import torch

    from ablations.training.train import check_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    config = load_config(overrides=["train.accelerator=gpu", "train.devices=3"])
    with pytest.raises(ConfigError, match=re.escape("train.devices=3: allowed 1 … 2")):
        check_devices(config.train)
    check_devices(load_config(overrides=["train.accelerator=gpu", "train.devices=2"]).train)


# --------------------------------------------------------------------------------------------------------------
# The group-sequential design: every bad value is one line naming it, exit 2, before anything is created.


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--until-resolved", "--looks", "3,3,12"], ["--until-resolved: looks=[3, 3, 12]", "strictly increasing"]),
        (["--until-resolved", "--looks", "1,6"], ["looks=[1, 6]", "at least 2 seeds"]),
        (["--until-resolved", "--looks", "3,6,12", "--max-seeds", "8"], ["looks=[3, 6, 12]", "max_seeds=8"]),
        (["--until-resolved", "--alpha", "0.5"], ["alpha=0.5", "0 < alpha < 0.5"]),
        (["--until-resolved", "--alpha", "-0.1"], ["alpha=-0.1", "0 < alpha < 0.5"]),
        (["--until-resolved", "--boundary", "bonferroni"], ["boundary='bonferroni'", "obrien-fleming"]),
        (["--looks", "3,6"], ["--looks: options of a sequential design; add --until-resolved"]),
        (["--until-resolved", "--max-minutes", "0"], ["--max-minutes 0", "> 0"]),
    ],
)
def test_a_bad_sequential_design_is_one_line_before_anything_is_created(capsys, tmp_path, tiny_study, args, needles):
    _one_line_error(capsys, ["sweep", str(tiny_study), "--out", str(tmp_path / "run"), *args], *needles)
    assert not (tmp_path / "run").exists()


def test_a_design_on_a_search_study_is_refused(capsys, tmp_path):
    search = _study(axis=None, search_space={"train.lr": {"low": 1e-3, "high": 0.1}}, budget=2)
    with pytest.raises(StudyError, match=re.escape("a sequential design needs arms to compare")):
        parse_study({**search, "sequential": {}})
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    _one_line_error(capsys, ["sweep", str(path), "--out", str(tmp_path / "run"), "--until-resolved"],
                    "--until-resolved: a sequential design needs arms to compare")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"looks": [6, 3]}, "sequential: looks=[6, 3]: seed counts must be strictly increasing"),
        ({"alpha": 1}, "sequential: alpha=1: a number with 0 < alpha < 0.5"),
        ({"look": [3, 6]}, "sequential: unknown field(s) ['look']"),
        ([3, 6, 12], "sequential: [3, 6, 12]: a mapping"),
    ],
)
def test_the_study_files_sequential_block_is_checked_at_load(block, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        parse_study(_study(sequential=block))
