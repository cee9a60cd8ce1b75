"""Adding seeds until each comparison is resolved: a group-sequential design over paired seeds, its boundaries, and
the one decision function that the sweep (which seeds to run next) and every table (which verdict to print) use.

**The design.** Looks at a fixed, increasing list of seed counts (default 3, 6, 12); look k uses the first
``looks[k]`` seeds of the design's seed order, for every arm still unresolved and for the baseline (the comparison is
paired, so the baseline runs every seed any arm uses). Each arm's paired t-test is run at every look against a
nominal two-sided level from a boundary family — O'Brien–Fleming (strict early, close to the fixed-n level at the
last look) or Pocock (the same level at every look) — calibrated so that the probability of crossing at any look is
the arm's share of α under Gaussian differences (:func:`nominal_levels`: simulation with a fixed seed, so the same
design always gets the same boundaries; ``../shared/reference/statistics.md`` has independently calibrated values
for looks 3/6/12, which the tests check these against).

**Several arms.** A graphical Holm procedure (Maurer & Bretz 2013, equal weights): every arm starts with α/m; when
an arm's null (Δ = 0) is rejected at a look, its share passes in equal parts to the arms not yet rejected, which are
tested again at that look with their larger share. The family-wise error of "better/worse" stays ≤ α over all arms
and looks. Equivalence is a second family with its own shares (α/m each, passed on the same way when an arm is
declared equivalent): an arm is equivalent at a look when its interval at the level of that look's boundary for its
equivalence share lies inside ±min_effect (two one-sided tests at half that level), so a false "equivalent" when
|Δ| = min_effect has probability ≤ α/2 over the family.

**Verdicts at a look**, for each arm still running:

* **better / worse** — its null rejected (now or at an earlier look) and |Δ̂| ≥ max(min_effect, noise floor);
* **equivalent** — declared by the equivalence family;
* at the last look, anything else is **inconclusive**, with the reason;
* at an interim look, an arm whose chance of a resolved verdict at the last look is below ``futility`` (computed at
  the observed Δ and sd, :func:`resolve_probability`) stops as **inconclusive (futility)**; futility stops are
  non-binding — stopping never raises either error rate — and ``futility: 0`` turns them off;
* otherwise it runs the next look's seeds.

A look is decided once every arm still running and the baseline have a settled trial for each of its seeds (a
finished failure, such as a diverged run, counts as settled; its pair is missing from the comparison).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from ablations.results.stats import (
    BETTER,
    EQUIVALENT,
    INCONCLUSIVE,
    WORSE,
    Interval,
    clearance_note,
    critical_t,
    resolve_probability,
)

BOUNDARIES = ("obrien-fleming", "pocock")
BOUNDARY_NAMES = {"obrien-fleming": "O'Brien–Fleming", "pocock": "Pocock"}
DEFAULT_LOOKS = (3, 6, 12)
DEFAULT_ALPHA = 0.05
DEFAULT_FUTILITY = 0.05
MAX_LOOK = 1000
SIMULATIONS = 400_000  # Gaussian studies per calibration (the Monte-Carlo error of a level is about 1 % of it)
CALIBRATION_SEED = 20_261_208
RUNNING = "running"  # an arm waiting for the seeds of its next look


class DesignError(ValueError):
    """A sequential design that cannot run: the message names the field, the bad value and what is allowed."""


@dataclass(frozen=True)
class Design:
    """A group-sequential design: ``looks`` (seed counts), the family-wise ``alpha``, the ``boundary`` family,
    the ``futility`` threshold and the seed order (look k runs ``seeds[:looks[k]]``)."""

    looks: tuple[int, ...] = DEFAULT_LOOKS
    alpha: float = DEFAULT_ALPHA
    boundary: str = "obrien-fleming"
    futility: float = DEFAULT_FUTILITY
    seeds: tuple[int, ...] = ()
    # The profile's noise floor when the design was stored (``results.noise``): a |Δ| within it is not better or
    # worse, so such an arm goes on to the next look. Not part of the design's identity (``identity``).
    floor: float = 0.0

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def identity(self) -> dict[str, Any]:
        """What a stored design must match for a sweep to continue it: looks, α, boundary, futility, seed order."""
        return {k: v for k, v in self.to_dict().items() if k != "floor"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "looks": list(self.looks),
            "alpha": self.alpha,
            "boundary": self.boundary,
            "futility": self.futility,
            "seeds": list(self.seeds),
            "floor": self.floor,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Design:
        return cls(
            looks=tuple(int(n) for n in data["looks"]),
            alpha=float(data["alpha"]),
            boundary=str(data["boundary"]),
            futility=float(data["futility"]),
            seeds=tuple(int(s) for s in data.get("seeds", ())),
            floor=float(data.get("floor", 0.0)),
        )

    def describe(self) -> str:
        """The design in one sentence, as every table and page states it."""
        looks = ", ".join(map(str, self.looks))
        futility = (
            f"futility stop (non-binding) when the chance of a resolved verdict at {self.max_seeds} seeds, at the "
            f"observed Δ and sd, is below {self.futility:g}"
            if self.futility > 0
            else "no futility stops"
        )
        return (
            f"group-sequential design: looks at {looks} paired seeds (seeds {_seed_text(self.seeds)}); "
            f"{BOUNDARY_NAMES[self.boundary]} boundaries for each arm's paired t, shares of α = {self.alpha:g} "
            f"split and passed on by graphical Holm (family-wise error ≤ α over all arms and looks); equivalence "
            f"as its own family (false equivalent ≤ α/2); {futility}; seeds added only to unresolved arms"
            + (f"; an arm whose |Δ| is within the noise floor {self.floor:.4f} goes on" if self.floor > 0 else "")
        )


def boundary_text(design: Design, arms: int) -> str:
    """The boundaries an arm starts with (its share α/m) and those of the largest share it can be passed (α), as
    nominal two-sided p and |t| per look."""

    def one(share: float) -> str:
        levels = nominal_levels(design.looks, share, design.boundary)
        return " / ".join(f"p {p:.2g} (|t| {critical_t(p, n):.3g})" for p, n in zip(levels, design.looks, strict=True))

    first = design.alpha / max(arms, 1)
    text = (
        f"boundaries at looks {', '.join(map(str, design.looks))} for an arm's starting share α/{arms} = {first:.4g}: "
    )
    text += one(first)
    if arms > 1:
        text += f"; with the whole α = {design.alpha:g} (every other arm rejected): {one(design.alpha)}"
    return text


def _seed_text(seeds: Sequence[int]) -> str:
    s = list(seeds)
    if len(s) > 2 and s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s)) or "—"


def make_design(
    *,
    looks: Sequence[int] | None = None,
    alpha: float | None = None,
    boundary: str | None = None,
    futility: float | None = None,
    max_seeds: int | None = None,
    first_seeds: Sequence[int] = (),
    where: str = "sequential",
) -> Design:
    """A checked design. ``first_seeds`` (the study's seeds) open the seed order, which goes on with the integers
    after the largest of them. Without ``looks``, the default looks are cut at ``max_seeds`` (which becomes the
    last look). Every bad value raises :class:`DesignError` naming it."""
    if max_seeds is not None and (not _is_int(max_seeds) or max_seeds < 2 or max_seeds > MAX_LOOK):
        raise DesignError(f"{where}: max_seeds={max_seeds!r}: an integer 2 … {MAX_LOOK}")
    if looks is None:
        chosen = list(DEFAULT_LOOKS)
        if max_seeds is not None:
            chosen = [n for n in chosen if n < max_seeds] + [max_seeds]
    else:
        chosen = list(looks)
    if not chosen or not all(_is_int(n) for n in chosen):
        raise DesignError(f"{where}: looks={chosen!r}: a non-empty list of increasing seed counts, e.g. [3, 6, 12]")
    if chosen[0] < 2:
        raise DesignError(f"{where}: looks={chosen!r}: the first look needs at least 2 seeds (a paired t needs 2)")
    if any(b <= a for a, b in itertools.pairwise(chosen)):
        raise DesignError(f"{where}: looks={chosen!r}: seed counts must be strictly increasing, e.g. [3, 6, 12]")
    if chosen[-1] > MAX_LOOK:
        raise DesignError(f"{where}: looks={chosen!r}: at most {MAX_LOOK} seeds")
    if max_seeds is not None and chosen[-1] > max_seeds:
        raise DesignError(f"{where}: looks={chosen!r}: the last look exceeds max_seeds={max_seeds}; allowed: ≤ it")
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if not _is_number(alpha) or not 0 < alpha < 0.5:
        raise DesignError(f"{where}: alpha={alpha!r}: a number with 0 < alpha < 0.5 (the family-wise error rate)")
    boundary = boundary or "obrien-fleming"
    if boundary not in BOUNDARIES:
        raise DesignError(f"{where}: boundary={boundary!r}: allowed {list(BOUNDARIES)}")
    futility = DEFAULT_FUTILITY if futility is None else futility
    if not _is_number(futility) or not 0 <= futility < 1:
        raise DesignError(f"{where}: futility={futility!r}: a probability 0 ≤ futility < 1 (0: no futility stops)")
    seeds = list(dict.fromkeys(int(s) for s in first_seeds))
    following = (max(seeds) + 1) if seeds else 0
    while len(seeds) < chosen[-1]:
        seeds.append(following)
        following += 1
    return Design(tuple(chosen), float(alpha), boundary, float(futility), tuple(seeds[: chosen[-1]]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------------------
# Boundaries


@functools.cache
def _simulated_p(looks: tuple[int, ...]) -> np.ndarray:
    """Two-sided paired-t p-values at each look of Gaussian studies under the null: (SIMULATIONS, len(looks))."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    out = np.empty((SIMULATIONS, len(looks)))
    chunk = 50_000
    for start in range(0, SIMULATIONS, chunk):
        x = rng.standard_normal((min(chunk, SIMULATIONS - start), looks[-1]))
        total, squares = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
        for k, n in enumerate(looks):
            mean = total[:, n - 1] / n
            var = np.maximum(squares[:, n - 1] - n * mean * mean, 0.0) / (n - 1)
            t = np.abs(mean) / np.sqrt(var / n)
            out[start : start + len(x), k] = 2 * special.stdtr(n - 1, -t)
    return out


@functools.cache
def nominal_levels(looks: tuple[int, ...], alpha: float, boundary: str) -> tuple[float, ...]:
    """The nominal two-sided p-value an arm's paired t must fall below at each look, so that under the null the
    chance of crossing at any look is ``alpha`` (Gaussian differences). Pocock: one level for every look.
    O'Brien–Fleming: z boundaries proportional to 1/√(information fraction), turned into p-values (the level at
    look k is 2·(1 − Φ(C·√(N/n_k)))). One look is the fixed-n test at ``alpha``."""
    if len(looks) == 1:
        return (alpha,)
    p = _simulated_p(looks)
    if boundary == "pocock":
        level = float(np.quantile(p.min(axis=1), alpha, method="inverted_cdf"))
        return (level,) * len(looks)
    fractions = np.asarray(looks, dtype=float) / looks[-1]
    z = special.ndtri(1 - p / 2) * np.sqrt(fractions)  # each look's z, scaled to the last look's information
    c = float(np.quantile(z.max(axis=1), 1 - alpha, method="inverted_cdf"))
    return tuple(float(2 * special.ndtr(-c / math.sqrt(f))) for f in fractions)


# --------------------------------------------------------------------------------------------------------------
# One comparison


def paired(differences: Sequence[float], level: float) -> Interval:
    """The paired t-interval at two-sided ``level`` (its coverage is 1 − level) and the raw two-sided p."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return Interval("paired" if n else "none", n, mean, math.nan, -math.inf, math.inf, math.nan, 1 - level)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
        return Interval("paired", n, mean, sd, mean, mean, p, 1 - level, tuple(float(x) for x in d))
    half = critical_t(level, n) * se
    p = float(2 * special.stdtr(n - 1, -abs(mean) / se))
    return Interval("paired", n, mean, sd, mean - half, mean + half, p, 1 - level, tuple(float(x) for x in d))


# --------------------------------------------------------------------------------------------------------------
# The decision function


@dataclass(frozen=True)
class ArmState:
    """One arm's standing: its verdict (or ``running``), the look it came from (1-based; for a running arm the
    last decided look, 0 before the first), the interval at that look's level, and why."""

    arm: str
    verdict: str
    look: int
    interval: Interval
    boundary_p: float  # the nominal two-sided level the arm's null was tested at, at that look
    note: str = ""


