"""``ablations report``: every study's stored trials → ``reports/``.

Inputs, per study: the trial CSV ``<data>/<study>.csv`` (the source of truth; committed), refreshed from the
study's Optuna storage when one is given or found; the speed CSV ``<data>/<study>.speed.csv`` (one interleaved
bench run over the arms, written with ``--bench``); ``<data>/<study>.meta.json`` (where and when the data was
refreshed); the study file ``sweeps/<study>.yaml``; ``reports/papers.yaml``.

Outputs: ``<out>/<study>.md`` (question, setup, per-arm table with verdicts, Δ table, the papers side by side,
geometry, figures), ``<out>/README.md`` (one line per study), ``<out>/figures/<study>-*.png``,
``<out>/tables/<study>.{arms,comparisons}.csv`` and, with ``tex``, ``<out>/tables/<study>.tex``. Everything is
computed in memory first and written only when every study succeeded, each file through a temporary file and a
rename; the same inputs give the same bytes. With ``readme=``, the top-level README's results block is rebuilt
from the index (``readme_results``). The manual is ``docs/reports.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.ioutil import first_line
from ablations.report import figures
from ablations.report.papers import (
    DIRECTION_RULE,
    Published,
    crf_published,
    direction,
    load_papers,
    paper_frame,
    papers_for,
)
from ablations.results import names, noise, stats, tables
from ablations.results.frames import ResultsError, json_text, read_csv, read_meta, to_csv, write_atomic
from ablations.sweep.geometry import StudyGeometry, conv_label, study_geometry
from ablations.sweep.study import Study, StudyError, load_study
from ablations.sweep.summary import committed_floor

FORMATS = ("md", "csv", "tex")
PAPERS_CAVEAT = (
    "The papers trained ImageNet-pretrained networks (ResNet-101 unless the table says otherwise) on PASCAL VOC "
    "2012 (or Cityscapes) and report mIoU in %; these runs train {model} on {data}. Compare directions, "
    "not values."
)


@dataclass
class StudyReport:
    study: Study
    trials: pd.DataFrame
    meta: dict[str, Any]
    speed: pd.DataFrame | None = None
    geometry: StudyGeometry | None = None
    tables: dict[str, Any] = field(default_factory=dict)
    papers: list[tuple[Published, pd.DataFrame]] = field(default_factory=list)
    search: tuple[pd.DataFrame, list[str]] | None = None
    crf: pd.DataFrame | None = None  # the dense CRF's effect, where the trials ran it (eval.crf)
    floor: noise.NoiseFloor | None = None  # the profile's noise floor, where measured (not on the A/A study itself)

    @property
    def name(self) -> str:
        return self.study.name


# --------------------------------------------------------------------------------------------------------------
# Inputs


def find_storages(runs: Path) -> dict[str, str]:
    """``<runs>/<study>/optuna.db`` → ``{study: sqlite URL}``."""
    return {p.parent.name: f"sqlite:///{p.resolve()}" for p in sorted(runs.glob("*/optuna.db")) if p.stat().st_size}


def load_inputs(
    study_files: Sequence[Path],
    data_dir: Path,
    refreshed: dict[str, pd.DataFrame],
    profiles: dict[str, str | None],
    skipped: list[str] | None = None,
) -> list[tuple[Study, pd.DataFrame]]:
    """Each study with its trial frame: the refreshed one, else the CSV in ``data_dir``. With ``skipped`` (a list),
    a study whose trials hold no complete one yet (a sweep just started, or stopped in its first trial) is left
    out and its reason appended there, instead of failing the whole report."""
    out = []
    for path in study_files:
        # The profile the data was recorded with, not what `auto` would pick on this machine.
        profile = profiles.get(path.stem) or read_meta(data_dir / f"{path.stem}.meta.json").get("profile")
        try:
            study = load_study(path, profile=profile)
        except StudyError as error:
            raise ResultsError(str(error)) from None
        if study.name in refreshed:
            df = refreshed[study.name]
        else:
            csv = data_dir / f"{study.name}.csv"
            if not csv.is_file():
                continue
            df = read_csv(csv)
        if not len(df):
            raise ResultsError(f"study {study.name!r}: no trials in its data")
        if not (df[names.STATE] == names.COMPLETE).any():
            states = df[names.STATE].value_counts().to_dict()
            reason = f"study {study.name!r}: no complete trial to report (trials by state: {states})"
            if skipped is None:
                raise ResultsError(reason)
            skipped.append(reason)
            continue
        out.append((study, df))
    return out


# --------------------------------------------------------------------------------------------------------------
# Analysis


def with_design(study: Study, meta: dict) -> Study:
    """The study with the group-sequential design its data was run under (``meta["sequential"]``), if any."""
    from ablations.results.sequential import Design

    stored = meta.get("sequential")
    return dataclasses.replace(study, sequential=Design.from_dict(stored)) if stored else study


def analyse(
    study: Study,
    df: pd.DataFrame,
    meta: dict,
    speed: pd.DataFrame | None,
    papers: list[Published],
    floor: noise.NoiseFloor | None = None,
):
    study = with_design(study, meta)
    report = StudyReport(study, df, meta, speed, floor=floor)
    if study.is_grid:
        report.geometry = study_geometry(study)
        entries = papers_for(papers, study.name)
        answerable = unanswerable_arms(study, report.geometry)

        def published(comparisons: pd.DataFrame) -> pd.DataFrame | None:
            report.papers = [
                (e, paper_frame(e, comparisons, study.baseline, study.min_effect, unanswerable=answerable))
                for e in entries
            ]
            return report.papers[0][1] if report.papers else None

        report.tables = tables.study_tables(
            study, df, geometry=report.geometry, speed=speed, papers=published, floor=noise.value(floor)
        )
        df = tables.final_values(df, study)
        if names.MIOU_BEFORE_CRF in df.columns and df[names.MIOU_BEFORE_CRF].notna().any():
            frame = tables.crf_frame(
                df, study.arm_labels, min_effect=study.min_effect, published=crf_published(papers, study.name)
            )
            if len(frame):
                frame["direction"] = [
                    "not published"
                    if delta is None or pd.isna(delta)
                    else direction(
                        delta, v, 100 * study.min_effect, clears="admits |Δ| < min_effect" not in (note or "")
                    )
                    for delta, v, note in zip(frame["paper_delta"], frame["verdict"], frame["note"], strict=True)
                ]
            report.crf = frame if len(frame) else None
    else:
        objectives = [(o.metric, o.direction == "maximize") for o in study.objectives]
        report.search = tables.search_frame(df, objectives)
    return report


def unanswerable_arms(study: Study, geometry: StudyGeometry | None) -> dict[str, str]:
    """arm → why no direction is claimed for it against the paper: a studied conv of the arm or of the baseline is a
    1×1 conv in disguise at this crop (only its centre tap on the map), so the network is not the one the paper ran."""
    if geometry is None:
        return {}
    baseline = study.baseline or study.arm_labels[0]
    base = geometry.arms.get(baseline)
    out = {}
    for arm, g in geometry.arms.items():
        if arm == baseline:
            continue
        flat = [conv_label(n) for n in g.degenerate] + ([conv_label(n) for n in base.degenerate] if base else [])
        if flat:
            out[arm] = f"{', '.join(sorted(set(flat)))} only a centre tap at {geometry.crop}²"
    return out


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _baseline_config(study: Study):
    """The config every page describes: the baseline arm (a grid study) or the shared settings (a search)."""
    return study.resolve(study.baseline if study.is_grid else None, study.seeds[0])


def _setup(report: StudyReport) -> list[str]:
    study, df = report.study, report.trials
    config = _baseline_config(study)
    b, d, t = config.backbone, config.data, config.train
    crop = d.crop_size or d.image_size
    devices = sorted({str(x) for x in df.get(names.DEVICE, pd.Series(dtype=str)).dropna()})
    seeds = sorted({int(s) for s in df[names.SEED].dropna()})
    commits = sorted({str(c) for c in df.get(names.COMMIT, pd.Series(dtype=str)).dropna()})
    meta = report.meta
    lines = [
        f"- **Profile** `{study.profile}`; data `{d.name}` ({d.image_size}² images, {crop}² crops"
        + (f", shapes {list(d.shapes)}" if getattr(d, "shapes", None) else "")
        + ")",
        f"- **Model** {b.name} ×{b.width:g}, trained from "
        + ("ImageNet weights" if b.weights else "scratch")
        + f"; {t.max_steps} steps of batch {d.batch_size}, lr {t.lr:g}",
        f"- **Seeds** {', '.join(map(str, seeds))}; **trials** {len(df)} "
        f"({', '.join(f'{n} {s.lower()}' for s, n in df[names.STATE].value_counts().sort_index().items())})",
        f"- **Device** {', '.join(devices) or 'not recorded'}",
        f"- **Data** `reports/data/{study.name}.csv`"
        + (f", refreshed from `{meta['storage']}`" if meta.get("storage") else "")
        + (f" by commit `{meta['commit']}`" if meta.get("commit") else ""),
        f"- **Code** the trials ran at commit(s) {', '.join(f'`{c}`' for c in commits)}"
        if commits
        else "- **Code** the trials did not record their commit (sweeps before it was recorded)",
    ]
    if study.is_grid:
        lines.append(f"- **Baseline** `{study.baseline}`; **min_effect** {study.min_effect:g} mIoU")
        lines.append("- **" + tables.COMPARED_VALUE.format(metric=f"`{study.objectives[0].metric}`")
                     .replace(": ", "** ", 1))  # fmt: skip
        missing = tables.best_only(tables.final_values(df, study))
        if len(missing):
            lines.append(
                f"- **Left out** {len(missing)} trial(s) recorded before the last step's value was kept, whose best "
                "validation was not their last (trials " + ", ".join(map(str, missing[names.TRIAL])) + ")"
            )
        lines.append(f"- **Design** {tables.design_text(study, report.tables.get('compared'))}")
        if report.floor is not None:
            lines.append(f"- **Noise floor** {report.floor.text()}")
        elif study.name != noise.STUDY:
            lines.append(f"- **Noise floor** not measured for profile `{study.profile}` (`make sweep-{noise.STUDY}`)")
    return lines


def _model_text(study: Study) -> str:
    config = _baseline_config(study)
    weights = "from ImageNet weights" if config.backbone.weights else "from scratch"
    return f"a {config.backbone.name} ×{config.backbone.width:g} {weights}"


def _data_text(study: Study) -> str:
    d = _baseline_config(study).data
    if d.name == "synthetic":
        return f"the embedded synthetic benchmark at {d.crop_size or d.image_size}² crops"
    return f"{d.name} at {d.crop_size or d.image_size}² crops"


def comparison_display(
    comparisons: pd.DataFrame,
    floor: noise.NoiseFloor | None = None,
    *,
    sequential: bool = False,
    floors: dict[str, float] | None = None,
) -> pd.DataFrame:
    rows = []
    for r in comparisons.to_dict("records"):
        if r["verdict"] == stats.BASELINE:
            continue
        level = r.get("level")
        row = {
            "arm": r[names.ARM],
            "paired seeds": str(r.get("pairs", 0)),
            "Δ": tables.fmt_num(r.get("delta"), "+.4f"),
            "interval": "—" if tables.missing(r.get("low")) else f"[{r['low']:+.4f}, {r['high']:+.4f}]",
            "level": "—" if tables.missing(level) else f"{100 * level:.2f} %",
            "sd of Δ": tables.fmt_num(r.get("sd_diff"), ".4f"),
        }
        if floor is not None:
            applies = (floors or {}).get(r[names.ARM], floor.value) > 0
            row[f"|Δ| vs floor {floor.value:.4f}"] = (
                noise.for_column(floor, r.get("delta")) if applies else "n/a (same training run)"
            )
        if sequential:
            row["look"] = tables.fmt_num(r.get("look"), ".0f")
            row["p"] = tables.fmt_num(r.get("p"), ".2g")
            row["boundary p"] = tables.fmt_num(r.get("boundary_p"), ".2g")
        else:
            row["Holm p"] = tables.fmt_num(r.get("p_holm"), ".4f")
        row["verdict"] = r["verdict_label"]
        row["note"] = r.get("note") or ""
        rows.append(row)
    return pd.DataFrame(rows)


def geometry_display(geometry: StudyGeometry) -> pd.DataFrame:
    rows = []
    for arm, g in geometry.arms.items():
        rows.append(
            {
                "arm": arm,
                "feature map": "×".join(map(str, g.feature_size)),
                "studied convs (rate on map: valid taps)": "; ".join(
                    f"{conv_label(n)} r{g.convs[n]['dilation']} on {'×'.join(map(str, g.convs[n]['size']))}: "
                    f"{g.convs[n]['valid_taps']:.2f}"
                    for n in g.studied
                ) or "—",
                "degenerate (1×1)": str(len(g.degenerate)),
                "same network as": g.same_as or "—",
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def papers_display(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in frame.to_dict("records"):
        rows.append(
            {
                "arm": r[names.ARM],
                "paper mIoU %": r["paper_text"],
                "paper Δ (points)": r["paper_delta_text"],
                "our Δ (points)": tables.fmt_num(r.get("ours_delta_points"), "+.2f")
                if r["paper_delta_text"] != "—"
                else "—",
                "our verdict": r["verdict"],
                "direction": r["direction"],
            }
        )
    return pd.DataFrame(rows)


def speed_note(meta: dict) -> str:
    env = meta.get("speed_environment")
    if not env:
        return (
            "Speed columns are the trials' own figures (`(trial)`), taken minutes apart under whatever else the "
            "machine ran: a record, not a comparison. `ablations report --bench` measures all arms interleaved."
        )
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "torchvision") if k in env)
    return (
        f"Speed columns: one interleaved `ablations bench` run over the arms on {env.get('device')} ({versions}; "
        f"{env.get('method', '')}); the trials' own figures are kept in the data as a record."
    )


def render_study(report: StudyReport, formats: Sequence[str]) -> dict[str, bytes | str]:
    """``{relative path: content}`` for one study."""
    study, name = report.study, report.name
    out: dict[str, bytes | str] = {}
    title = f"{name}: {study.axis or 'search'}"
    lines = [f"# {title}", "", study.description or "", "", "## Setup", "", *_setup(report), ""]
    if study.is_grid:
        t, geometry = report.tables, report.geometry
        lines += ["## Result", "", f"**{tables.headline(study, t)}.**", ""]
        if geometry is not None:
            lines += [f"**Geometry:** {geometry.summary()}.", ""]
        rule = tables.verdict_rule(study, t.get("compared"))
        lines += [tables.render(t["display"], "md"), "", rule, "", speed_note(report.meta), ""]
        floors = tables.arm_floors(study, noise.value(report.floor))
        shown = comparison_display(t["comparisons"], report.floor, sequential=study.sequential is not None,
                                   floors=floors)  # fmt: skip
        lines += ["## Δ against the baseline", ""]
        if report.floor is not None:
            lines += [f"The profile's noise floor: {report.floor.text()}.", ""]
            if any(v == 0 for a, v in floors.items() if a != study.baseline):
                lines += [
                    "Arms that differ from the baseline in `eval.*` only train the baseline's network with its "
                    "settings: the same seed gives the same training run bit for bit, so no float-path chaos separates "
                    "them and the floor does not apply to them.",
                    "",
                ]
        lines += [tables.render(shown, "md"), ""]
        if report.crf is not None:
            lines += [
                "## The CRF's effect",
                "",
                "Each trial is evaluated before and after the fully connected CRF (`eval.crf`), so an arm's Δ is "
                "after − before on the same trials, paired per seed, Holm across the arms, the verdict rule above. "
                "The mIoU column of the result table is after the CRF. The CRF runs on the CPU, one image at a time, "
                "at the validation images' resolution; its time per image is the trials' mean.",
                "",
                tables.render(tables.crf_display(report.crf), "md"),
                "",
            ]
        if report.papers:
            lines += ["## The papers beside ours", "", PAPERS_CAVEAT.format(
                model=_model_text(study), data=_data_text(study)), ""]  # fmt: skip
            lines += [DIRECTION_RULE, ""]
            for entry, frame in report.papers:
                lines += [f"**{entry.source}** — {entry.setup}", ""]
                if entry.mismatch:
                    lines += [f"*Not the same configuration as this study:* {entry.mismatch}", ""]
                lines += [tables.render(papers_display(frame), "md"), ""]
        else:
            lines += ["## The papers beside ours", "", "No published number for this comparison.", ""]
        if geometry is not None:
            lines += [
                "## Geometry",
                "",
                f"Valid-tap share of every studied dilated conv at the {geometry.crop}² training crop (1 = every tap "
                "on the feature map; 0.11 = only the centre tap: a 1×1 conv; DeepLab v3 Fig. 4).",
                "",
                tables.render(geometry_display(geometry), "md"),
                "",
            ]
        figs = {
            f"figures/{name}-seeds.png": figures.seeds_figure(t["arms"], name),
            f"figures/{name}-forest.png": figures.forest_figure(
                t["comparisons"], study.min_effect, name, noise.value(report.floor)
            ),
        }
        points = t["arms"].copy()
        spec = {}
        if report.speed is not None:
            points = points.merge(report.speed, on=names.ARM, how="left")
            spec[names.SPEED_TRAIN_IPS] = ("training images/s (interleaved bench)", True)
            spec[names.SPEED_INFER_IPS] = ("inference images/s (interleaved bench)", True)
        else:
            spec[names.TRAIN_IPS] = ("training images/s (trial record)", True)
            spec[names.INFER_IPS] = ("inference images/s (trial record)", True)
        points["gmacs"] = pd.to_numeric(points[names.MACS]) / 1e9
        spec["gmacs"] = ("GMACs per image (training stride)", False)
        figs[f"figures/{name}-cost.png"] = figures.cost_figure(points, spec, name)
        out.update(figs)
        lines += ["## Figures", "", *[f"![{p}]({p})" for p in figs], ""]
        if "csv" in formats:
            out[f"tables/{name}.arms.csv"] = to_csv(_flat(t["arms"]))
            out[f"tables/{name}.comparisons.csv"] = to_csv(t["comparisons"])
            if report.crf is not None:
                out[f"tables/{name}.crf.csv"] = to_csv(report.crf)
        if "tex" in formats:
            out[f"tables/{name}.tex"] = tables.render(t["display"], "tex")
    else:
        points, front = report.search
        objectives = [(o.metric, o.direction == "maximize") for o in study.objectives]
        lines += [
            "## Result",
            "",
            f"**Pareto front over {', '.join(o.metric for o in study.objectives)} from seed means "
            f"({len(front)} of {len(points)} points; seeds per point: {sorted(set(points['seeds']))}).** A search "
            "study samples points, it does not replicate them: the front is a list of candidates to re-run as a "
            "grid study over seeds, not a verdict.",
            "",
            tables.render(tables.search_display(points, objectives), "md"),
            "",
        ]
        spec = {m: (names.LABELS.get(m, (m, ""))[0], up) for m, up in objectives[1:]}
        if spec:
            frame = points.rename(columns={objectives[0][0]: "mean"})
            out[f"figures/{name}-front.png"] = figures.cost_figure(frame, spec, f"{name}: Pareto front")
            lines += ["## Figures", "", f"![figures/{name}-front.png](figures/{name}-front.png)", ""]
        if "csv" in formats:
            out[f"tables/{name}.points.csv"] = to_csv(points)
        if "tex" in formats:
            out[f"tables/{name}.tex"] = tables.render(tables.search_display(points, objectives), "tex")
    command = f"make sweep-{name} SEEDS={','.join(map(str, study.seeds))}"
    if study.sequential is not None:
        d = study.sequential
        command += (f" ARGS=\"--until-resolved --looks {','.join(map(str, d.looks))} --alpha {d.alpha:g} "
                    f"--boundary {d.boundary} --futility {d.futility:g}\"")  # fmt: skip
    lines += ["## Reproduce", "", "```bash", command, "make report", "```", ""]
    out[f"{name}.md"] = "\n".join(lines).replace("\n\n\n", "\n\n")
    return out


def _flat(arms: pd.DataFrame) -> pd.DataFrame:
    flat = arms.copy()
    flat["seeds"] = [" ".join(map(str, s)) for s in flat["seeds"]]
    flat["per_seed"] = [" ".join(repr(float(v)) for v in s) for s in flat["per_seed"]]
    return flat


def _paper_answer(report: StudyReport) -> str:
    if not report.papers:
        return "no published number"
    entry, frame = report.papers[0]
    published = frame.dropna(subset=["paper"])
    if len(published) < 2:
        return "—"
    top = published.loc[published["paper"].idxmax()]
    baseline = report.study.baseline
    lead = f"{top[names.ARM]} best ({top['paper']:.2f}%)"
    if top[names.ARM] != baseline and baseline in set(published[names.ARM]):
        lead += f", {top['paper_delta']:+.2f} over {baseline}"
    source = f"{entry.paper.split(' (')[0].split(',')[0]} {entry.table.split(',')[0].split(' (')[0]}"
    return f"{lead} [{source}{'' if entry.verified else ', unverified'}]"


def _our_answer(report: StudyReport) -> str:
    if not report.study.is_grid:
        front = report.search[1]
        return f"Pareto front of {len(front)} points (single seed each)"
    comparisons = report.tables["comparisons"]
    parts = [f"{r['arm']} {r['verdict_label']} ({tables.fmt_num(r.get('delta'), '+.4f')})"
             for r in comparisons.to_dict("records") if r["verdict"] != stats.BASELINE]  # fmt: skip
    best = report.tables["best"]
    compared = "; ".join(parts) or "no arm has a last-step value to compare yet"
    return (f"best: {best}; " if best else "no arm resolved best; ") + compared


def _directions(report: StudyReport) -> str:
    """Every direction the study's page states, per published table (none left out)."""
    if not report.papers and report.crf is None:
        return "—"
    parts = []
    for entry, frame in report.papers:
        counts = frame["direction"].value_counts()
        keep = ", ".join(sorted(f"{n} {d}" for d, n in counts.items() if d not in ("—", "not published")))
        if keep:
            parts.append(f"{entry.table.split(' (')[0]}: {keep}" if len(report.papers) > 1 else keep)
    if report.crf is not None and "direction" in report.crf:  # the page's "CRF's effect" section states these
        counts = report.crf["direction"].value_counts()
        keep = ", ".join(sorted(f"{n} {d}" for d, n in counts.items() if d not in ("—", "not published")))
        if keep:
            parts.append(f"CRF's effect: {keep}")
    return "; ".join(parts) or "—"


