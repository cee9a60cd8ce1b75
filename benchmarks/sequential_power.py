"""Power of the group-sequential design against the fixed designs, by simulation of the project's own decision
functions (``sequential.decide`` and ``stats.compare_arms``): for a study of ``--arms`` arms whose true Δs are
``--effects`` × min_effect (all arms the same), with Gaussian paired differences of sd ``--sd``, the share of arms
resolved better/worse, equivalent and inconclusive, and the mean seeds an arm ran. Prints a table; asserts nothing.

    .venv/bin/python benchmarks/sequential_power.py --sd 0.007 --arms 4 --studies 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ablations.results import stats
from ablations.results.sequential import decide, make_design


def simulate(effect: float, *, arms: int, sd: float, min_effect: float, studies: int, seed: int) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    labels = [f"a{i}" for i in range(arms)]
    design = make_design(first_seeds=(0, 1, 2))
    out = {"sequential 3/6/12": [], "fixed 3": [], "fixed 12": []}
    for _ in range(studies):
        # baseline and arms: the per-seed noise split so that each paired difference has sd `sd`
        base = rng.normal(0, sd / np.sqrt(2), 12)
        values = {"b": dict(enumerate(base))}
        for label in labels:
            values[label] = dict(enumerate(effect + rng.normal(0, sd / np.sqrt(2), 12)))
        result = decide(values, "b", labels, design, min_effect=min_effect)
        used = {a: sum(1 for x, _ in result.pairs if x == a) for a in labels}
        out["sequential 3/6/12"] += [(s.verdict, used[a]) for a, s in result.states.items()]
        for n, key in ((3, "fixed 3"), (12, "fixed 12")):
            cut = {a: {s: v for s, v in values[a].items() if s < n} for a in values}
            out[key] += [(c.verdict, n) for c in stats.compare_arms(cut, "b", min_effect=min_effect)]
    summary = {}
    for key, rows in out.items():
        verdicts = [v for v, _ in rows]
        share = {v: verdicts.count(v) / len(verdicts) for v in (stats.BETTER, stats.WORSE, stats.EQUIVALENT)}
        summary[key] = (
            share[stats.BETTER] + share[stats.WORSE],
            share[stats.EQUIVALENT],
            np.mean([n for _, n in rows]),
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", type=float, default=0.007, help="sd of the paired differences (default 0.007)")
    parser.add_argument("--min-effect", type=float, default=0.01)
    parser.add_argument("--arms", type=int, default=4)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--effects", default="0,0.5,1,1.5,2,3", help="true Δ in units of min_effect")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{args.arms} arms, paired sd {args.sd:g}, min_effect {args.min_effect:g}, {args.studies} simulated studies "
          "per row; share of arms resolved better/worse, equivalent, and the mean seeds an arm ran")  # fmt: skip
    print(f"{'true Δ':>8}  {'design':<18} {'better/worse':>12} {'equivalent':>10} {'resolved':>8} {'seeds':>6}")
    for i, e in enumerate(float(x) for x in args.effects.split(",")):
        delta = e * args.min_effect
        for key, (claims, equivalent, seeds) in simulate(
            delta, arms=args.arms, sd=args.sd, min_effect=args.min_effect, studies=args.studies, seed=i
        ).items():
            print(f"{delta:>8.4f}  {key:<18} {claims:>12.3f} {equivalent:>10.3f} {claims + equivalent:>8.3f} "
                  f"{seeds:>6.1f}")  # fmt: skip
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