@dataclass
class Outcome:
    """Where a sequential study stands: each arm's state, the looks decided, and the (arm, seed) pairs the design
    wants run so far (every earlier look's and the current one's)."""

    design: Design
    states: dict[str, ArmState]
    decided_looks: int
    pairs: list[tuple[str, int]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.verdict != RUNNING for s in self.states.values())


def decide(
    values: Mapping[str, Mapping[int, float]],
    baseline: str,
    arms: Sequence[str],
    design: Design,
    *,
    min_effect: float,
    maximize: bool = True,
    floor: float | Mapping[str, float] = 0.0,
    settled: set[tuple[str, int]] | None = None,
) -> Outcome:
    """Run ``design`` over the stored ``values`` (arm → seed → value) of ``arms`` against ``baseline``: decide
    every look whose seeds are all settled (``settled``: the (arm, seed) pairs with a finished trial; default, those
    with a value), and say which pairs the design wants run. A pure function of the data, so that every worker,
    every resumed sweep and every report reach the same verdicts."""
    settled = settled if settled is not None else {(a, s) for a, v in values.items() for s in v}
    arms = [a for a in arms if a != baseline]
    m = len(arms)
    share = dict.fromkeys(arms, design.alpha / max(m, 1))  # superiority shares (graphical Holm)
    share_eq = dict(share)  # equivalence shares
    rejected: dict[str, int] = {}  # arm → look (1-based) its null fell at
    equivalent: dict[str, int] = {}
    states: dict[str, ArmState] = {
        a: ArmState(a, RUNNING, 0, Interval("none", 0, math.nan, math.nan, -math.inf, math.inf, math.nan, math.nan), 1)
        for a in arms
    }
    active = list(arms)
    pairs: list[tuple[str, int]] = []
    decided = 0
    floors = floor if isinstance(floor, Mapping) else dict.fromkeys(arms, floor)  # per arm (tables.arm_floors)
    last = len(design.looks) - 1
    for k, n_k in enumerate(design.looks):
        if not active:
            break
        seeds = design.seeds[:n_k]
        pairs += [(a, s) for s in seeds for a in [baseline, *active] if (a, s) not in pairs]
        if not all((a, s) in settled for a in [baseline, *active] for s in seeds):
            break  # this look is still running
        base = values.get(baseline, {})

        def differences(arm: str, seeds=seeds, base=base) -> list[float]:
            mine = values.get(arm, {})
            return [mine[s] - base[s] for s in seeds if s in mine and s in base]

        diffs = {a: differences(a) for a in active}
        levels = {a: nominal_levels(design.looks, share[a], design.boundary)[k] for a in active}
        intervals = {a: paired(diffs[a], levels[a]) for a in active}
        while True:  # superiority: reject, pass the shares on, test the others again at this look
            newly = [
                a
                for a in active
                if a not in rejected and intervals[a].n >= 2 and not math.isnan(intervals[a].p)
                and intervals[a].p < levels[a]
            ]  # fmt: skip
            if not newly:
                break
            for a in newly:
                rejected[a] = k + 1
            _pass_on(share, [a for a in arms if a not in rejected], design.alpha)
            levels = {a: nominal_levels(design.looks, share[a], design.boundary)[k] for a in active}
            intervals = {a: (intervals[a] if a in rejected else paired(diffs[a], levels[a])) for a in active}
        while True:  # equivalence: its own family of shares
            newly = []
            for a in active:
                if a in equivalent or len(diffs[a]) < 2:
                    continue
                level = nominal_levels(design.looks, share_eq[a], design.boundary)[k]
                i = paired(diffs[a], level)
                if -min_effect < i.low and i.high < min_effect:
                    newly.append(a)
            if not newly:
                break
            for a in newly:
                equivalent[a] = k + 1
            _pass_on(share_eq, [a for a in arms if a not in equivalent], design.alpha)
        still = []
        for a in active:
            i, level = intervals[a], levels[a]
            good = (i.delta > 0) == maximize
            verdict, note = RUNNING, ""
            if a in rejected and abs(i.delta) >= max(min_effect, floors.get(a, 0.0)):
                verdict = BETTER if good else WORSE
                note = clearance_note(i, min_effect)
            elif a in equivalent:
                level = nominal_levels(design.looks, share_eq[a], design.boundary)[k]
                i = paired(diffs[a], level)
                verdict = EQUIVALENT
                note = "Δ ≠ 0, but within ±min_effect" if a in rejected else ""
            elif k == last:
                verdict, note = INCONCLUSIVE, _why_inconclusive(i, a in rejected, min_effect, floors.get(a, 0.0))
            elif design.futility > 0 and i.n >= 2:
                final = nominal_levels(design.looks, share[a], design.boundary)[-1]
                final_eq = nominal_levels(design.looks, share_eq[a], design.boundary)[-1]
                chance = resolve_probability(
                    i.delta, i.sd, design.max_seeds, level=final, equivalence_level=final_eq, min_effect=min_effect,
                    threshold=max(min_effect, floors.get(a, 0.0)),
                )  # fmt: skip
                if chance < design.futility:
                    verdict = INCONCLUSIVE
                    note = (
                        f"futility stop: a {chance:.0%} chance of a resolved verdict at {design.max_seeds} seeds "
                        "at the observed Δ and sd"
                    )
            states[a] = ArmState(a, verdict, k + 1, i, level, note)
            if verdict == RUNNING:
                still.append(a)
        active = still
        decided = k + 1
    return Outcome(design, states, decided, pairs)