def report_wide(reports: Sequence[StudyReport]) -> str:
    """How many better/worse verdicts survive a Benjamini–Hochberg correction over every comparison of every grid
    study (the A/A noise-floor study left out): the per-study Holm verdicts say nothing about the report as a whole."""
    rows = []
    for r in reports:
        if not r.study.is_grid or r.name == noise.STUDY or not r.tables:
            continue
        c = r.tables["comparisons"]
        for row in c.to_dict("records"):
            if row["verdict"] in (stats.BASELINE, stats.NOT_MEASURABLE):
                continue
            p = row.get("p")
            if p is None or (isinstance(p, float) and math.isnan(p)):
                continue
            rows.append((r.name, row[names.ARM], float(p), row["verdict"]))
    if not rows:
        return "Report-wide: no comparison yet."
    adjusted = stats.benjamini_hochberg([p for _, _, p, _ in rows])
    claims = [(r, q) for r, q in zip(rows, adjusted, strict=True) if r[3] in (stats.BETTER, stats.WORSE)]
    kept = sum(1 for _, q in claims if q <= 0.05)
    studies = len({r[0] for r in rows})
    return (
        f"**Report-wide:** {len(rows)} comparisons in {studies} studies; {len(claims)} better/worse verdicts, of "
        f"which {kept} survive a Benjamini–Hochberg correction at a 5 % false discovery rate over all {len(rows)} "
        "raw p-values (each study's own verdicts control its family-wise error, not the report's; the p of a "
        "sequential study is its last look's nominal one)."
    )


