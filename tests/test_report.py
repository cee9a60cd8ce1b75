"""``ablations report`` end to end on storages built from Optuna trials (no training): the pages, tables and
figures, byte-identical regeneration from the committed CSVs, the papers beside ours, bad input, and the W&B
report run written offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest

from ablations.cli import main
from ablations.report.papers import direction
from ablations.results import stats
from tests.results_fixtures import ARMS, add_trial, grid_storage

TOY = """name: toy
description: Multi-grid at OS 16 (two arms). A test study.
profile: quick
fixed: {backbone.output_stride: 16}
axis: {name: multi_grid, key: backbone.multi_grid, values: [[1, 1, 1], [1, 2, 1]]}
seeds: [0, 1, 2]
min_effect: 0.01
"""
PAPERS = """- study: toy
  paper: DeepLab v3 (arXiv:1706.05587)
  table: Table 5
  setup: ResNet-101, VOC
  values: {"(1,1,1)": 75.36, "(1,2,1)": 75.93}
"""
BETTER = {ARMS[0]: [0.80, 0.81, 0.82], ARMS[1]: [0.850, 0.862, 0.868]}

# Every report here checks the toy study's geometry; each arm's is computed once per process (ablations.geometry.cache).


@pytest.fixture(scope="module")
def toy_storage(tmp_path_factory) -> Path:
    """The toy study's SQLite storage, built once; each test gets a copy of the file."""
    folder = tmp_path_factory.mktemp("toy-storage")
    grid_storage(folder, "toy", BETTER)
    return folder / "optuna.db"


