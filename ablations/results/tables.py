"""Comparison tables as pandas frames, rendered by pandas: the sweep's end-of-run table and every report use
these functions, so one verdict rule (``stats``) reaches every table the project prints.

* :func:`arm_frame` — per arm: runs, failures by kind, pruned and interrupted trials, every per-seed value,
  n, mean, std, min–max of the objective, per-size mIoU, and the cost figures;
* :func:`comparison_frame` — per arm against the baseline: paired Δ with its Holm-level interval, the
  Holm-adjusted p, the verdict and the seeds an inconclusive comparison would need;
* :func:`study_frame` — the two joined for display, with optional geometry and speed columns;
* :func:`render` — Markdown (``github``) or terminal (``simple``) text, or LaTeX through ``Styler.to_latex``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ablations.results import names, sequential, stats


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_num(value: Any, fmt: str) -> str:
    """A number as tables show it; "—" for a missing, NaN or infinite one."""
    return "—" if missing(value) else format(value, fmt)


NOT_MEASURED = "not measured"


def fmt_measured(value: Any, fmt: str, unit: str = "") -> str:
    """A figure in a sentence (the commands' progress and result lines): the number and its unit, or "not
    measured" for a missing, NaN or infinite one (a run too short to time has no images/s), never "nan"."""
    return NOT_MEASURED if missing(value) else format(value, fmt) + unit


def completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[names.STATE] == names.COMPLETE]


def final_values(df: pd.DataFrame, study: Any) -> pd.DataFrame:
    """``df`` with ``final_step`` filled in for trials recorded before it was: their ``val/*`` are the best
    validation's, which is the last step's only when ``best_step`` is the arm's ``train.max_steps``; for the others
    the last step's value is unknown (``final_step`` stays empty) and no comparison uses them."""
    if not getattr(study, "is_grid", False) or names.BEST_STEP not in df.columns:
        return df
    out = df.copy()
    if names.FINAL_STEP not in out.columns:
        out[names.FINAL_STEP] = math.nan
    legacy = out[names.FINAL_STEP].isna() & pd.to_numeric(out[names.BEST_STEP], errors="coerce").notna()
    if not legacy.any():
        return out
    seed = study.seeds[0]
    last = {arm: study.resolve(arm, seed).train.max_steps for arm in study.arm_labels}
    expected = out[names.ARM].astype(str).map(last)
    final = legacy & (pd.to_numeric(out[names.BEST_STEP], errors="coerce") == expected)
    out.loc[final, names.FINAL_STEP] = out.loc[final, names.BEST_STEP]
    return out