def pending_rows(study_files: Sequence[Path]) -> list[dict[str, str]]:
    """Studies with no data yet: the question and whether each profile's crop can answer it."""
    rows = []
    for path in study_files:
        row = {"study": f"`{path.stem}`"}
        for profile in ("quick", "faithful"):
            try:
                study = load_study(path, profile=profile)
            except StudyError as error:
                row[profile] = f"cannot run: {first_line(error, 80)}"
                continue
            row.setdefault("question", study.description.split(". ")[0].rstrip(".") if study.description else "")
            g = study_geometry(study)
            row[profile] = "search (no verdict)" if g is None else g.brief()
        row["run"] = f"`make sweep-{path.stem}`"
        rows.append(row)
    return rows


def render_index(
    reports: Sequence[StudyReport], papers: Sequence[Published], pending: Sequence[dict[str, str]] = ()
) -> str:
    rows = []
    for r in reports:
        g = r.geometry
        rows.append(
            {
                "study": f"[{r.name}]({r.name}.md)",
                "question": r.study.description.split(". ")[0].rstrip(".") if r.study.description else r.name,
                "the paper": _paper_answer(r),
                "ours": _our_answer(r),
                "direction vs paper": _directions(r),
                "can this profile answer it?": "search (no verdict)" if g is None else g.brief(),
            }
        )
    lines = [
        "# Reports",
        "",
        "One line per study in `sweeps/`: the question, the published answer, ours with the paired verdicts, and "
        "whether the run's crop can answer the question at all. " + tables.VERDICT_RULE + " Studies run under a "
        "group-sequential design say so on their page, with the look each verdict came from.",
        "",
        report_wide(reports),
        "",
        DIRECTION_RULE,
        "",
        PAPERS_CAVEAT.format(model="each profile's network", data="its data") + " Each study's page "
        "has the setup (profile, crop, model, steps, device, seeds, commit).",
        "",
        tables.render(pd.DataFrame(rows), "md"),
        "",
    ]
    if pending:
        lines += [
            "## Studies not run yet",
            "",
            "Their study files exist and load; no trial data is stored. What each profile's crop can answer (the "
            "faithful profile is the papers' geometry, for a GPU):",
            "",
            tables.render(pd.DataFrame(list(pending)), "md"),
            "",
        ]
    lines += [
        "## Published ablations without a study here",
        "",
    ]
    lines += [f"- {e.source}: {e.setup}" for e in papers if e.study is None] or ["- none"]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "make sweep-all SEEDS=0,1,2        # every study (quick profile on a CPU); sweeps resume",
        "make report                       # regenerate this folder from reports/data (and any runs/sweeps storages)",
        "ablations report --bench          # also re-measure the speed columns (interleaved, on this machine)",
        "```",
        "",
        "`reports/data/<study>.csv` (one row per trial) is the source of truth; `make report` on a fresh clone "
        "regenerates every page and table byte for byte from it.",
        "",
    ]
    return "\n".join(lines)


