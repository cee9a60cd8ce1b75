"""Comparing a few seeded runs honestly: paired intervals, Holm's correction, seeds needed, one set of verdicts.

Every arm of a grid study runs the same seeds, so an arm is compared with the study's baseline **per seed**: the
differences d_s = arm_s − baseline_s get a t-interval, mean(d) ± t(1 − a/2, n − 1) · sd(d) / √n. When fewer than
two seeds are shared, Welch's interval on the two sets of values is used instead (and the comparison cannot be
resolved, see below). Several arms against one baseline are a family: Holm's step-down correction adjusts the
p-values, and each arm's interval is drawn at the level Holm tests it at (a / (m − rank + 1)), so an interval
that excludes 0 and a Holm-adjusted p below a say the same thing.

The verdict rule, applied to every table the project prints (``direction`` says which sign is good):

* **better** / **worse**: at least ``MIN_PAIRS`` paired seeds, Holm-adjusted p < a, and |Δ| ≥ ``min_effect``;
* **equivalent**: at least ``MIN_PAIRS`` paired seeds and the whole interval inside ±``min_effect``;
* otherwise **inconclusive**, with the number of seeds that would give an 80 % chance of a *resolved* verdict
  (better/worse or equivalent) at the strictest Holm level (a / m), if the true Δ and sd were the observed ones
  (:func:`seeds_needed`; an sd from 3 seeds is itself uncertain by a factor of 0.5 to 6).

A study may instead add seeds in looks until each comparison is resolved (``ablations.results.sequential``: a
group-sequential design whose verdicts replace these; the same interval and resolution functions).

No percentile bootstrap: at 3–10 seeds it under-covers badly (``../shared/reference/statistics.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

ALPHA = 0.05
POWER = 0.8
MIN_PAIRS = 3
MAX_SEEDS = 1000  # the seeds-needed search stops here ("> 1000")

BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
BASELINE = "baseline"
NOT_MEASURABLE = "not measurable"


@dataclass(frozen=True)
class Interval:
    """Δ = arm − baseline with its interval at ``level`` (two-sided), and the raw two-sided p-value."""

    method: str  # "paired" | "welch" | "none"
    n: int  # paired seeds (paired), or the smaller group (welch)
    delta: float
    sd: float  # sd of the paired differences (paired); Welch: its standard error × √n, for comparable size
    low: float
    high: float
    p: float
    level: float
    differences: tuple[float, ...] = ()


def paired_interval(differences: Sequence[float], *, alpha: float = ALPHA) -> Interval:
    """t-interval and two-sided t-test p-value for the mean of paired differences."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return Interval("none", 0, math.nan, math.nan, math.nan, math.nan, math.nan, 1 - alpha)
    mean = float(d.mean())
    if n < 2:
        return Interval("paired", n, mean, math.nan, -math.inf, math.inf, math.nan, 1 - alpha, tuple(d))
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    # No spread: any non-zero mean is certain (p = 0); a zero mean is no evidence at all (p = 1).
    p = (0.0 if mean != 0 else 1.0) if se == 0 else float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Interval("paired", n, mean, sd, mean - half, mean + half, p, 1 - alpha, tuple(float(x) for x in d))


def welch_interval(arm: Sequence[float], baseline: Sequence[float], *, alpha: float = ALPHA) -> Interval:
    """Welch's t-interval for mean(arm) − mean(baseline), for arms whose seeds do not pair up."""
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) < 2 or len(b) < 2:
        delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        return Interval("none", min(len(a), len(b)), delta, math.nan, -math.inf, math.inf, math.nan, 1 - alpha)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    delta = float(a.mean() - b.mean())
    if se == 0:
        return Interval("welch", min(len(a), len(b)), delta, 0.0, delta, delta, 0.0 if delta else 1.0, 1 - alpha)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    n = min(len(a), len(b))
    return Interval("welch", n, delta, se * math.sqrt(n), delta - half, delta + half, p, 1 - alpha)


def compare(arm: Mapping[int, float], baseline: Mapping[int, float], *, alpha: float = ALPHA) -> Interval:
    """Paired on the shared seeds when there are at least two; Welch on all values otherwise."""
    shared = sorted(set(arm) & set(baseline))
    if len(shared) >= 2:
        return paired_interval([arm[s] - baseline[s] for s in shared], alpha=alpha)
    return welch_interval(list(arm.values()), list(baseline.values()), alpha=alpha)