def best_only(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials whose last step's value is unknown (recorded only their best validation)."""
    if names.FINAL_STEP not in df.columns:
        return df.iloc[:0]
    return completed(df)[completed(df)[names.FINAL_STEP].isna()]


def seed_values(df: pd.DataFrame, metric: str = names.MIOU) -> dict[str, dict[int, float]]:
    """arm → seed → value of ``metric`` at the trial's last step, over complete trials (the last complete trial of
    an arm × seed wins); a trial whose last step's value is unknown (:func:`final_values`) is left out."""
    out: dict[str, dict[int, float]] = {}
    done = completed(df).dropna(subset=[metric]).sort_values(names.TRIAL)
    if names.FINAL_STEP in done.columns:
        done = done[done[names.FINAL_STEP].notna()]
    for arm, seed, value in done[[names.ARM, names.SEED, metric]].itertuples(index=False, name=None):
        out.setdefault(str(arm), {})[int(seed)] = float(value)
    return out


def arm_order(df: pd.DataFrame, arms: Sequence[str] | None) -> list[str]:
    found = [str(a) for a in df[names.ARM].dropna().unique()]
    if arms:
        return [*arms, *sorted(a for a in found if a not in arms)]
    return sorted(found)


def arm_frame(df: pd.DataFrame, arms: Sequence[str] | None = None, metric: str = names.MIOU) -> pd.DataFrame:
    """One row per arm (study order, then any others found in the data)."""
    values = seed_values(df, metric)
    rows = []
    for arm in arm_order(df, arms):
        mine = df[df[names.ARM].astype(str) == arm]
        done = completed(mine)
        failed = mine[(mine[names.STATE] == names.FAIL) & mine[names.FAILURE].isin(names.FINISHED_FAILURES)]
        interrupted = mine[(mine[names.STATE] == names.FAIL) & (mine[names.FAILURE] == "interrupted")]
        per_seed = values.get(arm, {})
        v = np.array([per_seed[s] for s in sorted(per_seed)], dtype=float)
        row: dict[str, Any] = {
            names.ARM: arm,
            "runs": len(done),
            "failed": len(failed),
            "failures": ", ".join(sorted(set(failed[names.FAILURE].astype(str)))),
            "pruned": int((mine[names.STATE] == names.PRUNED).sum()),
            "best_only": len(best_only(mine)),
            "interrupted": len(interrupted),
            "seeds": tuple(sorted(per_seed)),
            "per_seed": tuple(per_seed[s] for s in sorted(per_seed)),
            "n": len(v),
            "mean": float(v.mean()) if len(v) else math.nan,
            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "min": float(v.min()) if len(v) else math.nan,
            "max": float(v.max()) if len(v) else math.nan,
        }
        columns = (*names.SIZE_MIOUS, names.TRAIN_IPS, names.INFER_IPS, names.MACS, names.PARAMS)
        for column in (*columns, names.TRIAL_OVERHEAD_SHARE):
            series = pd.to_numeric(done[column], errors="coerce") if column in done else pd.Series(dtype=float)
            row[column] = float(series.mean()) if series.notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_frame(
    df: pd.DataFrame,
    *,
    baseline: str,
    min_effect: float,
    maximize: bool = True,
    metric: str = names.MIOU,
    arms: Sequence[str] | None = None,
    identical_to: Mapping[str, str] | None = None,
    unmeasurable: Mapping[str, str] | None = None,
    floor: float | Mapping[str, float] = 0.0,
) -> pd.DataFrame:
    """Every arm against ``baseline`` (paired per seed, Holm across the arms; ``stats`` holds the rule)."""
    values = seed_values(df, metric)
    order = [a for a in arm_order(df, arms) if a in values or a == baseline]
    values = {a: values.get(a, {}) for a in order}
    rows = [
        {
            names.ARM: baseline,
            "delta": 0.0,
            "low": math.nan,
            "high": math.nan,
            "level": math.nan,
            "method": "",
            "pairs": len(values.get(baseline, {})),
            "sd_diff": math.nan,
            "p_holm": math.nan,
            "verdict": stats.BASELINE,
            "verdict_label": stats.BASELINE,
            "seeds_needed": None,
            "note": "",
        }
    ]
    if not values.get(baseline):
        for arm in order:
            if arm != baseline:
                label = "inconclusive (the baseline has no complete run)"
                rows.append({names.ARM: arm, "verdict": stats.INCONCLUSIVE, "pairs": 0, "verdict_label": label})
        return pd.DataFrame(rows)
    for c in stats.compare_arms(
        values, baseline, min_effect=min_effect, maximize=maximize, identical_to=identical_to,
        unmeasurable=unmeasurable, floor=floor,
    ):  # fmt: skip
        i = c.interval
        rows.append(
            {
                names.ARM: c.arm,
                "delta": i.delta,
                "low": i.low,
                "high": i.high,
                "level": i.level,
                "method": i.method,
                "pairs": i.n if i.method == "paired" else 0,
                "sd_diff": i.sd,
                "p_holm": c.p_holm,
                "verdict": c.verdict,
                "verdict_label": c.label,
                "seeds_needed": c.seeds_needed,
                "note": c.note,
                "p": i.p,
            }
        )
    return pd.DataFrame(rows)


def settled_pairs(df: pd.DataFrame) -> set[tuple[str, int]]:
    """The (arm, seed) pairs with a finished trial: complete, or failed for a reason a re-run would repeat."""
    done = df[(df[names.STATE] == names.COMPLETE) | (
        (df[names.STATE] == names.FAIL) & df[names.FAILURE].isin(names.FINISHED_FAILURES)
    )]  # fmt: skip
    return {(str(a), int(s)) for a, s in done[[names.ARM, names.SEED]].itertuples(index=False, name=None)}


def sequential_frame(
    df: pd.DataFrame,
    study: Any,
    *,
    compared: Sequence[str],
    identical_to: Mapping[str, str] | None = None,
    unmeasurable: Mapping[str, str] | None = None,
    floor: float = 0.0,
) -> tuple[pd.DataFrame, Any]:
    """The comparison frame of a study run under a group-sequential design (``study.sequential``): every arm's
    verdict from ``sequential.decide`` (the look it came from, the interval at that look's level), and the outcome."""
    objective = study.objectives[0]
    baseline = study.baseline or study.arm_labels[0]
    design = study.sequential
    values = seed_values(df, objective.metric)
    result = sequential.decide(
        values, baseline, list(compared), design, min_effect=study.min_effect,
        maximize=objective.direction == "maximize", floor=arm_floors(study, design.floor), settled=settled_pairs(df),
    )  # fmt: skip
    floors = arm_floors(study, floor)
    # The seeds ran as the design decided with the floor it was stored with; a floor measured later (larger) only
    # takes claims back: a better/worse |Δ| within it becomes inconclusive.
    for arm, state in list(result.states.items()):
        if state.verdict in (stats.BETTER, stats.WORSE) and abs(state.interval.delta) <= floors.get(arm, 0.0):
            note = f"|Δ| is within the noise floor {floors[arm]:.4f} (measured after this look)"
            result.states[arm] = dataclasses.replace(state, verdict=stats.INCONCLUSIVE, note=note)
    used = {s for a, s in result.pairs if a == baseline}
    rows = [
        {
            names.ARM: baseline, "delta": 0.0, "low": math.nan, "high": math.nan, "level": math.nan, "method": "",
            "pairs": len(used & set(values.get(baseline, {}))), "sd_diff": math.nan, "p_holm": math.nan,
            "verdict": stats.BASELINE, "verdict_label": stats.BASELINE, "seeds_needed": None, "note": "",
            "look": math.nan, "p": math.nan, "boundary_p": math.nan,
        }
    ]  # fmt: skip
    for arm in arm_order(df, study.arm_labels):
        if arm == baseline:
            continue
        if arm in (identical_to or {}) or arm in (unmeasurable or {}):
            why = f"same network as {identical_to[arm]} here" if arm in (identical_to or {}) else unmeasurable[arm]
            rows.append({names.ARM: arm, "verdict": stats.NOT_MEASURABLE, "verdict_label": stats.NOT_MEASURABLE,
                         "note": why, "pairs": 0, "seeds_needed": None})  # fmt: skip
            continue
        state = result.states.get(arm)
        if state is None:
            continue
        i = state.interval
        k, looks = state.look, design.looks
        if state.verdict == sequential.RUNNING:
            label = f"running: look {k + 1} of {len(looks)} ({looks[k]} seeds) next" if k < len(looks) else "running"
        else:
            label = f"{state.verdict} (look {k} of {len(looks)}, {i.n} seeds)"
        rows.append(
            {
                names.ARM: arm, "delta": i.delta, "low": i.low, "high": i.high, "level": i.level, "method": i.method,
                "pairs": i.n, "sd_diff": i.sd, "p_holm": math.nan, "verdict": state.verdict, "verdict_label": label,
                "seeds_needed": None, "note": state.note, "look": k or math.nan, "p": i.p,
                "boundary_p": state.boundary_p if k else math.nan,
            }
        )  # fmt: skip
    return pd.DataFrame(rows), result


def interval_text(row: Mapping[str, Any]) -> str:
    if row.get("verdict") == stats.BASELINE:
        return "—"
    delta, low, high = row.get("delta"), row.get("low"), row.get("high")
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "—"
    if low is None or math.isnan(low) or math.isinf(low):
        return f"{delta:+.4f}"
    return f"{delta:+.4f} [{low:+.4f}, {high:+.4f}]"


def per_seed_text(seeds: Sequence[int], values: Sequence[float]) -> str:
    return " · ".join(f"s{s} {v:.4f}" for s, v in zip(seeds, values, strict=True)) or "—"


def runs_text(row: Mapping[str, Any]) -> str:
    parts = [str(row["runs"])]
    if row.get("failed"):
        parts.append(f"{row['failed']} failed ({row['failures']})")
    if row.get("pruned"):
        parts.append(f"{row['pruned']} pruned")
    if row.get("interrupted"):
        parts.append(f"{row['interrupted']} interrupted")
    if row.get("best_only"):
        parts.append(f"{row['best_only']} without a last-step value")
    return ", ".join(parts)


def study_frame(
    arms_df: pd.DataFrame,
    comparisons: pd.DataFrame | None,
    *,
    best: str | None = None,
    geometry: Mapping[str, str] | None = None,
    speed: pd.DataFrame | None = None,
    papers: pd.DataFrame | None = None,
    short: bool = False,
) -> pd.DataFrame:
    """The display table: strings only, so that every renderer prints the same digits."""
    by_arm = comparisons.set_index(names.ARM) if comparisons is not None and len(comparisons) else None
    speed_by = speed.set_index(names.ARM) if speed is not None and len(speed) else None
    papers_by = papers.set_index(names.ARM) if papers is not None and len(papers) else None
    rows = []
    for r in arms_df.to_dict("records"):
        arm = r[names.ARM]
        row = {"arm": arm + (" (best)" if best == arm else ""), "runs": runs_text(r)}
        row["mIoU mean ± std"] = (
            "—" if math.isnan(r["mean"]) else f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["n"] > 1 else "")
        )
        if not short:
            row["min–max"] = "—" if math.isnan(r["min"]) else f"{r['min']:.4f}–{r['max']:.4f}"
            row["per seed"] = per_seed_text(r["seeds"], r["per_seed"])
        if by_arm is not None and arm in by_arm.index:
            c = by_arm.loc[arm].to_dict()
            row["Δ vs baseline [Holm CI]"] = interval_text(c)
            row["verdict"] = c["verdict_label"] + (f" — {c['note']}" if c.get("note") and not short else "")
        elif by_arm is not None:
            row["Δ vs baseline [Holm CI]"] = "—"
            row["verdict"] = "no complete run"
        if papers_by is not None and arm in papers_by.index:
            p = papers_by.loc[arm].to_dict()
            row["paper"] = p.get("paper_text", "—")
            row["paper Δ"] = p.get("paper_delta_text", "—")
            row["direction"] = p.get("direction", "—")
        elif papers_by is not None:
            row["paper"] = row["paper Δ"] = row["direction"] = "—"
        row["small / medium / large"] = " / ".join(fmt_num(r[m], ".3f") for m in names.SIZE_MIOUS)
        if speed_by is not None and arm in speed_by.index:
            s = speed_by.loc[arm]
            row["train img/s"] = fmt_num(s.get(names.SPEED_TRAIN_IPS), ".1f")
            row["infer img/s"] = fmt_num(s.get(names.SPEED_INFER_IPS), ".1f")
        else:
            row["train img/s (trial)"] = fmt_num(r[names.TRAIN_IPS], ".1f")
            row["infer img/s (trial)"] = fmt_num(r[names.INFER_IPS], ".1f")
        if short:  # the sweep's own table: how much of each trial was not training (target: ≤ 10 %)
            share = r.get(names.TRIAL_OVERHEAD_SHARE, math.nan)
            row["overhead"] = "—" if math.isnan(share) else f"{share:.0%}"
        row["GMACs"] = fmt_num(r[names.MACS] / 1e9 if not math.isnan(r[names.MACS]) else math.nan, ".3f")
        row["params (M)"] = fmt_num(r[names.PARAMS] / 1e6 if not math.isnan(r[names.PARAMS]) else math.nan, ".2f")
        if geometry is not None:
            row["geometry"] = geometry.get(arm, "—")
        rows.append(row)
    return pd.DataFrame(rows).fillna("—")


