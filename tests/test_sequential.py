"""The group-sequential design: its boundaries against independently calibrated values, its decision function
simulated under the null (family-wise error of better/worse ≤ α for 1–6 arms, Gaussian and heavy-tailed
differences) and at |Δ| = min_effect (false equivalent ≤ α/2), and its bookkeeping (which seeds run next)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ablations.results import stats
from ablations.results.sequential import (
    RUNNING,
    DesignError,
    critical_t,
    decide,
    make_design,
    nominal_levels,
)

LOOKS = (3, 6, 12)


# ../shared/reference/statistics.md: nominal two-sided p per look for one arm, looks 3/6/12, Gaussian differences,
# calibrated there by a separate simulation (200,000 studies a row).
@pytest.mark.parametrize(
    ("alpha", "pocock", "last_obf", "middle_obf"),
    [(0.05, 0.0187, 0.0467, 0.0049), (0.025, 0.0090, 0.0238, 0.0014), (0.0167, 0.0059, 0.0161, 6.6e-4),
     (0.0125, 0.0044, 0.0121, 3.9e-4)],
)  # fmt: skip
def test_boundaries_match_the_independently_calibrated_table(alpha, pocock, last_obf, middle_obf):
    assert nominal_levels(LOOKS, alpha, "pocock") == pytest.approx((pocock,) * 3, rel=0.04)
    obf = nominal_levels(LOOKS, alpha, "obrien-fleming")
    assert obf[2] == pytest.approx(last_obf, rel=0.03) and obf[1] == pytest.approx(middle_obf, rel=0.08)
    assert obf[0] < obf[1] < obf[2] < alpha  # strict early, close to the fixed-n level at the last look
    # the table's |t| at the last look, for α = 0.05: 2.24 (O'Brien–Fleming), 2.76 (Pocock)
    if alpha == 0.05:
        assert critical_t(obf[2], 12) == pytest.approx(2.24, abs=0.02)
        assert critical_t(nominal_levels(LOOKS, alpha, "pocock")[2], 12) == pytest.approx(2.76, abs=0.03)


def test_one_look_is_the_fixed_n_test():
    assert nominal_levels((5,), 0.05, "obrien-fleming") == (0.05,)


def _draw(rng, kind: str, size):
    return rng.standard_normal(size) if kind == "normal" else rng.standard_t(3, size)


def _simulate(arms: int, kind: str, studies: int, *, shift: float, sd: float, min_effect: float, seed: int):
    """Share of simulated studies with any better/worse verdict, and with any equivalent verdict. Every arm's
    true Δ is ``shift``; baseline and arms draw independent values per seed (so the comparisons share the
    baseline's noise, as real ones do)."""
    rng = np.random.default_rng(seed)
    design = make_design(first_seeds=(0, 1, 2))
    labels = [f"a{i}" for i in range(arms)]
    claims = equivalents = 0
    for _ in range(studies):
        values = {"b": dict(enumerate(sd * _draw(rng, kind, 12)))}
        for label in labels:
            values[label] = dict(enumerate(shift + sd * _draw(rng, kind, 12)))
        verdicts = [s.verdict for s in decide(values, "b", labels, design, min_effect=min_effect).states.values()]
        claims += any(v in (stats.BETTER, stats.WORSE) for v in verdicts)
        equivalents += any(v == stats.EQUIVALENT for v in verdicts)
    return claims / studies, equivalents / studies


STUDIES = 1500
MC = 3 * math.sqrt(0.05 * 0.95 / STUDIES)  # three Monte-Carlo standard errors at α = 0.05


@pytest.mark.parametrize("kind", ["normal", "t3"])
@pytest.mark.parametrize("arms", [1, 2, 3, 4, 5, 6])
def test_under_the_null_the_family_wise_error_of_better_or_worse_is_at_most_alpha(arms, kind):
    # min_effect small against the spread, so that every rejection of Δ = 0 becomes a claim.
    false_claims, _ = _simulate(arms, kind, STUDIES, shift=0.0, sd=1.0, min_effect=0.01, seed=100 + arms)
    assert false_claims <= 0.05 + MC


@pytest.mark.parametrize("arms", [1, 3, 6])
def test_at_a_true_difference_of_min_effect_false_equivalence_is_at_most_half_alpha(arms):
    # sd chosen so that the equivalence test has real power near the band's middle (its interval at 12 seeds
    # is about ±0.7 min_effect), the case where a lax rule would declare the edge equivalent.
    _, false_equivalent = _simulate(arms, "normal", STUDIES, shift=1.0, sd=0.5, min_effect=1.0, seed=200 + arms)
    assert false_equivalent <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / STUDIES)