README_START = "<!-- results:start (generated by `make report` from reports/; edits here are overwritten) -->"
README_END = "<!-- results:end -->"
_VERDICT_ORDER = ("better", "worse", "equivalent", "inconclusive", stats.NOT_MEASURABLE, "running")


def _index_rows(index: Path) -> list[dict[str, str]]:
    """The rows of the study table in a reports index (``render_index``'s GitHub Markdown table)."""
    lines: list[str] = []
    for line in index.read_text().splitlines():  # the first table only (the index has others after it)
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    if len(lines) < 2:
        raise ResultsError(f"{index}: no study table")
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    header, body = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in body]


def _verdicts(comparisons: Path) -> str:
    """``better: 8 (+0.033); worse: 32 (-0.085); inconclusive: …`` from a study's comparisons table."""
    frame = read_csv(comparisons, (names.ARM, "verdict", "delta"))
    parts = []
    for verdict in _VERDICT_ORDER:
        rows = frame[frame["verdict"] == verdict]
        if verdict in ("better", "worse"):
            arms = [f"{r[names.ARM]} ({tables.fmt_num(r['delta'], '+.3f')})" for r in rows.to_dict("records")]
        else:
            arms = list(rows[names.ARM])
        if arms:
            parts.append(f"{verdict}: {', '.join(arms)}")
    return "; ".join(parts)