def search_frame(df: pd.DataFrame, objectives: Sequence[tuple[str, bool]]) -> tuple[pd.DataFrame, list[str]]:
    """A search study: one row per distinct point (its arm label), objectives as seed means, and the Pareto
    front over them (from seed means; with one seed per point it is the front of single runs)."""
    done = completed(df)
    rows, points = [], {}
    for arm, group in done.groupby(names.ARM, sort=True):
        means = [float(pd.to_numeric(group[m], errors="coerce").mean()) for m, _ in objectives]
        points[str(arm)] = means
        rows.append(
            {names.ARM: str(arm), "seeds": len(group), **{m: v for (m, _), v in zip(objectives, means, strict=True)}}
        )
    front = stats.pareto_front(points, [up for _, up in objectives])
    out = pd.DataFrame(rows)
    if len(out):
        out["pareto"] = out[names.ARM].isin(front)
        first, up = objectives[0]
        out = out.sort_values([first, names.ARM], ascending=[not up, True], kind="stable").reset_index(drop=True)
    return out, front


def search_display(points: pd.DataFrame, objectives: Sequence[tuple[str, bool]]) -> pd.DataFrame:
    rows = []
    for r in points.to_dict("records"):
        row = {"point": r[names.ARM], "seeds": str(r["seeds"])}
        for m, up in objectives:
            label, fmt = names.LABELS.get(m, (m, ".4f"))
            row[f"{label} ({'max' if up else 'min'})"] = fmt_num(r[m], fmt)
        row["Pareto front (seed means)"] = "yes" if r["pareto"] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def render(display: pd.DataFrame, fmt: str = "md") -> str:
    """``md``: a GitHub Markdown table; ``text``: a plain terminal table; ``tex``: LaTeX (``Styler.to_latex``)."""
    if fmt == "tex":
        return display.style.hide(axis="index").to_latex(hrules=True)
    if not len(display):
        return "(no rows)"
    table = display.to_markdown(index=False, tablefmt="github" if fmt == "md" else "simple", disable_numparse=True)
    return table


