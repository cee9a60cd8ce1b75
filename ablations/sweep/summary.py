"""The end-of-sweep summary of a study in its storage: the verdict tables of a grid study (the same
``tables.study_tables`` the reports use) or the points and Pareto front of a search study, as printed text and as
``summary.md``, ``summary.json`` and ``trials.json`` in the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.results import noise, sequential, tables
from ablations.results.frames import trial_frame, trial_records
from ablations.results.jsonable import json_safe

REPORT_DATA = Path("reports/data")  # the committed data the noise floor is read from (relative to the project)


def trial_rows(optuna_study) -> list[dict[str, Any]]:
    """One flat dict per trial that ran: number, state, arm, seed, params, failure and every stored metric."""
    return trial_records(optuna_study.get_trials(deepcopy=False))


def comparison(study, optuna_study, *, geometry: Any = None, floor: Any = None) -> dict[str, Any]:
    """The verdict tables of a grid study (``results.tables.study_tables``) or the points and Pareto front of
    a search study. ``floor``: the profile's noise floor (``results.noise``), where measured."""
    df = trial_frame(optuna_study)
    if study.is_grid:
        return tables.study_tables(study, df, geometry=geometry, short=True, floor=noise.value(floor))
    objectives = [(o.metric, o.direction == "maximize") for o in study.objectives]
    points, front = tables.search_frame(df, objectives)
    return {"points": points, "front": front, "display": tables.search_display(points, objectives)}


def format_table(study, result: dict[str, Any], *, study_name: str, geometry: Any = None, floor: Any = None) -> str:
    title = f"{study_name}: {study.axis or 'search'} — {study.description.split('. ')[0] if study.description else ''}"
    lines = [title.rstrip(" —"), tables.render(result["display"], "text"), ""]
    if study.is_grid:
        lines.append(tables.headline(study, result))
        if result.get("sequential") is not None:
            lines += sequential.look_lines(study, result["sequential"])
        if geometry is not None:
            lines.append(f"geometry: {geometry.summary()}")
        lines.append(tables.verdict_rule(study, result.get("compared")))
        lines.append("noise floor: " + (floor.text() if floor is not None else "not measured for this profile "
                                           f"(make sweep-{noise.STUDY}; its data in reports/data)"))  # fmt: skip
        lines.append(
            "train/infer img/s (trial): each trial's own figures, taken minutes apart (a record, not a comparison; "
            "`ablations report --bench` times the arms interleaved); overhead: each trial's time outside its optimiser "
            "steps (setup, W&B, validation, checkpoints, inference figures) over its optimiser-step time, seed mean; "
            "GMACs: one training-stride forward pass."
        )
    else:
        lines.append(
            f"Pareto front over {', '.join(o.metric for o in study.objectives)} from seed means "
            f"({len(result['front'])} points): candidates to re-run over seeds, not verdicts."
        )
    return "\n".join(lines)


def write_outputs(study, optuna_study, out_dir: Path, study_name: str) -> str:
    """Print-ready table; also ``summary.md``, ``summary.json`` and ``trials.json`` in the run folder."""
    from ablations.sweep.geometry import study_geometry

    geometry = study_geometry(study) if study.is_grid else None
    floor = committed_floor(REPORT_DATA, study.profile) if study.is_grid and study.name != noise.STUDY else None
    result = comparison(study, optuna_study, geometry=geometry, floor=floor)
    text = format_table(study, result, study_name=study_name, geometry=geometry, floor=floor)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text("```\n" + text + "\n```\n")
    frames = {k: v for k, v in result.items() if isinstance(v, pd.DataFrame) and k != "display"}
    summary = {k: json.loads(v.to_json(orient="records")) for k, v in frames.items()}
    summary.update({k: v for k, v in result.items() if k in ("best", "front")})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "trials.json").write_text(json.dumps(json_safe(trial_rows(optuna_study)), indent=2, default=str))
    return text


def committed_floor(
    data_dir: str | Path, profile: str | None, sweeps_dir: str | Path = "sweeps"
) -> noise.NoiseFloor | None:
    """The floor committed in ``data_dir`` for ``profile`` (its ``noise_floor.csv``, recorded with that profile), or
    None when it has not been measured there."""
    from ablations.results.frames import read_csv, read_meta
    from ablations.sweep.study import StudyError, load_study

    data_dir = Path(data_dir)
    csv, meta = data_dir / f"{noise.STUDY}.csv", data_dir / f"{noise.STUDY}.meta.json"
    study_file = Path(sweeps_dir) / f"{noise.STUDY}.yaml"
    if not (csv.is_file() and meta.is_file() and study_file.is_file()):
        return None
    try:
        recorded = read_meta(meta).get("profile")
        if recorded != profile:
            return None
        return noise.measure(read_csv(csv), load_study(study_file, profile=recorded))
    except (ValueError, StudyError, OSError):
        return None