def readme_results(reports_dir: Path = Path("reports"), link_base: str = "reports") -> str:
    """The results table of the top-level README, from what ``generate`` wrote in ``reports_dir``: the index
    (question, direction against the paper, whether the crop can answer it, the best arm) and each study's
    ``tables/<study>.comparisons.csv`` (verdicts; without it, the index's own cell). Links go to
    ``<link_base>/<study>.md``. The same files give the same text."""
    rows = []
    for row in _index_rows(reports_dir / "README.md"):
        study = row["study"].split("]")[0].lstrip("[")
        question = row["question"]
        for stop in (":", " (", ", "):
            question = question.split(stop)[0]
        ours, baseline = row["ours"], "—"
        comparisons = reports_dir / "tables" / f"{study}.comparisons.csv"
        if comparisons.is_file():
            best = ours.split("; ")[0].replace("no arm resolved best", "none resolved best")
            ours = f"{best}; {_verdicts(comparisons) or 'no arm has a last-step value to compare yet'}"
            frame = read_csv(comparisons, (names.ARM, "verdict"))
            baseline = ", ".join(frame[frame["verdict"] == stats.BASELINE][names.ARM]) or "—"
        rows.append(
            {
                "study": f"[{study}]({link_base}/{study}.md)",
                "question": question,
                "baseline": baseline,
                "ours (Δ mIoU against the baseline)": ours,
                "vs the paper": row["direction vs paper"],
                "answerable at the crop?": row["can this profile answer it?"].split("; ")[0],
            }
        )
    return tables.render(pd.DataFrame(rows), "md")