def _values(baseline, **arms):
    out = {"base": dict(enumerate(baseline))}
    out.update({a: dict(enumerate(v)) for a, v in arms.items()})
    return out


BASE12 = [0.80 + 0.001 * (s % 5) for s in range(12)]


def test_a_clear_effect_resolves_at_the_first_look_and_seeds_go_only_to_the_others():
    design = make_design(first_seeds=(0, 1, 2), boundary="pocock")
    big = [b + 0.05 + 1e-5 * s for s, b in enumerate(BASE12[:3])]  # Δ 0.05 with almost no spread
    noisy = [b + d for b, d in zip(BASE12[:3], (0.004, -0.01, 0.012), strict=True)]
    result = decide(_values(BASE12[:3], big=big, noisy=noisy), "base", ["big", "noisy"], design, min_effect=0.01)
    assert result.decided_looks == 1
    assert result.states["big"].verdict == stats.BETTER and result.states["big"].look == 1
    assert result.states["noisy"].verdict == RUNNING
    # look 2 wants seeds 3-5 for the unresolved arm and the baseline, none for the resolved one
    assert {p for p in result.pairs if p[1] >= 3} == {(a, s) for a in ("base", "noisy") for s in (3, 4, 5)}


def test_a_look_waits_for_every_settled_seed_and_a_finished_failure_counts_as_settled():
    design = make_design(looks=(3, 6), first_seeds=(0, 1, 2), futility=0)
    arm = [b + d for b, d in zip(BASE12[:6], (0.004, -0.01, 0.012, 0.0, 0.003, -0.002), strict=True)]
    values = _values(BASE12[:6], arm=arm)
    del values["arm"][5]  # seed 5 of the arm has not run yet
    result = decide(values, "base", ["arm"], design, min_effect=0.01)
    assert result.decided_looks == 1 and result.states["arm"].verdict == RUNNING
    settled = {(a, s) for a in ("base", "arm") for s in range(6)}  # …or it diverged: settled without a value
    result = decide(values, "base", ["arm"], design, min_effect=0.01, settled=settled)
    assert result.decided_looks == 2 and result.states["arm"].verdict != RUNNING
    assert result.states["arm"].interval.n == 5  # the failed seed's pair is missing from the comparison


def test_the_last_look_leaves_an_unresolved_arm_inconclusive_and_futility_stops_a_hopeless_one_early():
    noisy = [b + d for b, d in zip(BASE12, (0.02, -0.03, 0.03, -0.02, 0.025, -0.035) * 2, strict=True)]
    design = make_design(first_seeds=(0, 1, 2), futility=0)
    last = decide(_values(BASE12, arm=noisy), "base", ["arm"], design, min_effect=0.01)
    assert last.decided_looks == 3 and last.states["arm"].verdict == stats.INCONCLUSIVE and last.finished
    hopeful = make_design(first_seeds=(0, 1, 2), futility=0.5)  # stops whatever is less than a coin flip
    early = decide(_values(BASE12, arm=noisy), "base", ["arm"], hopeful, min_effect=0.01)
    assert early.states["arm"].look == 1 and "futility" in early.states["arm"].note


