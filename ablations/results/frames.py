"""Stored results → pandas: one row per trial, from any Optuna storage or from a committed CSV.

A **trial frame** has the columns of ``names.TRIAL_COLUMNS`` (trial number, Optuna state, arm, seed, failure
kind, duration), then every sampled parameter (``param:<name>``), then every stored statistic and metric.
Failed, pruned and interrupted trials stay in the frame: tables count them, statistics use complete trials
only. Trials that ran nothing (a duplicate claim, a search point that reused an earlier result) are left out.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.ioutil import first_line, redact
from ablations.results import names


class ResultsError(ValueError):
    """Results that cannot be read or reported: the message names the file, storage or study and what is wrong."""


def failure_kind(trial: Any) -> str | None:
    """The recorded failure kind of an Optuna trial; a FAIL without one was failed by Optuna's heartbeat check,
    i.e. its worker stopped: ``interrupted``."""
    failure = trial.user_attrs.get("failure")
    if isinstance(failure, dict):
        return failure.get("kind")
    return "interrupted" if trial.state.name == names.FAIL else None


def ran_nothing(trial: Any) -> bool:
    return failure_kind(trial) == "duplicate" or "reused_from" in trial.user_attrs


def trial_records(trials: Iterable[Any]) -> list[dict[str, Any]]:
    """One flat dict per Optuna trial that ran: number, state, arm, seed, params, failure and every stored metric."""
    rows = []
    for t in trials:
        if ran_nothing(t):
            continue
        row: dict[str, Any] = {
            names.TRIAL: t.number,
            names.STATE: t.state.name,
            names.ARM: t.user_attrs.get("arm"),
            names.SEED: t.user_attrs.get("seed"),
            names.FAILURE: failure_kind(t),
            names.DURATION_S: (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_start and t.datetime_complete
            else None,
        }
        if t.user_attrs.get(names.COMMIT):
            row[names.COMMIT] = t.user_attrs[names.COMMIT]
        row.update({f"{names.PARAM}{k}": v for k, v in t.params.items() if k not in ("arm", "seed")})
        row.update(t.user_attrs.get("stats", {}))
        row.update(t.user_attrs.get("metrics", {}))
        rows.append(row)
    return rows


def validation_records(trials: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per validation of every trial that ran: trial, arm, seed, step and its scalar metrics (the trial's
    ``validations`` attribute; trials from before it was recorded have none)."""
    rows = []
    for t in trials:
        if ran_nothing(t):
            continue
        for entry in t.user_attrs.get(names.VALIDATIONS) or []:
            row = {names.TRIAL: t.number, names.ARM: t.user_attrs.get("arm"), names.SEED: t.user_attrs.get("seed")}
            row["step"] = entry.get("step")
            row.update({k: v for k, v in entry.items() if k != "step" and isinstance(v, int | float)})
            rows.append(row)
    return rows


def validation_frame(optuna_study: Any) -> pd.DataFrame:
    """Every validation of every trial (:func:`validation_records`), in a fixed column and row order."""
    records = validation_records(optuna_study.get_trials(deepcopy=False))
    first = [names.TRIAL, names.ARM, names.SEED, "step"]
    rest = sorted({k for r in records for k in r} - set(first))
    df = pd.DataFrame.from_records(records, columns=first + rest)
    return df.sort_values([names.TRIAL, "step"], kind="stable").reset_index(drop=True)


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records → a frame with a fixed column order (trial columns, params, then the rest sorted by name), sorted
    by trial number, so that the same trials always give the same frame and the same CSV bytes."""
    columns: list[str] = list(names.TRIAL_COLUMNS)
    rest = sorted({k for r in records for k in r} - set(columns))
    columns += [c for c in rest if c.startswith(names.PARAM)] + [c for c in rest if not c.startswith(names.PARAM)]
    df = pd.DataFrame.from_records(list(records), columns=columns)
    if names.MIOU not in df.columns:
        df[names.MIOU] = math.nan
    return df.sort_values(names.TRIAL, kind="stable").reset_index(drop=True)


def trial_frame(optuna_study: Any) -> pd.DataFrame:
    return frame(trial_records(optuna_study.get_trials(deepcopy=False)))


def storage_frames(url: str, study_names: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Every study (or the named ones) in an Optuna storage → its trial frame."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file() or path.stat().st_size == 0:
            raise ResultsError(f"storage {redact(url)}: no such database file (or it is empty)")
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        available = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as error:
        first = first_line(error)
        raise ResultsError(f"storage {redact(url)}: cannot be read ({redact(first)[:200]})") from None
    if not available:
        raise ResultsError(f"storage {redact(url)}: holds no study")
    wanted = list(study_names) if study_names else available
    missing = [n for n in wanted if n not in available]
    if missing:
        raise ResultsError(f"storage {redact(url)}: no study {missing[0]!r}; it holds {sorted(available)}")
    return {n: trial_frame(optuna.load_study(study_name=n, storage=storage)) for n in wanted}


def storage_validations(url: str, name: str) -> pd.DataFrame:
    import optuna

    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    return validation_frame(optuna.load_study(study_name=name, storage=storage))


def recorded_design(url: str, name: str) -> dict[str, Any] | None:
    """The group-sequential design stored with study ``name`` (``ablations.sweep.board.DESIGN_ATTR``), if any."""
    import optuna

    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    return optuna.load_study(study_name=name, storage=storage).user_attrs.get("sequential")


def recorded_profile(url: str, name: str) -> str | None:
    """The profile a sweep recorded for study ``name`` when it started (after resolving ``auto``)."""
    import optuna

    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
    return (attrs.get("study") or {}).get("profile")


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it: a reader never sees half a file. Text is UTF-8
    with ``\n`` line ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_csv(df: pd.DataFrame) -> str:
    """The CSV text of a frame: full float precision (``repr``), ``\\n`` line ends, no index."""
    return df.to_csv(index=False, lineterminator="\n", float_format=None)


def read_csv(path: str | Path, required: Sequence[str] = names.REQUIRED_COLUMNS) -> pd.DataFrame:
    path = Path(path)
    try:
        # Arm labels are names ("8", "16", "(1,2,4)", "none"), never numbers: read them as text.
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={names.ARM: str})
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsError(f"{path}: not a readable CSV ({first_line(str(error), 160)})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}; a trial CSV needs {list(required)}")
    return df


def read_meta(path: str | Path) -> dict[str, Any]:
    """A study's ``<data>/<study>.meta.json`` (where and how its data was recorded; its sequential design), or {}
    when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{path}: not valid JSON") from None


def json_text(value: Any) -> str:
    """Stable JSON (sorted keys, two-space indent, final newline) for metadata files."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