def update_readme(readme: Path, reports_dir: Path) -> bool:
    """Rewrite the block between ``README_START`` and ``README_END`` in ``readme`` with ``readme_results``; links
    relative to the README's folder. Returns whether the file changed; a README without both markers is left
    alone (False)."""
    import os

    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    link_base = Path(os.path.relpath(reports_dir.resolve(), readme.resolve().parent)).as_posix()
    block = f"{README_START}\n{readme_results(reports_dir, link_base)}\n"
    new = text[:start] + block + text[end:]
    if new == text:
        return False
    write_atomic(readme, new)
    return True


# --------------------------------------------------------------------------------------------------------------
# The command


def generate(
    *,
    sweeps_dir: Path = Path("sweeps"),
    out_dir: Path = Path("reports"),
    data_dir: Path | None = None,
    papers_file: Path | None = None,
    runs: Path | None = None,
    storage: str | None = None,
    study_names: Sequence[str] = (),
    formats: Sequence[str] = ("md", "csv"),
    bench: bool = False,
    bench_repeats: int = 5,
    wandb: bool = True,
    index: bool = True,
    readme: Path | None = None,
    printer: Callable[[str], None] = print,
) -> list[StudyReport]:
    """Refresh data from storages, analyse every study that has data, write the reports (see module docstring).
    With ``readme`` (and ``index``), also rewrite that file's results block from the index just written
    (``update_readme``); ``ablations report`` passes the top-level README when it writes to ``reports/``."""
    from ablations.ioutil import check_readable_dir, check_writable_dir, redact
    from ablations.results.frames import recorded_design, recorded_profile, storage_frames, storage_validations

    # Every folder this reads or writes, before anything is read or computed.
    check_readable_dir("--sweeps", sweeps_dir, ResultsError)
    check_writable_dir("--out", out_dir, ResultsError)
    if data_dir is not None:
        check_writable_dir("--data", data_dir, ResultsError)  # a refreshed study's CSV is written there
    if runs is not None:
        check_readable_dir("--runs", runs, ResultsError)
    data_dir = data_dir or out_dir / "data"
    if papers_file is None:
        papers_file = out_dir / "papers.yaml"
        papers_file = papers_file if papers_file.is_file() else Path("reports") / "papers.yaml"
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ResultsError(f"--format {','.join(formats)}: unknown {bad}; allowed {list(FORMATS)}")
    files = {p.stem: p for p in sorted(sweeps_dir.glob("*.yaml"))}
    if not files:
        raise ResultsError(f"{sweeps_dir}: no study files (*.yaml)")
    unknown = [n for n in study_names if n not in files]
    if unknown:
        raise ResultsError(f"study {unknown[0]!r}: no study file {sweeps_dir / (unknown[0] + '.yaml')}; "
                           f"studies are {sorted(files)}")  # fmt: skip
    refreshed: dict[str, pd.DataFrame] = {}
    extras: dict[str, tuple[pd.DataFrame, dict | None]] = {}  # every validation, and the sequential design
    sources: dict[str, str] = {}
    profiles: dict[str, str | None] = {}
    if runs is not None:
        if not runs.is_dir():
            raise ResultsError(f"--runs {runs}: no such folder")
        found = find_storages(runs)
        if not found:
            raise ResultsError(f"--runs {runs}: no study storage (<study>/optuna.db) in it")
        for name, url in found.items():
            if name not in files or (study_names and name not in study_names):
                continue
            stored = storage_frames(url)  # a sweep's file holds its study (and maybe others, left alone)
            if name in stored:
                refreshed[name] = stored[name]
                sources[name] = (runs / name / "optuna.db").as_posix()
                profiles[name] = recorded_profile(url, name)
                extras[name] = (storage_validations(url, name), recorded_design(url, name))
    if storage is not None:
        for name, df in storage_frames(storage, list(study_names) or None).items():
            refreshed[name] = df
            sources[name] = redact(storage)
            profiles[name] = recorded_profile(storage, name)
            extras[name] = (storage_validations(storage, name), recorded_design(storage, name))
    wanted = [files[n] for n in (study_names or files)]
    skipped: list[str] = []
    # A study named with --study must have a complete trial; the others without one are left out, and said so.
    inputs = load_inputs(wanted, data_dir, refreshed, profiles, None if study_names else skipped)
    if skipped and not inputs:
        raise ResultsError(skipped[0])
    for reason in skipped:
        printer(f"{reason}; left out (it is listed with the studies not run yet)")
    if not inputs:
        raise ResultsError(f"no study has data: no {data_dir}/<study>.csv and no storage given or found")
    papers = load_papers(papers_file) if papers_file.is_file() else []
    from ablations.ioutil import git_commit

    commit = git_commit()
    writes: dict[Path, bytes | str] = {}
    reports = []
    floors = _floors(inputs, data_dir, sweeps_dir)
    for study, df in inputs:
        meta_path = data_dir / f"{study.name}.meta.json"
        meta = read_meta(meta_path)
        speed_path = data_dir / f"{study.name}.speed.csv"
        speed = read_csv(speed_path, (names.ARM,)) if speed_path.is_file() else None
        csv_path = data_dir / f"{study.name}.csv"
        changed = study.name in refreshed and (not csv_path.is_file() or csv_path.read_text() != to_csv(df))
        if changed:  # an unchanged refresh keeps its record of where and by which commit the data came
            meta.update(storage=sources[study.name], commit=commit, profile=study.profile)
            writes[csv_path] = to_csv(df)
            validations, design = extras.get(study.name, (None, None))
            if validations is not None and len(validations):
                writes[data_dir / f"{study.name}.validations.csv"] = to_csv(validations)
            meta.pop("sequential", None)
            if design:
                meta["sequential"] = design
        if bench and study.is_grid:
            printer(f"[{study.name}] speed: every arm interleaved …")
            from ablations.report.speed import measure

            speed, env = measure(study, repeats=bench_repeats, printer=printer)
            meta["speed_environment"] = env
            writes[speed_path] = to_csv(speed)
        if changed or bench:
            writes[meta_path] = json_text(meta)
        printer(f"[{study.name}] {len(df)} trials → {out_dir / (study.name + '.md')}")
        report = analyse(study, df, meta, speed, papers, floor=_floor_for(study, floors))
        reports.append(report)
        for relative, content in render_study(report, formats).items():
            writes[out_dir / relative] = content
    if index:
        # The index lists every study with data, also those this run (--study) did not rewrite: their rows come
        # from their stored trial CSVs, analysed here and not written.
        indexed = {r.name: r for r in reports}
        if study_names:
            others = [files[n] for n in files if n not in indexed]
            for study, df in load_inputs(others, data_dir, {}, {}, []):
                speed_path = data_dir / f"{study.name}.speed.csv"
                speed = read_csv(speed_path, (names.ARM,)) if speed_path.is_file() else None
                meta = read_meta(data_dir / f"{study.name}.meta.json")
                indexed[study.name] = analyse(study, df, meta, speed, papers, floor=_floor_for(study, floors))
        order = list(files)
        ordered = sorted(indexed.values(), key=lambda r: order.index(r.name))
        pending = pending_rows([files[n] for n in files if n not in indexed])
        writes[out_dir / "README.md"] = render_index(ordered, papers, pending)
    for path, content in writes.items():
        write_atomic(path, content if isinstance(content, bytes) or content.endswith("\n") else content + "\n")
    if index and readme is not None and update_readme(readme, out_dir):
        printer(f"{readme}: results table updated")
    if wandb:
        from ablations.report.wandb_run import log_reports

        try:
            log_reports(reports, out_dir, printer=printer)
        except Exception as error:  # the reports are written; a dashboard that cannot be reached loses nothing
            first = first_line(error, 200)
            printer(f"W&B: the report runs were not logged ({type(error).__name__}: {first}); the files are written")
    return reports