def arm_floors(study: Any, floor: float) -> dict[str, float]:
    """The noise floor each arm's comparison is held to: ``floor``, except for an arm whose trials train exactly the
    baseline's network with the baseline's settings (it differs in ``eval.*`` only): the same seed then gives the
    same training run bit for bit, no chaos separates the two, and the floor does not apply (0)."""
    if not floor:
        return dict.fromkeys(study.arm_labels, 0.0)
    baseline = study.baseline or study.arm_labels[0]
    seed = study.seeds[0]

    def trained(arm: str) -> dict[str, Any]:
        config = study.resolve(arm, seed).to_dict()
        config.pop("eval", None)
        return config

    base = trained(baseline)
    return {arm: (0.0 if trained(arm) == base else floor) for arm in study.arm_labels}


def arm_roles(study: Any, geometry: Any) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Which arms a study's geometry keeps out of the comparison: (identical: arm → the baseline, when the arm
    builds the baseline's network and so measures nothing; repeats: arm → the other arm whose network it repeats,
    compared as usual and counted once for "best"; unmeasurable: arm → why its run cannot measure its setting)."""
    baseline = study.baseline or study.arm_labels[0]
    identical, repeats = {}, {}
    unmeasurable = dict(geometry.unmeasurable) if geometry is not None else {}
    unmeasurable.pop(baseline, None)  # a baseline that cannot measure makes every verdict moot: the page says so
    if geometry is not None:
        for arm, other in geometry.identical_to.items():
            if geometry.same_network(arm, baseline):
                identical[arm] = baseline if arm != baseline else other
            else:
                repeats[arm] = other
    return identical, repeats, unmeasurable


def study_tables(
    study: Any,
    df: pd.DataFrame,
    *,
    geometry: Any = None,
    speed: pd.DataFrame | None = None,
    papers: Callable[[pd.DataFrame], pd.DataFrame | None] | None = None,
    short: bool = False,
    floor: float = 0.0,
) -> dict[str, Any]:
    """Everything a study's table needs, for a grid study (``study.is_grid``): the per-arm frame, the comparison
    frame, the resolved best arm (or None) and the display frame. ``geometry`` is an
    ``ablations.sweep.geometry.StudyGeometry`` (arms that are the same network are labelled *not measurable*);
    ``papers`` turns the comparison frame into the published-number columns (``report.papers.paper_frame``)."""
    objective = study.objectives[0]
    maximize = objective.direction == "maximize"
    df = final_values(df, study)
    arms = arm_frame(df, study.arm_labels, objective.metric)
    baseline = study.baseline or study.arm_labels[0]
    identical, repeats, unmeasurable = arm_roles(study, geometry)
    result = None
    if getattr(study, "sequential", None) is not None:
        compared = [a for a in study.arm_labels if a not in identical and a not in unmeasurable]
        comparisons, result = sequential_frame(
            df, study, compared=compared, identical_to=identical, unmeasurable=unmeasurable, floor=floor
        )
    else:
        comparisons = comparison_frame(
            df,
            baseline=baseline,
            min_effect=study.min_effect,
            maximize=maximize,
            metric=objective.metric,
            arms=study.arm_labels,
            identical_to=identical,
            unmeasurable=unmeasurable,
            floor=arm_floors(study, floor),
        )
    for arm, other in repeats.items():
        row = comparisons[names.ARM] == arm
        repeat = f"same network as {other} here (the rates it differs in are 1×1 convs)"
        comparisons.loc[row, "note"] = [f"{n}; {repeat}" if n else repeat for n in comparisons.loc[row, "note"]]
    values = {
        a: v
        for a, v in seed_values(df, objective.metric).items()
        if a not in identical and a not in repeats and a not in unmeasurable
    }
    if result is None:
        best = stats.resolved_best(values, min_effect=study.min_effect, maximize=maximize)
    else:  # the design compares each arm with the baseline only: the baseline is best when every arm is worse
        verdicts = [s.verdict for s in result.states.values()]
        best = baseline if verdicts and all(v == stats.WORSE for v in verdicts) else None
    notes = {a: g.note() for a, g in geometry.arms.items()} if geometry is not None else None
    published = papers(comparisons) if papers is not None else None
    display = study_frame(arms, comparisons, best=best, geometry=notes, speed=speed, papers=published, short=short)
    compared = len([a for a in study.arm_labels if a != baseline and a not in identical and a not in unmeasurable])
    return {
        "arms": arms, "comparisons": comparisons, "best": best, "display": display, "sequential": result,
        "compared": compared,
    }  # fmt: skip


def headline(study: Any, tables: Mapping[str, Any]) -> str:
    """One line under a study's table: which arm is resolved best, or that none is, and the verdict counts."""
    comparisons = tables["comparisons"]
    counts = comparisons[comparisons["verdict"] != stats.BASELINE]["verdict"].value_counts()
    kinds = (stats.BETTER, stats.WORSE, stats.EQUIVALENT, stats.INCONCLUSIVE, stats.NOT_MEASURABLE, "running")
    tally = ", ".join(f"{counts[v]} {v}" for v in kinds if v in counts)
    baseline = study.baseline or study.arm_labels[0]
    best = tables["best"]
    lead = f"best: {best} (resolved better than every other arm)" if best else "no arm is resolved best"
    return f"{lead}; against the baseline {baseline}: {tally or 'nothing to compare'} (min_effect {study.min_effect:g})"