@pytest.fixture
def project(tmp_path, monkeypatch, toy_storage):
    """A project folder: sweeps/toy.yaml, reports/papers.yaml, runs/sweeps/toy/optuna.db; cwd there."""
    import shutil

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "toy.yaml").write_text(TOY)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "papers.yaml").write_text(PAPERS)
    (tmp_path / "runs" / "sweeps" / "toy").mkdir(parents=True)
    shutil.copyfile(toy_storage, tmp_path / "runs" / "sweeps" / "toy" / "optuna.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    return tmp_path


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_writes_pages_tables_figures_and_regenerates_byte_identically(project, capsys):
    assert main(["report", "--no-wandb", "--format", "md,csv,tex"]) == 0
    reports = project / "reports"
    page = (reports / "toy.md").read_text()
    assert "**best: (1,2,1) (resolved better than every other arm)" in page
    assert "| (1,2,1) " in page and "better" in page
    assert "0.8100 ± 0.0100" in page and "s0 0.8000 · s1 0.8100 · s2 0.8200" in page
    assert "DeepLab v3 (arXiv:1706.05587), Table 5" in page and "+0.57" in page and "reproduced" in page
    assert "train a resnet50 ×0.25 from scratch" in page
    # geometry at the quick crop: (1,2,1)'s rate-4 unit on the 6×6 map keeps 0.31 of its taps
    assert "layer4.1.conv2 r4 on 6×6: 0.31" in page
    for name in ("toy-seeds.png", "toy-forest.png", "toy-cost.png"):
        assert (reports / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (reports / "tables" / "toy.tex").read_text().startswith("\\begin{tabular}")
    index = (reports / "README.md").read_text()
    assert "[toy](toy.md)" in index and "best: (1,2,1)" in index
    data = (reports / "data" / "toy.csv").read_text().splitlines()
    assert data[0].startswith("trial,state,arm,seed,failure,duration_s") and len(data) == 7
    first = files(reports)

    # A fresh clone: no storage, only the committed data. The same bytes come out, figures included.
    import shutil

    shutil.rmtree(project / "runs")
    for generated in ("toy.md", "README.md", "figures", "tables"):
        target = reports / generated
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert main(["report", "--no-wandb", "--format", "md,csv,tex"]) == 0
    assert files(reports) == first


def test_inconclusive_arms_are_never_called_best(project):
    grid_storage(project / "runs" / "sweeps" / "toy", "toy2", {})  # another study in the file is ignored
    optuna.delete_study(study_name="toy", storage=f"sqlite:///{project / 'runs/sweeps/toy/optuna.db'}")
    grid_storage(project / "runs" / "sweeps" / "toy", "toy", {ARMS[0]: [0.80, 0.81], ARMS[1]: [0.90, 0.91]})
    assert main(["report", "--no-wandb"]) == 0
    page = (project / "reports" / "toy.md").read_text()
    assert "no arm is resolved best" in page and "(best)" not in page
    assert "inconclusive" in page


def test_failed_pruned_and_interrupted_trials_are_counted_in_the_page(project):
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{project / 'runs/sweeps/toy/optuna.db'}")
    add_trial(study, ARMS[1], 3, state="FAIL", failure="out_of_memory")
    add_trial(study, ARMS[0], 4, state="PRUNED")
    add_trial(study, ARMS[0], 5, state="FAIL", failure="interrupted")
    assert main(["report", "--no-wandb"]) == 0
    page = (project / "reports" / "toy.md").read_text()
    assert re.search(r"\| \(1,2,1\)[^|]*\| 3, 1 failed \(out_of_memory\) ", page)
    assert re.search(r"\| \(1,1,1\)[^|]*\| 3, 1 pruned, 1 interrupted ", page)
    assert "**trials** 9 (6 complete, 2 fail, 1 pruned)" in page


def test_the_sweep_table_and_the_report_use_one_verdict(project, capsys):
    assert main(["sweep", "sweeps/toy.yaml", "--table-only"]) == 0
    table = capsys.readouterr().out
    assert "best: (1,2,1) (resolved better than every other arm)" in table
    assert "better" in table and "Verdicts: Δ = arm − baseline at the trials' last step, paired by seed" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "nowhere"], "--runs 'nowhere': no such folder"),
        (["--runs", "empty"], "--runs empty: no study storage"),
        (["--study", "nope"], "study 'nope': no study file sweeps/nope.yaml"),
        (["--format", "md,pdf"], "--format md,pdf: unknown ['pdf']"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(project, capsys, argv, message):
    (project / "empty").mkdir()
    assert main(["report", "--no-wandb", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (project / "reports" / "toy.md").exists() and not (project / "reports" / "data").exists()


def test_a_csv_with_a_missing_column_is_named(project, capsys):
    import shutil

    shutil.rmtree(project / "runs")
    (project / "reports" / "data").mkdir()
    (project / "reports" / "data" / "toy.csv").write_text("trial,state,arm\n0,COMPLETE,(1,1,1)\n")
    assert main(["report", "--no-wandb"]) == 2
    assert "toy.csv: missing column(s) ['seed', 'failure', 'duration_s', 'val/mIoU']" in capsys.readouterr().err
    assert not (project / "reports" / "toy.md").exists()


def test_a_study_with_only_failed_trials_is_refused(project, capsys):
    url = f"sqlite:///{project / 'runs/sweeps/toy/optuna.db'}"
    optuna.delete_study(study_name="toy", storage=url)
    study = optuna.create_study(study_name="toy", storage=url, direction="maximize")
    add_trial(study, ARMS[0], 0, state="FAIL", failure="diverged")
    assert main(["report", "--no-wandb"]) == 2
    assert "study 'toy': no complete trial to report (trials by state: {'FAIL': 1})" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("baseline: (9,9,9)\n", "baseline='(9,9,9)': one of the arms ['(1,1,1)', '(1,2,1)']"),
        ("min_effect: 0\n", "min_effect=0: a finite number > 0"),
        ("min_effect: -0.01\n", "min_effect=-0.01: a finite number > 0"),
    ],
)
def test_bad_study_fields_for_the_report_exit_2(project, capsys, line, message):
    (project / "sweeps" / "toy.yaml").write_text(TOY.replace("min_effect: 0.01\n", line))
    assert main(["report", "--no-wandb"]) == 2
    assert message in capsys.readouterr().err


def test_the_wandb_report_run_is_written_offline_with_its_tables(project):
    assert main(["report"]) == 0
    runs = sorted((project / "wandb-dir").rglob("offline-run-*"))
    assert len(runs) == 1
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in runs[0].rglob("*.table.json")}
    assert {"trials", "arms", "comparisons"} <= set(tables)
    arm_rows = tables["arms"]["data"]
    columns = tables["arms"]["columns"]
    assert [row[columns.index("arm")] for row in arm_rows] == ["(1,1,1)", "(1,2,1) (best)"]
    # The run record (protobuf) holds the job type, the group and the study's comparison settings.
    record = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"report-toy" in record and b"min_effect" in record and b"report" in record