def _pass_on(shares: dict[str, float], open_arms: Sequence[str], alpha: float) -> None:
    """Equal-weight graphical Holm: the arms not yet rejected share α equally."""
    for a in open_arms:
        shares[a] = alpha / len(open_arms)


def _why_inconclusive(interval: Interval, rejected: bool, min_effect: float, floor: float) -> str:
    if interval.n < 2:
        return f"{interval.n} paired seed(s)"
    if rejected and abs(interval.delta) < floor and floor > min_effect:
        return f"Δ ≠ 0, but |Δ| is inside the noise floor {floor:.4f}"
    if rejected:
        return f"Δ ≠ 0, but |Δ| < min_effect {min_effect:g} and the interval is not within ±min_effect"
    return ""


def look_lines(study: Any, result: Outcome, *, since: int = 0) -> list[str]:
    """What a sequential study's decided looks (from ``since`` on) found, and what runs next."""
    design = result.design
    lines = []
    for k in range(max(since, 1), result.decided_looks + 1):
        decided = [s for s in result.states.values() if s.look == k and s.verdict != RUNNING]
        going = [s.arm for s in result.states.values() if s.look == k and s.verdict == RUNNING]
        verdicts = "; ".join(f"{s.arm} {s.verdict} (Δ {s.interval.delta:+.4f})" for s in decided) or "none resolved"
        lines.append(
            f"[{study.name}] look {k} of {len(design.looks)} ({design.looks[k - 1]} seeds) decided: {verdicts}"
            + (f"; unresolved, on to {design.looks[k]} seeds: {', '.join(going)}" if going else "")
        )
    if result.finished:
        lines.append(f"[{study.name}] the sequential design is finished: every arm is resolved or stopped")
    return lines