def test_a_difference_inside_the_noise_floor_is_never_better():
    design = make_design(first_seeds=(0, 1, 2), boundary="pocock")
    arm = [b + 0.02 + 1e-5 * s for s, b in enumerate(BASE12[:3])]
    assert decide(_values(BASE12[:3], arm=arm), "base", ["arm"], design, min_effect=0.01).states["arm"].verdict == (
        stats.BETTER
    )
    inside = decide(_values(BASE12[:3], arm=arm), "base", ["arm"], design, min_effect=0.01, floor=0.03)
    # futility: more seeds cannot move an estimate this certain out of the floor
    assert inside.states["arm"].verdict == stats.INCONCLUSIVE and "futility" in inside.states["arm"].note
    last = decide(_values(BASE12[:3], arm=arm), "base", ["arm"], make_design(looks=(3,)), min_effect=0.01, floor=0.03)
    assert last.states["arm"].verdict == stats.INCONCLUSIVE and "noise floor" in last.states["arm"].note


def test_the_seed_order_starts_with_the_study_seeds():
    assert make_design(first_seeds=(5, 9, 7)).seeds == (5, 9, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18)
    assert make_design(max_seeds=8).looks == (3, 6, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"looks": [3, 3, 12]}, "looks=[3, 3, 12]: seed counts must be strictly increasing"),
        ({"looks": [1, 6]}, "looks=[1, 6]: the first look needs at least 2 seeds"),
        ({"looks": [3, 6, 12], "max_seeds": 8}, "the last look exceeds max_seeds=8"),
        ({"alpha": 0.5}, "alpha=0.5: a number with 0 < alpha < 0.5"),
        ({"alpha": 0}, "alpha=0: a number with 0 < alpha < 0.5"),
        ({"boundary": "haybittle"}, "boundary='haybittle': allowed ['obrien-fleming', 'pocock']"),
        ({"futility": 1.5}, "futility=1.5: a probability"),
        ({"max_seeds": 1}, "max_seeds=1: an integer 2"),
    ],
)
def test_a_bad_design_is_one_line_naming_the_field(kwargs, message):
    with pytest.raises(DesignError, match=r"^sequential: ") as error:
        make_design(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_noise_floor_a_design_is_stored_with_is_not_part_of_its_identity():
    import dataclasses

    from ablations.results.sequential import Design

    design = make_design(first_seeds=(0, 1, 2))
    later = dataclasses.replace(design, floor=0.0138)
    assert Design.from_dict(later.to_dict()) == later and later.identity() == design.identity()
    assert Design.from_dict({k: v for k, v in design.to_dict().items() if k != "floor"}).floor == 0.0


def test_the_noise_floor_spares_arms_that_share_the_baselines_training_run():
    from pathlib import Path

    from ablations.results.tables import arm_floors
    from ablations.sweep.study import load_study

    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    evaluation = arm_floors(load_study(sweeps / "eval_strategy.yaml", profile="quick"), 0.0138)
    assert set(evaluation.values()) == {0.0}  # its arms differ in eval.* only: the same trained network per seed
    floors = arm_floors(load_study(sweeps / "batch_size.yaml", profile="quick"), 0.0138)
    assert floors == {"4": 0.0138, "8": 0.0138, "12": 0.0138, "16": 0.0}
    # per arm in the decision: a 0.012 gap is better for an arm without the floor, not for one with it
    design = make_design(looks=(3,), boundary="pocock")
    arm = [b + 0.012 + 1e-5 * s for s, b in enumerate(BASE12[:3])]
    values = _values(BASE12[:3], spared=arm, held=arm)
    result = decide(values, "base", ["spared", "held"], design, min_effect=0.01, floor={"spared": 0, "held": 0.0138})
    assert result.states["spared"].verdict == stats.BETTER and result.states["held"].verdict == stats.INCONCLUSIVE