def holm(p_values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Holm-adjusted p-values (monotone) and each hypothesis's rank (1 = smallest p). NaN p-values stay NaN and
    count towards the family size."""
    m = len(p_values)
    finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(finite, key=lambda pi: (pi[0], pi[1]))
    adjusted = [math.nan] * m
    ranks = [m] * m
    running = 0.0
    for rank, (p, index) in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p))
        adjusted[index] = running
        ranks[index] = rank
    return adjusted, ranks


def critical_t(level: float, n: int) -> float:
    """|t| that a paired t with ``n`` seeds must exceed at two-sided ``level``."""
    return float(special.stdtrit(n - 1, 1 - level / 2))


@functools.cache
def _chi_grid(df: int, points: int = 256) -> np.ndarray:
    """√(Q/df) at ``points`` equally spaced quantiles of Q ~ χ²(df): S/σ for a sample sd with ``df`` degrees."""
    u = (np.arange(points) + 0.5) / points
    return np.sqrt(stats.chi2.ppf(u, df) / df)


def resolve_probability(
    delta: float,
    sd: float,
    n: int,
    *,
    level: float,
    equivalence_level: float | None = None,
    min_effect: float,
    threshold: float | None = None,
) -> float:
    """The chance that a fixed-n paired comparison of ``n`` seeds ends resolved — better/worse (t-test at ``level``
    rejects and |Δ̂| ≥ ``threshold``, default min_effect) or equivalent (interval at ``equivalence_level`` inside
    ±min_effect) — when the true mean difference is ``delta`` and the differences' sd is ``sd`` (Gaussian).
    Exact up to a 256-point quadrature over the sample sd. It is not t-test power: at a true Δ equal to min_effect
    "better" needs the estimate to clear min_effect too, which happens about half the time whatever n is."""
    if n < 2 or not math.isfinite(sd) or not math.isfinite(delta):
        return math.nan
    threshold = min_effect if threshold is None else threshold
    equivalence_level = level if equivalence_level is None else equivalence_level
    if sd == 0:
        return 1.0 if (delta != 0 and abs(delta) >= threshold) or abs(delta) < min_effect else 0.0
    se = sd / math.sqrt(n)
    s = _chi_grid(n - 1) * se  # the standard error the comparison will see, over the quadrature
    cut = np.maximum(critical_t(level, n) * s, threshold)
    outside = special.ndtr((-cut - delta) / se) + special.ndtr((delta - cut) / se)  # P(|D| > cut)
    inner = min_effect - critical_t(equivalence_level, n) * s
    inside = np.where(
        inner > 0, special.ndtr((inner - delta) / se) - special.ndtr((-inner - delta) / se), 0.0
    )  # P(|D| ≤ inner)
    return float(np.mean(outside + inside))


def seeds_needed(
    delta: float, sd: float, min_effect: float, *, alpha: float = ALPHA, chance: float = POWER
) -> int | None:
    """Smallest n (≥ ``MIN_PAIRS``) whose fixed-n paired comparison at two-sided level ``alpha`` ends **resolved**
    (better/worse or equivalent, :func:`resolve_probability`) with probability ≥ ``chance`` if the true Δ and the
    differences' sd are the observed ones; ``MAX_SEEDS + 1`` when no n up to ``MAX_SEEDS`` does; None when the sd
    is unknown. Not t-test power: "better" also needs the estimate to clear min_effect, so a Δ near min_effect may
    need more seeds than any budget."""
    if sd is None or delta is None or not math.isfinite(sd) or not math.isfinite(delta):
        return None

    def enough(n: int) -> bool:
        return resolve_probability(delta, sd, n, level=alpha, min_effect=min_effect) >= chance

    # Every n up to 16, then a geometric grid to MAX_SEEDS and a bisection inside the step that first suffices
    # (the chance grows with n there; about 30 evaluations instead of a thousand).
    grid = [*range(MIN_PAIRS, 17)]
    while grid[-1] < MAX_SEEDS:
        grid.append(min(MAX_SEEDS, int(grid[-1] * 1.25) + 1))
    previous = MIN_PAIRS - 1
    for n in grid:
        if enough(n):
            low, high = previous, n  # not enough at low (or below the range), enough at high
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if enough(middle) else (middle, high)
            return high
        previous = n
    return MAX_SEEDS + 1


@dataclass(frozen=True)
class Comparison:
    arm: str
    interval: Interval
    p_holm: float
    verdict: str
    seeds_needed: int | None
    note: str = ""

    @property
    def label(self) -> str:
        """The verdict as a table shows it."""
        if self.verdict != INCONCLUSIVE:
            return self.verdict
        if self.seeds_needed is None:
            return f"inconclusive (≥ {MIN_PAIRS} seeds needed)"
        more = f"> {MAX_SEEDS}" if self.seeds_needed > MAX_SEEDS else f"≈ {self.seeds_needed}"
        return f"inconclusive ({more} seeds needed)"


def verdict(
    interval: Interval, p_holm: float, min_effect: float, *, maximize: bool = True, floor: float = 0.0
) -> tuple[str, str]:
    """The rule (module docstring); returns (verdict, a note saying why, when it is not obvious). ``floor``: the
    instrument's noise floor; a |Δ| inside it is never better or worse."""
    if interval.method != "paired" or interval.n < MIN_PAIRS:
        reason = "seeds do not pair up" if interval.method == "welch" else f"{interval.n} paired seed(s)"
        return INCONCLUSIVE, f"{reason}; a verdict needs ≥ {MIN_PAIRS} paired seeds"
    inside = -min_effect <= interval.low and interval.high <= min_effect
    significant = not math.isnan(p_holm) and p_holm < ALPHA
    if significant and abs(interval.delta) >= max(min_effect, floor):
        good = interval.delta > 0 if maximize else interval.delta < 0
        return (BETTER if good else WORSE), clearance_note(interval, min_effect)
    if inside:
        return EQUIVALENT, ""
    if significant and abs(interval.delta) >= min_effect:
        return INCONCLUSIVE, f"significant, but |Δ| is inside the noise floor {floor:.4f}"
    if significant:
        return INCONCLUSIVE, f"significant, but |Δ| < min_effect {min_effect:g}"
    return INCONCLUSIVE, ""


def clearance_note(interval: Interval, min_effect: float) -> str:
    """For a better/worse verdict: whether its interval, not only its estimate, clears ±min_effect."""
    if interval.low >= min_effect or interval.high <= -min_effect:
        return ""
    return f"the interval admits |Δ| < min_effect {min_effect:g}"


def compare_arms(
    values: Mapping[str, Mapping[int, float]],
    baseline: str,
    *,
    min_effect: float,
    maximize: bool = True,
    alpha: float = ALPHA,
    identical_to: Mapping[str, str] | None = None,
    unmeasurable: Mapping[str, str] | None = None,
    floor: float | Mapping[str, float] = 0.0,
) -> list[Comparison]:
    """Every arm of ``values`` (arm → seed → metric) against ``baseline``, Holm-corrected as one family.
    ``identical_to`` names arms that build the same network as the baseline under the run's geometry: their
    difference is not a measurement of the studied choice, so they are labelled, not ranked; so are the arms of
    ``unmeasurable`` (arm → why its run cannot measure its setting)."""
    identical_to, unmeasurable = identical_to or {}, unmeasurable or {}
    others = [arm for arm in values if arm != baseline]
    raw = [compare(values[arm], values[baseline], alpha=alpha) for arm in others]
    adjusted, ranks = holm([r.p for r in raw])
    m = len(others)
    out = []
    for arm, p_holm, rank in zip(others, adjusted, ranks, strict=True):
        level = alpha / (m - rank + 1)
        interval = compare(values[arm], values[baseline], alpha=level)
        needed = (
            seeds_needed(interval.delta, interval.sd, min_effect, alpha=alpha / max(1, m))
            if interval.method == "paired"
            else None
        )
        if arm in identical_to:
            out.append(
                Comparison(arm, interval, p_holm, NOT_MEASURABLE, None, f"same network as {identical_to[arm]} here")
            )
            continue
        if arm in unmeasurable:
            out.append(Comparison(arm, interval, p_holm, NOT_MEASURABLE, None, unmeasurable[arm]))
            continue
        arm_floor = floor.get(arm, 0.0) if isinstance(floor, Mapping) else floor
        v, note = verdict(interval, p_holm, min_effect, maximize=maximize, floor=arm_floor)
        out.append(Comparison(arm, interval, p_holm, v, needed if v == INCONCLUSIVE else None, note))
    return out


def resolved_best(values: Mapping[str, Mapping[int, float]], *, min_effect: float, maximize: bool = True) -> str | None:
    """The arm with the best mean, if and only if it is resolved **better** than every other arm (paired,
    Holm over the m − 1 comparisons); None otherwise. Tables call an arm best only through this."""
    means = {arm: float(np.mean(list(v.values()))) for arm, v in values.items() if v}
    if len(means) < 2:
        return None
    top = (max if maximize else min)(means, key=means.get)
    # Compare every other arm against the top one: "worse" for each means the top arm beats them all.
    against = compare_arms({a: values[a] for a in means}, top, min_effect=min_effect, maximize=maximize)
    return top if all(c.verdict == WORSE for c in against) else None


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input's order: reject at FDR q where q-value ≤ q."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def pareto_front(points: Mapping[str, Sequence[float]], maximize: Sequence[bool]) -> list[str]:
    """Labels of the points no other point dominates (at least as good in every objective, better in one)."""

    def better_or_equal(a, b):
        return all((x >= y) if up else (x <= y) for x, y, up in zip(a, b, maximize, strict=True))

    front = []
    for label, p in points.items():
        if any(math.isnan(x) for x in p):
            continue
        dominated = any(
            other != label and better_or_equal(q, p) and tuple(q) != tuple(p)
            for other, q in points.items()
            if not any(math.isnan(x) for x in q)
        )
        if not dominated:
            front.append(label)
    return front
