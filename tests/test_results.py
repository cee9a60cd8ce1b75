"""The results layer: paired intervals, Holm, seeds needed and the verdicts against hand-computed values, and
stored Optuna trials → frames, with failed, pruned and interrupted trials counted."""

from __future__ import annotations

import math

import optuna
import pytest
from scipy import stats as st

from ablations.results import names, stats, tables
from ablations.results.frames import ResultsError, read_csv, storage_frames, to_csv, trial_frame
from tests.results_fixtures import ARMS, add_trial, grid_storage


def test_paired_interval_matches_the_closed_form_at_two_degrees_of_freedom():
    # d = 0.01, 0.02, 0.03: mean 0.02, sd 0.01, se 0.01/√3. With 2 df the t CDF is 1/2 + t / (2 √(t² + 2)).
    i = stats.paired_interval([0.01, 0.02, 0.03])
    se = 0.01 / math.sqrt(3)
    t = 0.02 / se
    assert i.delta == pytest.approx(0.02) and i.sd == pytest.approx(0.01) and i.n == 3
    assert i.p == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(t * t + 2))), rel=1e-9)
    # t(0.975, 2) = 4.302652729…: the 95 % interval is mean ± 4.3027 se.
    assert (i.low, i.high) == pytest.approx((0.02 - 4.302652729 * se, 0.02 + 4.302652729 * se), rel=1e-8)


def test_welch_interval_matches_scipy_unequal_variance_t_test():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    i = stats.welch_interval(a, b)
    reference = st.ttest_ind(a, b, equal_var=False)
    assert i.method == "welch" and i.delta == pytest.approx(-3.0)
    assert i.p == pytest.approx(reference.pvalue)
    # Welch–Satterthwaite df by hand: (1/3 + 5/3)² / ((1/3)²/2 + (5/3)²/3) = 4 / 0.98148… = 4.0755
    df = 4 / ((1 / 3) ** 2 / 2 + (5 / 3) ** 2 / 3)
    half = st.t.ppf(0.975, df) * math.sqrt(2)
    assert (i.low, i.high) == pytest.approx((-3 - half, -3 + half))


def test_compare_pairs_shared_seeds_and_falls_back_to_welch():
    assert stats.compare({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.5, 1: 1.0, 2: 3.0}).method == "paired"
    assert stats.compare({0: 1.0, 1: 2.0}, {2: 0.5, 3: 1.0}).method == "welch"


def test_holm_adjusts_step_down_and_keeps_the_order():
    adjusted, ranks = stats.holm([0.01, 0.04, 0.03])
    # sorted: 0.01 × 3 = 0.03; 0.03 × 2 = 0.06; 0.04 × 1 = 0.04 → monotone 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])
    assert ranks == [1, 3, 2]
    adjusted, _ = stats.holm([0.5, math.nan])
    assert adjusted[0] == pytest.approx(1.0) and math.isnan(adjusted[1])


def test_resolve_probability_matches_a_simulation_of_the_verdict_rule():
    # Δ = 0.015, sd 0.01, 6 seeds, level 0.05: the share of simulated comparisons that end better or equivalent.
    rng = __import__("numpy").random.default_rng(7)
    d = rng.normal(0.015, 0.01, size=(200_000, 6))
    mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
    half = st.t.ppf(0.975, 5) * sd / math.sqrt(6)
    resolved = ((abs(mean) > half) & (abs(mean) >= 0.01)) | ((abs(mean) + half) < 0.01)
    computed = stats.resolve_probability(0.015, 0.01, 6, level=0.05, min_effect=0.01)
    assert computed == pytest.approx(resolved.mean(), abs=0.005)


def test_seeds_needed_counts_resolved_verdicts_not_t_test_power():
    # A clear effect with little spread resolves at 3 seeds (scipy's noncentral t gave NaN here and skipped n = 3).
    assert stats.seeds_needed(0.03, 0.002, 0.01) == 3
    assert stats.resolve_probability(0.03, 0.002, 3, level=0.05, min_effect=0.01) > 0.99
    # A true Δ equal to min_effect: "better" needs the estimate to clear min_effect too, about half the time.
    # (plus about α/2 of equivalent verdicts: the false-equivalence rate at |Δ| = min_effect)
    assert stats.resolve_probability(0.01, 0.005, 200, level=0.05, min_effect=0.01) == pytest.approx(0.525, abs=0.01)
    assert stats.seeds_needed(0.01, 0.005, 0.01) == stats.MAX_SEEDS + 1
    # No effect and little spread: equivalence resolves it.
    assert stats.seeds_needed(0.0, 0.004, 0.01) <= 6


