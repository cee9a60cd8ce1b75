"""``ablations sweep STUDY --import-trials CSV``: a grid study's committed trials (``reports/data/<study>.csv``, with
its ``.validations.csv`` and ``.meta.json`` beside it) put into a new, empty storage as finished trials, so that a
sweep on another machine goes on from them instead of training them again: a sequential design continues with its
next look (its design comes from the ``.meta.json``), a fixed design runs only the arm × seed pairs missing.

Only what a comparison can use is imported: complete trials that recorded their last step's value (``final_step``)
and trials that failed for a reason a re-run would repeat (diverged, out of memory, …), and only **whole looks**: a
sequential design's trials of the looks it decided (a look the stored data left half-run is run again here, every
pair of it), a fixed design's seeds that every arm finished. So the two sides of a pair, and one look's pairs, always
ran on one machine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from ablations.config import SEED_MAX
from ablations.results import names
from ablations.results.frames import ResultsError, read_csv, read_meta
from ablations.sweep.board import DESIGN_ATTR, Board
from ablations.sweep.storage import SweepError
from ablations.sweep.study import Study


def import_trials(study: Study, board: Board, path: str | Path) -> tuple[int, dict[str, Any] | None]:
    """Add the usable trials of ``path`` to ``board`` (which must hold no trial yet); returns how many were added
    and the sequential design recorded beside them (or None). Every refusal is a ``SweepError`` naming the file."""
    path = Path(path)
    if not study.is_grid:
        raise SweepError(f"--import-trials {path}: only a study with an axis (arms × seeds) can import trials")
    if board.trials():
        raise SweepError(
            f"--import-trials {path}: the storage already holds {len(board.trials())} trial(s) of study "
            f"{board.name!r}; import into a new storage (another --out or --storage)"
        )
    try:
        df = read_csv(path)
    except ResultsError as error:
        raise SweepError(f"--import-trials {error}") from None
    meta = _meta(path)
    if meta.get("profile") not in (None, study.profile):
        raise SweepError(
            f"--import-trials {path}: its trials ran the {meta['profile']!r} profile; this sweep runs "
            f"{study.profile!r} (give --profile {meta['profile']})"
        )
    unknown = sorted({str(a) for a in df[names.ARM].dropna()} - set(study.arm_labels))
    if unknown:
        raise SweepError(f"--import-trials {path}: arm(s) {unknown} are not in the study; its arms are "
                         f"{list(study.arm_labels)}")  # fmt: skip
    keep = _whole_looks(study, df, meta.get("sequential"))
    validations = _validations(path)
    metrics = [o.metric for o in study.objectives]
    distributions = {"arm": CategoricalDistribution(list(study.arm_labels)), "seed": IntDistribution(0, SEED_MAX)}
    added = 0
    for row in df.to_dict("records"):
        state, arm, seed = row[names.STATE], str(row[names.ARM]), row[names.SEED]
        if _missing(seed) or int(seed) not in keep:
            continue
        seed = int(seed)
        attrs: dict[str, Any] = {"arm": arm, "seed": seed, "imported_from": f"{path.name} trial {row[names.TRIAL]}"}
        if state == names.COMPLETE and not _missing(row.get(names.FINAL_STEP)):
            values = [row.get(m) for m in metrics]
            if any(_missing(v) for v in values):
                continue
            kept = {
                k: v for k, v in row.items() if k.startswith(("val/", "train/", "infer/")) or k in names.KEPT_METRICS
            }
            attrs["metrics"] = {k: v for k, v in kept.items() if not _missing(v)}
            attrs[names.VALIDATIONS] = validations.get(int(row[names.TRIAL]), [])
            trial = optuna.trial.create_trial(
                state=TrialState.COMPLETE, params={"arm": arm, "seed": seed}, distributions=distributions,
                values=[float(v) for v in values], user_attrs=attrs,
            )  # fmt: skip
        elif state == names.FAIL and row.get(names.FAILURE) in names.FINISHED_FAILURES:
            attrs["failure"] = {"kind": row[names.FAILURE], "message": "imported"}
            trial = optuna.trial.create_trial(
                state=TrialState.FAIL, params={"arm": arm, "seed": seed}, distributions=distributions, user_attrs=attrs
            )
        else:
            continue
        board.study.add_trial(trial)
        added += 1
    design = meta.get("sequential")
    if design:
        board.study.set_user_attr(DESIGN_ATTR, design)
    return added, design


def _whole_looks(study: Study, df: pd.DataFrame, design: dict[str, Any] | None) -> set[int]:
    """The seeds whose trials are imported: a sequential design's decided looks, or the seeds every arm of a fixed
    design finished."""
    from ablations.results import tables
    from ablations.results.sequential import Design, decide
    from ablations.sweep.geometry import compared_arms

    frame = tables.final_values(df, study)
    settled = tables.settled_pairs(frame)
    if design:
        d = Design.from_dict(design)
        values = tables.seed_values(frame, study.objectives[0].metric)
        baseline = study.baseline or study.arm_labels[0]
        result = decide(values, baseline, compared_arms(study), d, min_effect=study.min_effect, settled=settled,
                        maximize=study.objectives[0].direction == "maximize",
                        floor=tables.arm_floors(study, d.floor))  # fmt: skip
        return set(d.seeds[: d.looks[result.decided_looks - 1]]) if result.decided_looks else set()
    seeds = {s for _, s in settled}
    return {s for s in seeds if all((a, s) in settled for a in study.arm_labels)}


def _meta(path: Path) -> dict[str, Any]:
    try:
        return read_meta(path.with_name(path.name.removesuffix(".csv") + ".meta.json"))
    except ResultsError as error:
        raise SweepError(f"--import-trials: {error}") from None


def _validations(path: Path) -> dict[int, list[dict[str, Any]]]:
    """trial → its validations, from the ``.validations.csv`` beside the trial CSV (empty when there is none)."""
    file = path.with_name(path.name.removesuffix(".csv") + ".validations.csv")
    if not file.is_file():
        return {}
    df = pd.read_csv(file, keep_default_na=False, na_values=[""], dtype={names.ARM: str})
    out: dict[int, list[dict[str, Any]]] = {}
    for row in df.to_dict("records"):
        entry = {k: v for k, v in row.items() if k not in (names.TRIAL, names.ARM, names.SEED) and not _missing(v)}
        entry["step"] = int(entry["step"])
        out.setdefault(int(row[names.TRIAL]), []).append(entry)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