VERDICT_RULE = (
    "Verdicts: Δ = arm − baseline at the trials' last step, paired by seed; interval = t-interval at the Holm level of "
    "the arm's rank; better/worse needs ≥ 3 paired seeds, a Holm-adjusted p < 0.05 and |Δ| ≥ min_effect (and beyond "
    "the noise floor, where measured); equivalent: the whole interval within ±min_effect; otherwise inconclusive, "
    "with the seeds that would give an 80 % chance of a resolved verdict if Δ and its sd were the observed ones "
    "(fixed-n, at the strictest Holm level α/m; an sd from 3 seeds is itself uncertain by ×0.5 to ×6)."
)
COMPARED_VALUE = (
    "Compared value: each trial's {metric} at its last step (the last validation); the best validation and its "
    "checkpoint are kept as a record, never compared."
)


def design_text(study: Any, arms: int | None = None) -> str:
    """The design a study's verdicts come from, in one sentence: its sequential design (with the boundaries of
    ``arms`` compared arms), or the fixed seeds."""
    design = getattr(study, "sequential", None)
    if design is not None:
        arms = arms if arms is not None else len(study.arm_labels) - 1
        return _sentence(design.describe()) + " " + _sentence(sequential.boundary_text(design, arms))
    seeds = ", ".join(map(str, study.seeds))
    return (
        f"Fixed design: seeds {seeds}, one look; Holm across the arms at α = {stats.ALPHA:g}. "
        + VERDICT_RULE.removeprefix("Verdicts: ")
    )


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def verdict_rule(study: Any, arms: int | None = None) -> str:
    """The rule under a study's table: the fixed one, or the sequential design's (``arms``: how many arms it
    compares with the baseline)."""
    design = getattr(study, "sequential", None)
    if design is None:
        return VERDICT_RULE
    return (
        "Verdicts: Δ = arm − baseline at the trials' last step, paired by seed, at the look each verdict came from; "
        "better/worse: the arm's null rejected at a look's boundary and |Δ| ≥ min_effect (and beyond the noise floor, "
        "where measured); equivalent: the interval at the look's equivalence level within ±min_effect; otherwise "
        "inconclusive (after the last look, or stopped for futility). " + design_text(study, arms)
    )