def test_seeds_needed_grows_with_a_stricter_level_and_is_unknown_without_a_spread():
    assert stats.seeds_needed(0.02, 0.01, 0.01, alpha=0.05 / 4) > stats.seeds_needed(0.02, 0.01, 0.01)
    assert stats.seeds_needed(0.02, math.nan, 0.01) is None
    assert stats.seeds_needed(0.02, 0.0, 0.01) == stats.MIN_PAIRS


def values(baseline, arm):
    return {"base": dict(enumerate(baseline)), "arm": dict(enumerate(arm))}


def verdict_of(baseline, arm, min_effect=0.01):
    [c] = stats.compare_arms(values(baseline, arm), "base", min_effect=min_effect)
    return c


def test_two_seeds_are_inconclusive_however_large_the_gap():
    c = verdict_of([0.80, 0.81], [0.90, 0.91])
    assert c.verdict == stats.INCONCLUSIVE and "paired seed" in c.note
    assert c.label.startswith("inconclusive")


def test_three_well_separated_seeds_are_better_and_worse():
    assert verdict_of([0.80, 0.81, 0.82], [0.850, 0.862, 0.868]).verdict == stats.BETTER
    assert verdict_of([0.850, 0.862, 0.868], [0.80, 0.81, 0.82]).verdict == stats.WORSE
    # minimising flips the sign that counts as good
    [c] = stats.compare_arms(values([0.80, 0.81, 0.82], [0.850, 0.862, 0.868]), "base", min_effect=0.01,
                             maximize=False)  # fmt: skip
    assert c.verdict == stats.WORSE


def test_significant_but_below_min_effect_is_not_better():
    # d = 0.007, 0.008, 0.009: p ≈ 0.005, but |Δ| = 0.008 < 0.01 and the interval reaches past +0.01
    c = verdict_of([0.80, 0.81, 0.82], [0.807, 0.818, 0.829])
    assert c.interval.p < 0.05 and c.interval.high > 0.01
    assert c.verdict == stats.INCONCLUSIVE and c.note == "significant, but |Δ| < min_effect 0.01"
    assert c.label == f"inconclusive (≈ {c.seeds_needed} seeds needed)"


def test_an_interval_inside_the_band_is_equivalent():
    c = verdict_of([0.80, 0.81, 0.82], [0.801, 0.809, 0.8205])
    assert c.interval.low >= -0.01 and c.interval.high <= 0.01
    assert c.verdict == stats.EQUIVALENT


def test_a_noisy_gap_is_inconclusive_with_the_seeds_it_needs():
    c = verdict_of([0.80, 0.81, 0.82], [0.83, 0.80, 0.84])
    assert c.verdict == stats.INCONCLUSIVE
    # sd of the differences is 0.0208: an 80 % chance of a resolved verdict at α = 0.05 (one comparison) needs
    assert c.seeds_needed == stats.seeds_needed(c.interval.delta, c.interval.sd, 0.01) > 3
    assert c.label == f"inconclusive (≈ {c.seeds_needed} seeds needed)"


def test_holm_level_intervals_widen_with_the_number_of_arms():
    base = [0.80, 0.81, 0.82]
    comparisons = stats.compare_arms(
        {"base": dict(enumerate(base)), "a": dict(enumerate([0.85, 0.86, 0.875])), "b": dict(enumerate(
            [0.83, 0.80, 0.84]))}, "base", min_effect=0.01)  # fmt: skip
    by = {c.arm: c for c in comparisons}
    assert by["a"].interval.level == pytest.approx(1 - 0.05 / 2)  # smallest p: rank 1 of 2
    assert by["b"].interval.level == pytest.approx(1 - 0.05 / 1)
    assert by["a"].p_holm == pytest.approx(2 * stats.paired_interval([0.05, 0.05, 0.055]).p)


def test_an_arm_that_is_the_baseline_network_is_not_measurable():
    [c] = stats.compare_arms(values([0.8, 0.81, 0.82], [0.9, 0.91, 0.92]), "base", min_effect=0.01,
                             identical_to={"arm": "base"})  # fmt: skip
    assert c.verdict == stats.NOT_MEASURABLE and c.label == "not measurable"