def _floors(
    inputs: Sequence[tuple[Study, pd.DataFrame]], data_dir: Path, sweeps_dir: Path
) -> dict[str | None, noise.NoiseFloor]:
    """The noise floor of each profile that has one: from the A/A study's trials among ``inputs`` (refreshed or
    read), else from its committed CSV."""
    out: dict[str | None, noise.NoiseFloor] = {}
    for study, df in inputs:
        if study.name == noise.STUDY:
            floor = noise.measure(df, study)
            if floor is not None:
                out[study.profile] = floor
    if not out:
        meta = read_meta(data_dir / f"{noise.STUDY}.meta.json")
        floor = committed_floor(data_dir, meta.get("profile"), sweeps_dir)
        if floor is not None:
            out[floor.profile] = floor
    return out


def _floor_for(study: Study, floors: dict[str | None, noise.NoiseFloor]) -> noise.NoiseFloor | None:
    return None if study.name == noise.STUDY or not study.is_grid else floors.get(study.profile)


def sweep_report(study: Study, name: str, url: str, out_dir: Path) -> str:
    """The study's report (the same pages ``make report`` writes) in the sweep's run folder, and the line that
    says where; a failure here never fails the sweep, whose results are stored."""
    if name != study.name or study.path is None:
        return (
            f"report: study name {name!r} differs from the file's; run `ablations report --storage URL --study {name}`"
        )
    try:
        generate(
            sweeps_dir=study.path.parent,
            out_dir=out_dir / "report",
            storage=url,
            study_names=[name],
            index=False,
            wandb=False,  # `ablations report` logs the W&B report run, once, with every study
            printer=lambda line: None,
        )
    except ResultsError as error:
        return f"report: not written ({error})"
    return f"report: {out_dir / 'report' / (name + '.md')} (`make report` adds it to reports/ with the others)"