def test_direction_of_our_verdict_against_the_paper():
    assert direction(+1.57, stats.BETTER, 1.0) == "reproduced"
    assert direction(+1.57, stats.WORSE, 1.0) == "opposite"
    assert direction(+3.0, stats.EQUIVALENT, 1.0) == "not reproduced (equivalent here)"
    assert direction(+0.2, stats.EQUIVALENT, 1.0) == "consistent (both below min_effect)"
    assert direction(+1.2, stats.INCONCLUSIVE, 1.0) == "unresolved"
    assert direction(+1.2, stats.NOT_MEASURABLE, 1.0) == "not measurable here"


def test_a_direction_is_claimed_only_as_far_as_both_verdicts_carry():
    # a paper's Δ under one point is within the papers' own seed spread: no direction either way
    assert direction(+0.57, stats.BETTER, 1.0) == "no direction (paper's |Δ| < 1 point)"
    assert direction(+0.9, stats.EQUIVALENT, 0.5) == "no direction (paper's |Δ| < 1 point)"
    # our interval admits |Δ| < min_effect: the verdict's sign, not its size, is resolved
    assert direction(+2.0, stats.WORSE, 1.0, clears=False) == "unresolved (our interval admits |Δ| < min_effect)"
    # a studied conv that sees only its centre tap: the network is not the paper's
    assert direction(+2.0, stats.BETTER, 1.0, unanswerable="r6 only a centre tap") == "not answerable here"


def test_an_arm_without_a_complete_run_is_listed_not_compared(project):
    url = f"sqlite:///{project / 'runs/sweeps/toy/optuna.db'}"
    optuna.delete_study(study_name="toy", storage=url)
    grid_storage(project / "runs" / "sweeps" / "toy", "toy", {ARMS[0]: [0.80, 0.81, 0.82]})
    study = optuna.load_study(study_name="toy", storage=url)
    add_trial(study, ARMS[1], 0, state="FAIL", failure="diverged")
    assert main(["report", "--no-wandb"]) == 0
    page = (project / "reports" / "toy.md").read_text()
    assert re.search(r"\| \(1,2,1\) +\| 0, 1 failed \(diverged\) .*\| no complete run ", page)
    assert "nan" not in page


def test_bench_times_every_arm_interleaved_and_the_speed_columns_come_from_it(project):
    from ablations.report.build import generate

    # The bench times each arm's training step and evaluation at the study's crop and batch; what this test checks
    # does not depend on their size, so the toy study is shrunk to a 1/8-width network on 32² crops, batch 2.
    small = "backbone.width: 0.125, context.channels: 16, decoder.channels: 16, data.crop_size: 32, data.batch_size: 2"
    toy = TOY.replace("fixed: {backbone.output_stride: 16}", f"fixed: {{backbone.output_stride: 16, {small}}}")
    assert toy != TOY
    (project / "sweeps" / "toy.yaml").write_text(toy)
    generate(runs=Path("runs/sweeps"), bench=True, bench_repeats=1, wandb=False, printer=lambda line: None)
    speed = pd.read_csv(project / "reports" / "data" / "toy.speed.csv")
    assert list(speed.columns[:4]) == ["arm", "bench/train_images_per_s", "bench/infer_images_per_s",
                                       "bench/infer_latency_ms"]  # fmt: skip
    assert speed["arm"].tolist() == list(ARMS)
    assert (speed["bench/train_images_per_s"] > 0).all() and (speed["bench/infer_images_per_s"] > 0).all()
    meta = json.loads((project / "reports" / "data" / "toy.meta.json").read_text())
    assert (
        meta["speed_environment"]["device"].startswith("cpu") and "interleaved" in meta["speed_environment"]["method"]
    )
    method = meta["speed_environment"]["method"]
    assert "train batch 2" in method and "input 32×32" in method  # the study's crop and batch were timed
    page = (project / "reports" / "toy.md").read_text()
    assert "| train img/s " in page and "(trial)" not in page.split("## Δ")[0].split("Verdicts:")[0]
    assert "one interleaved `ablations bench` run over the arms on cpu" in page


