"""One W&B run per study report (``job_type="report"``, in the study's group, next to its trial runs): the
per-arm and per-trial frames as ``wandb.Table``s, the figures, and the Markdown and CSV as an artifact. Offline
without credentials, like the trials; ``wandb sync`` uploads it later."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

REPORT_DIR = Path("runs") / "report"


def _table(frame: pd.DataFrame):
    import wandb

    clean = frame.copy()
    for column in clean.columns:
        if clean[column].dtype == object:
            clean[column] = clean[column].map(lambda v: None if v is None else str(v))
    return wandb.Table(dataframe=clean)


def log_reports(reports: Sequence, out_dir: Path, *, printer: Callable[[str], None] = print) -> list[str]:
    """Log each report; returns the W&B run directories (offline) or URLs (online)."""
    import wandb

    from ablations.training.train import wandb_mode

    mode = wandb_mode()
    save_dir = Path(os.environ.get("WANDB_DIR") or REPORT_DIR)
    save_dir.mkdir(parents=True, exist_ok=True)
    where = []
    for report in reports:
        name = report.name
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ablations"),
            group=name,
            job_type="report",
            name=f"report-{name}",
            dir=str(save_dir),
            mode=mode,
            config={
                "study": name,
                "study_file": str(report.study.path),
                "baseline": report.study.baseline,
                "min_effect": report.study.min_effect,
                "seeds": list(report.study.seeds),
            },
            reinit="create_new",
        )
        try:
            logged = {"trials": _table(report.trials)}
            if report.study.is_grid:
                logged["arms"] = _table(report.tables["display"])
                logged["comparisons"] = _table(report.tables["comparisons"])
            else:
                logged["points"] = _table(report.search[0])
            for figure in sorted((out_dir / "figures").glob(f"{name}-*.png")):
                logged[f"figure/{figure.stem.removeprefix(name + '-')}"] = wandb.Image(str(figure))
            run.log(logged)
            if report.study.is_grid:
                run.summary["best"] = report.tables["best"] or "none resolved"
            artifact = wandb.Artifact(f"report-{name}", type="report")
            artifact.add_file(str(out_dir / f"{name}.md"))
            for csv in sorted((out_dir / "data").glob(f"{name}.*csv")) + sorted((out_dir / "tables").glob(f"{name}.*")):
                artifact.add_file(str(csv))
            run.log_artifact(artifact)
            where.append(run.url or run.dir)
        finally:
            run.finish()
    printer(f"W&B ({mode}): {len(where)} report run(s) in {save_dir}" + ("; `wandb sync` uploads them" if mode ==
                                                                         "offline" else ""))  # fmt: skip
    return where