def test_best_only_when_resolved_better_than_every_other_arm():
    clear = {"a": dict(enumerate([0.80, 0.81, 0.82])), "b": dict(enumerate([0.85, 0.862, 0.868]))}
    assert stats.resolved_best(clear, min_effect=0.01) == "b"
    close = {**clear, "c": dict(enumerate([0.851, 0.860, 0.870]))}  # b and c within noise of each other
    assert stats.resolved_best(close, min_effect=0.01) is None


def test_pareto_front_keeps_the_undominated_points():
    points = {"fast": [0.80, 150.0], "accurate": [0.87, 60.0], "dominated": [0.79, 100.0], "middle": [0.83, 120.0]}
    assert sorted(stats.pareto_front(points, [True, True])) == ["accurate", "fast", "middle"]


# --------------------------------------------------------------------------------------------------------------
# Frames from storages


def test_storage_to_frame_keeps_failed_pruned_and_interrupted_trials(tmp_path):
    url = grid_storage(tmp_path, "toy", {arm: [0.80 + 0.02 * k + 0.001 * s for s in range(3)]
                                         for k, arm in enumerate(ARMS)})  # fmt: skip
    study = optuna.load_study(study_name="toy", storage=url)
    add_trial(study, ARMS[1], 3, state="FAIL", failure="diverged")
    add_trial(study, ARMS[1], 4, state="PRUNED")
    add_trial(study, ARMS[0], 5, state="FAIL", failure="interrupted")
    add_trial(study, ARMS[0], 6, state="FAIL", failure="duplicate")  # ran nothing: left out
    df = storage_frames(url)["toy"]
    assert list(df.columns[: len(names.TRIAL_COLUMNS)]) == list(names.TRIAL_COLUMNS)
    assert len(df) == 9 and (df[names.STATE] == "COMPLETE").sum() == 6
    arms = tables.arm_frame(df, ARMS).set_index(names.ARM)
    assert arms.loc[ARMS[1], ["runs", "failed", "pruned", "failures"]].tolist() == [3, 1, 1, "diverged"]
    assert arms.loc[ARMS[0], ["runs", "interrupted"]].tolist() == [3, 1]
    assert arms.loc[ARMS[0], "per_seed"] == pytest.approx((0.80, 0.801, 0.802))
    assert tables.runs_text(arms.loc[ARMS[1]].to_dict() | {"runs": 3}) == "3, 1 failed (diverged), 1 pruned"


def test_the_csv_round_trip_is_exact_and_a_missing_column_is_named(tmp_path):
    url = grid_storage(tmp_path, "toy", {arm: [0.8123456789 + 0.01 * k + s / 7 for s in range(3)]
                                         for k, arm in enumerate(ARMS)})  # fmt: skip
    df = trial_frame(optuna.load_study(study_name="toy", storage=url))
    path = tmp_path / "toy.csv"
    path.write_text(to_csv(df))
    again = read_csv(path)
    assert to_csv(again) == path.read_text()
    assert again[names.MIOU].tolist() == df[names.MIOU].tolist()
    path.write_text(to_csv(df.drop(columns=[names.SEED])))
    with pytest.raises(ResultsError, match=r"toy.csv: missing column\(s\) \['seed'\]"):
        read_csv(path)


def test_a_storage_that_does_not_exist_or_lacks_the_study_is_named(tmp_path):
    with pytest.raises(ResultsError, match="no such database file"):
        storage_frames(f"sqlite:///{tmp_path / 'missing.db'}")
    url = grid_storage(tmp_path, "toy", {arm: [0.8, 0.81, 0.82] for arm in ARMS})
    with pytest.raises(ResultsError, match="no study 'other'; it holds \\['toy'\\]"):
        storage_frames(url, ["other"])


def test_arm_labels_stay_text_when_read_back(tmp_path):
    path = tmp_path / "os.csv"
    path.write_text(
        "trial,state,arm,seed,failure,duration_s,val/mIoU\n0,COMPLETE,8,0,,1.0,0.8\n1,COMPLETE,none,0,,1,0.7\n"
    )
    df = read_csv(path)
    assert df[names.ARM].tolist() == ["8", "none"]  # not 8 and NaN
    speed = tmp_path / "os.speed.csv"
    speed.write_text("arm,bench/train_images_per_s\n16,100.0\n")
    assert read_csv(speed, (names.ARM,))[names.ARM].tolist() == ["16"]