SEARCH = """name: toysearch
description: A two-objective search. A test study.
profile: quick
search_space:
  backbone.output_stride: {choices: [8, 16, 32]}
sampler: nsga2
budget: 3
objectives:
  - {metric: val/mIoU, direction: maximize}
  - {metric: train/images_per_s, direction: maximize}
"""


def test_a_search_study_gets_its_pareto_front_from_seed_means_not_a_verdict(project):
    (project / "sweeps" / "toysearch.yaml").write_text(SEARCH)
    url = f"sqlite:///{project / 'runs/sweeps/toysearch/optuna.db'}"
    (project / "runs" / "sweeps" / "toysearch").mkdir(parents=True)
    study = optuna.create_study(study_name="toysearch", storage=url, directions=["maximize", "maximize"])
    for os_, miou, ips in [(8, 0.87, 60.0), (16, 0.83, 120.0), (32, 0.75, 100.0)]:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=[miou, ips],
            params={"backbone.output_stride": os_},
            distributions={"backbone.output_stride": optuna.distributions.CategoricalDistribution([8, 16, 32])},
            user_attrs={"arm": f"output_stride={os_}", "seed": 0,
                        "metrics": {"val/mIoU": miou, "train/images_per_s": ips}},
        ))  # fmt: skip
    assert main(["report", "--no-wandb", "--study", "toysearch"]) == 0
    page = (project / "reports" / "toysearch.md").read_text()
    assert "Pareto front over val/mIoU, train/images_per_s from seed means (2 of 3 points" in page
    front = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in page.splitlines()
             if line.startswith("| output_stride=")}  # fmt: skip
    assert front == {"output_stride=8": "yes", "output_stride=16": "yes", "output_stride=32": ""}
    assert "better" not in page and "(best)" not in page
    assert (project / "reports" / "figures" / "toysearch-front.png").is_file()


def test_a_crf_study_page_pairs_after_with_before_on_the_same_trials(tmp_path):
    """The committed crf trials (recorded with eval.crf): the page's CRF section, and the index of a --study run
    lists every study with data, not only the one rewritten."""
    import shutil

    from ablations.report.build import generate

    root = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    data.mkdir()
    for name in ("crf", "lr_policy"):
        for suffix in (".csv", ".meta.json"):
            shutil.copy(root / "reports" / "data" / f"{name}{suffix}", data / f"{name}{suffix}")
    generate(sweeps_dir=root / "sweeps", out_dir=tmp_path, papers_file=root / "reports" / "papers.yaml",
             study_names=["crf"], wandb=False, printer=lambda line: None)  # fmt: skip
    page = (tmp_path / "crf.md").read_text()
    assert "## The CRF's effect" in page and "65.76 → 69.84 (+4.08)" in page
    frame = pd.read_csv(tmp_path / "tables" / "crf.crf.csv")
    trials = pd.read_csv(data / "crf.csv")
    done = trials[trials["state"] == "COMPLETE"]
    for row in frame.to_dict("records"):
        arm = done[done["arm"] == row["arm"]]
        assert row["pairs"] == len(arm)
        assert row["delta"] == pytest.approx((arm["val/mIoU"] - arm["val/before_crf/mIoU"]).mean())
    index = (tmp_path / "README.md").read_text()
    assert "[crf](crf.md)" in index and "[lr_policy](lr_policy.md)" in index
    assert not (tmp_path / "lr_policy.md").exists()  # listed from its data, not rewritten


def test_a_started_study_without_a_complete_trial_is_left_out_not_fatal(project, capsys):
    """A second study whose sweep stopped in its first trial: the others are reported, it is listed as not run."""
    (project / "sweeps" / "other.yaml").write_text(TOY.replace("name: toy", "name: other"))
    url = f"sqlite:///{project / 'runs/sweeps/other/optuna.db'}"
    (project / "runs" / "sweeps" / "other").mkdir()
    study = optuna.create_study(study_name="other", storage=url, direction="maximize")
    add_trial(study, ARMS[0], 0, state="FAIL", failure="interrupted")
    assert main(["report", "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "study 'other': no complete trial to report (trials by state: {'FAIL': 1}); left out" in out
    index = (project / "reports" / "README.md").read_text()
    assert "[toy](toy.md)" in index and "| `other`" in index and not (project / "reports" / "other.md").exists()
    assert main(["report", "--no-wandb", "--study", "other"]) == 2  # named, it must have a result