def crf_frame(
    df: pd.DataFrame,
    arms: Sequence[str] | None = None,
    *,
    min_effect: float,
    published: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> pd.DataFrame:
    """The dense CRF's effect on each arm whose trials ran it (``eval.crf``): the same trials' mIoU after the CRF
    against before it, paired per seed (a trial is its own control), Holm across the arms; with the boundary
    mIoU before → after, the CRF's time per image and ``published`` (arm → paper's (before, after), %)."""
    after, before = seed_values(df, names.MIOU), seed_values(df, names.MIOU_BEFORE_CRF)
    order = [a for a in arm_order(df, arms) if before.get(a)]
    raw = [stats.compare(after[a], before[a]) for a in order]
    adjusted, ranks = stats.holm([r.p for r in raw])
    done = completed(df)
    rows = []
    for arm, p_holm, rank in zip(order, adjusted, ranks, strict=True):
        level = stats.ALPHA / (len(order) - rank + 1)
        interval = stats.compare(after[arm], before[arm], alpha=level)
        verdict, note = stats.verdict(interval, p_holm, min_effect)
        needed = (
            stats.seeds_needed(interval.delta, interval.sd, min_effect, alpha=stats.ALPHA / len(order))
            if verdict == stats.INCONCLUSIVE and interval.method == "paired"
            else None
        )
        label = stats.Comparison(arm, interval, p_holm, verdict, needed).label
        trials = done[done[names.ARM] == arm]

        def mean(column: str, trials=trials) -> float:
            values = pd.to_numeric(trials[column], errors="coerce") if column in trials else pd.Series(dtype=float)
            return float(values.mean()) if values.notna().any() else math.nan

        paper_before, paper_after = (published or {}).get(arm, (None, None))
        paper_delta = paper_after - paper_before if paper_before is not None and paper_after is not None else None
        devices = sorted({str(d) for d in trials[names.DEVICE].dropna()}) if names.DEVICE in trials else []
        rows.append(
            {
                names.ARM: arm,
                "pairs": interval.n if interval.method == "paired" else 0,
                "before": float(np.mean(list(before[arm].values()))),
                "after": float(np.mean(list(after[arm].values()))),
                "delta": interval.delta,
                "low": interval.low,
                "high": interval.high,
                "p_holm": p_holm,
                "verdict": verdict,
                "verdict_label": label + (f" — {note}" if note else ""),
                "note": note,
                "boundary_before": mean(names.BOUNDARY_MIOU_BEFORE_CRF),
                "boundary_after": mean(names.BOUNDARY_MIOU),
                "crf_ms": mean(names.CRF_MS),
                "device": ", ".join(devices) or "—",
                "paper_before": paper_before,
                "paper_after": paper_after,
                "paper_delta": paper_delta,
            }
        )
    return pd.DataFrame(rows)


def crf_display(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in frame.to_dict("records"):
        paper = "—"
        if r["paper_before"] is not None and r["paper_after"] is not None:
            paper = f"{r['paper_before']:.2f} → {r['paper_after']:.2f} ({r['paper_delta']:+.2f})"
        rows.append(
            {
                "arm": r[names.ARM],
                "paired seeds": str(r["pairs"]),
                "mIoU before → after": f"{r['before']:.4f} → {r['after']:.4f}",
                "Δ [Holm CI]": interval_text(r),
                "verdict": r["verdict_label"],
                "boundary mIoU before → after": f"{fmt_num(r['boundary_before'], '.4f')} → "
                f"{fmt_num(r['boundary_after'], '.4f')}",
                "CRF ms / image": fmt_num(r["crf_ms"], ".1f"),
                "on": r["device"],
                "paper before → after (Δ)": paper,
                **({"direction": r["direction"]} if "direction" in r else {}),
            }
        )
    return pd.DataFrame(rows)
