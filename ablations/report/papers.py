"""The papers' numbers beside ours (``reports/papers.yaml``): published mIoU per arm, the published Δ against
the study's baseline, and whether our verdict goes the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.ioutil import load_yaml, read_text_file
from ablations.results import names, stats
from ablations.results.frames import ResultsError

ENTRY_KEYS = {"study", "paper", "table", "setup", "verified", "values", "metric", "mismatch"}
REPRODUCED, OPPOSITE, UNRESOLVED = "reproduced", "opposite", "unresolved"
NOT_REPRODUCED = "not reproduced (equivalent here)"
NO_EFFECT = "consistent (both below min_effect)"
NOT_ANSWERABLE = "not answerable here"
SMALL_PAPER = "no direction (paper's |Δ| < {:g} point)"
SIZE_UNRESOLVED = "unresolved (our interval admits |Δ| < min_effect)"
PAPER_MIN_DELTA = 1.0  # mIoU points: a published Δ smaller than this is within the papers' own seed spread
DIRECTION_RULE = (
    f"Direction: *reproduced* or *opposite* only when our verdict is better or worse with its whole interval beyond "
    f"±min_effect and the paper's |Δ| is at least {PAPER_MIN_DELTA:g} point (published seed spreads are 0.3–1 "
    "point); *not answerable here* where a studied conv of the arm or the baseline sees only its centre tap at the "
    "crop; *not reproduced (equivalent here)* when we resolve equivalence and the paper's |Δ| is at least that; "
    "otherwise no direction is claimed."
)


@dataclass(frozen=True)
class Published:
    study: str | None
    paper: str
    table: str
    setup: str
    verified: bool
    values: dict[str, float]
    metric: str = names.MIOU  # which of our metrics the values stand beside (val/before_crf/mIoU: before the CRF)
    mismatch: str = ""  # how the paper's rows differ from the study's configuration, said beside them

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}" + ("" if self.verified else " (unverified)")


def load_papers(path: str | Path) -> list[Published]:
    path = Path(path)
    raw = load_yaml(read_text_file("papers file", path, ResultsError), f"papers file {str(path)!r}", ResultsError)
    if not isinstance(raw, list):
        raise ResultsError(f"{path}: expected a list of entries (study, paper, table, setup, verified, values)")
    entries = []
    for index, entry in enumerate(raw):
        where = f"{path}: entry {index + 1}"
        if not isinstance(entry, dict) or set(entry) - ENTRY_KEYS or not {"paper", "table", "values"} <= set(entry):
            raise ResultsError(f"{where}: needs paper, table and values, and only the fields {sorted(ENTRY_KEYS)}")
        values = entry["values"]
        if not isinstance(values, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()
        ):
            raise ResultsError(f"{where}: values must map arm labels to finite mIoU numbers (%)")
        if entry.get("metric", names.MIOU) not in (names.MIOU, names.MIOU_BEFORE_CRF):
            raise ResultsError(
                f"{where}: metric {entry['metric']!r}: allowed {names.MIOU} (default) or {names.MIOU_BEFORE_CRF}"
            )
        entries.append(
            Published(
                study=entry.get("study"),
                paper=str(entry["paper"]),
                table=str(entry["table"]),
                setup=str(entry.get("setup", "")),
                verified=bool(entry.get("verified", True)),
                values={str(k): float(v) for k, v in values.items()},
                metric=str(entry.get("metric", names.MIOU)),
                mismatch=str(entry.get("mismatch", "")).strip(),
            )
        )
    return entries


def direction(
    published_delta: float | None,
    verdict: str,
    min_effect_points: float,
    *,
    clears: bool = True,
    unanswerable: str = "",
) -> str:
    """Does our verdict go the way the paper's Δ does? Only as far as both carry (``DIRECTION_RULE``): ``clears``
    says whether our interval (not only our estimate) lies beyond ±min_effect; ``unanswerable`` why the crop makes
    this arm's network another one than the paper's ("" when it does not)."""
    if published_delta is None or verdict == stats.BASELINE:
        return "—"
    if verdict == stats.NOT_MEASURABLE:
        return "not measurable here"
    if unanswerable:
        return NOT_ANSWERABLE
    small = abs(published_delta) < PAPER_MIN_DELTA
    if verdict in (stats.BETTER, stats.WORSE):
        if not clears:
            return SIZE_UNRESOLVED
        if small:
            return SMALL_PAPER.format(PAPER_MIN_DELTA)
        ours = 1 if verdict == stats.BETTER else -1
        return REPRODUCED if ours * published_delta > 0 else OPPOSITE
    if verdict == stats.EQUIVALENT:
        if abs(published_delta) < min_effect_points:
            return NO_EFFECT
        return SMALL_PAPER.format(PAPER_MIN_DELTA) if small else NOT_REPRODUCED
    return UNRESOLVED


def paper_frame(
    entry: Published,
    comparisons: pd.DataFrame,
    baseline: str,
    min_effect: float,
    *,
    unanswerable: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Per arm of the study: the published value (%), the published Δ against our baseline (points), our Δ
    (points), our verdict and the direction. ``min_effect`` is in mIoU (0–1); papers report %. ``unanswerable``:
    arm → why the crop makes its network another one than the paper's."""
    unanswerable = unanswerable or {}
    base = entry.values.get(baseline)
    rows = []
    for c in comparisons.to_dict("records"):
        arm = c[names.ARM]
        value = entry.values.get(arm)
        delta = value - base if value is not None and base is not None else None
        ours = c.get("delta")
        rows.append(
            {
                names.ARM: arm,
                "paper": value,
                "paper_delta": delta,
                "paper_text": "—" if value is None else f"{value:.2f}" + ("" if entry.verified else " (unverified)"),
                "paper_delta_text": "—" if delta is None or arm == baseline else f"{delta:+.2f}",
                "ours_delta_points": None if ours is None or _nan(ours) else 100 * ours,
                "verdict": c["verdict_label"],
                "direction": "—" if arm == baseline else (
                    "not published" if delta is None else direction(
                        delta, c["verdict"], 100 * min_effect, clears=not _admits_small(c),
                        unanswerable=unanswerable.get(arm, ""),
                    )
                ),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def _admits_small(comparison: dict[str, Any]) -> bool:
    """Whether a better/worse comparison's interval reaches inside ±min_effect (its note says so)."""
    return "admits |Δ| < min_effect" in str(comparison.get("note") or "")


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def papers_for(entries: list[Published], study: str, metric: str = names.MIOU) -> list[Published]:
    return [e for e in entries if e.study == study and e.metric == metric]


def crf_published(entries: list[Published], study: str) -> dict[str, tuple[float | None, float | None]]:
    """arm → the paper's (before, after) the CRF, from a study's entries for the two metrics (the first of each)."""
    before = next(iter(papers_for(entries, study, names.MIOU_BEFORE_CRF)), None)
    after = next(iter(papers_for(entries, study, names.MIOU)), None)
    arms = set(before.values if before else {}) | set(after.values if after else {})
    return {a: (before.values.get(a) if before else None, after.values.get(a) if after else None) for a in arms}
