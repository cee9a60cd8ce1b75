"""The instrument's own noise floor, from an A/A comparison (the ``noise_floor`` study): one configuration trained
twice per seed on two floating-point paths (oneDNN's CPU convolutions and PyTorch's native ones). The two runs
compute the same function from the same initialisation and batches; what separates them is rounding that grows
chaotically over a training run. The floor is the largest mean difference the A/A comparison is consistent with
(the farther end of its 95 % paired interval); a Δ no larger than it is never called better or worse, and every
page of the same profile shows it beside its Δs, with the sd of the per-seed A/A differences."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ablations.results import stats

STUDY = "noise_floor"


@dataclass(frozen=True)
class NoiseFloor:
    profile: str | None
    arms: tuple[str, str]  # (baseline, the other float path)
    pairs: int
    delta: float
    low: float
    high: float
    sd: float  # of the per-seed A/A differences

    @property
    def value(self) -> float:
        return max(abs(self.low), abs(self.high))

    def text(self) -> str:
        return (
            f"{self.value:.4f} mIoU (`{STUDY}` study, profile `{self.profile}`: `{self.arms[1]}` − "
            f"`{self.arms[0]}`, the same function on two floating-point paths, {self.pairs} paired seeds: Δ "
            f"{self.delta:+.4f} [{self.low:+.4f}, {self.high:+.4f}] at 95 %, sd of the per-seed differences "
            f"{self.sd:.4f}); a |Δ| within it is never called better or worse"
        )


def measure(df: pd.DataFrame, study) -> NoiseFloor | None:
    """The floor from the A/A study's trials (last-step values, paired by seed); None with fewer than 2 pairs."""
    from ablations.results.tables import final_values, seed_values

    baseline = study.baseline or study.arm_labels[0]
    other = next(a for a in study.arm_labels if a != baseline)
    values = seed_values(final_values(df, study), study.objectives[0].metric)
    a, b = values.get(baseline, {}), values.get(other, {})
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    i = stats.paired_interval([b[s] - a[s] for s in shared])
    return NoiseFloor(study.profile, (baseline, other), i.n, i.delta, i.low, i.high, i.sd)


def value(floor: NoiseFloor | None) -> float:
    return 0.0 if floor is None or math.isnan(floor.value) else floor.value


def for_column(floor: NoiseFloor | None, delta: float) -> str:
    """The Δ table's cell: whether |Δ| clears the floor."""
    if floor is None or delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "—"
    return "inside" if abs(delta) <= floor.value else "outside"
