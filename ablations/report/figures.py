"""Report figures (matplotlib, Agg, PNG without a software or date stamp, so the same data gives the same bytes):
every seed per arm with its mean and 95 % interval; a forest plot of Δ against the baseline with the
±``min_effect`` band; mIoU against training and inference images/s and GMACs, with the Pareto front."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import pandas as pd
from scipy import stats as st

from ablations.results import names
from ablations.results import stats as rstats
from ablations.results.tables import missing

STYLE = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
MARKERS = "osD^v<>pX*"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams.update(STYLE)
    return plt


def seeds_figure(arms: pd.DataFrame, title: str, metric_label: str = "val mIoU") -> bytes:
    """Every seed of every arm (marker = seed), the mean (bar) and its 95 % t-interval."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(4.0, 1.1 * len(arms) + 1.5), 3.2))
    all_seeds = sorted({s for seeds in arms["seeds"] for s in seeds})
    for x, row in enumerate(arms.to_dict("records")):
        for seed, value in zip(row["seeds"], row["per_seed"], strict=True):
            k = all_seeds.index(seed)
            axes.scatter(x + 0.08 * (k - (len(all_seeds) - 1) / 2), value, marker=MARKERS[k % len(MARKERS)],
                         s=22, color="0.35", zorder=3, label=f"seed {seed}" if x == 0 else None)  # fmt: skip
        if row["n"]:
            axes.hlines(row["mean"], x - 0.25, x + 0.25, color="C0", linewidth=2, zorder=2)
        if row["n"] > 1:
            half = st.t.ppf(0.975, row["n"] - 1) * row["std"] / math.sqrt(row["n"])
            axes.errorbar(x + 0.3, row["mean"], yerr=half, color="C0", capsize=3, linewidth=1)
    axes.set_xticks(range(len(arms)), list(arms[names.ARM]))
    axes.set_ylabel(metric_label)
    axes.set_title(title + " — every seed, mean and 95 % interval", fontsize=9)
    if all_seeds:
        axes.legend(fontsize=7, frameon=False, loc="best")
    return _png(figure)


def forest_figure(comparisons: pd.DataFrame, min_effect: float, title: str, floor: float = 0.0) -> bytes:
    """Δ against the baseline with each arm's interval (at its Holm level, or at its look's level under a sequential
    design), 0, the ±min_effect band and the noise floor. Intervals wider than the view (an early look's boundary is
    strict) are cut at its edge, with an arrow."""
    plt = _pyplot()
    rows = [r for r in comparisons.to_dict("records") if r["verdict"] != rstats.BASELINE]
    figure, axes = plt.subplots(figsize=(6.0, 0.45 * len(rows) + 1.3))
    axes.axvspan(-min_effect, min_effect, color="0.9", zorder=0)
    if floor > 0:
        for side in (-floor, floor):
            axes.axvline(side, color="C3", linewidth=0.8, linestyle=":")
    axes.axvline(0, color="0.5", linewidth=0.8)
    deltas = [abs(r["delta"]) for r in rows if not missing(r.get("delta"))]
    edge = max([4 * min_effect, 2 * floor, *(1.5 * d for d in deltas)])
    for y, r in enumerate(rows):
        delta = r.get("delta")
        if missing(delta):
            continue
        low, high = r.get("low"), r.get("high")
        if not missing(low) and not missing(high):
            axes.hlines(y, max(low, -edge), min(high, edge), color="C0", linewidth=1.5)
            for end, cut in ((low, -edge), (high, edge)):
                if (end < cut) if cut < 0 else (end > cut):
                    axes.plot(cut, y, "<" if cut < 0 else ">", color="C0", markersize=5)
        axes.plot(delta, y, "o", color="C0")
        axes.annotate(r["verdict_label"], (1.01, y), xycoords=("axes fraction", "data"), fontsize=7, va="center")
    axes.set_xlim(-1.08 * edge, 1.08 * edge)
    axes.set_yticks(range(len(rows)), [r[names.ARM] for r in rows])
    axes.invert_yaxis()
    level = "look-level" if "look" in comparisons.columns else "Holm-level"
    axes.set_xlabel(f"Δ mIoU vs {comparisons.iloc[0][names.ARM]} (paired by seed, {level} interval)")
    floor_text = f"; dotted: noise floor ±{floor:.4f}" if floor > 0 else ""
    axes.set_title(f"{title} — grey band: ±min_effect {min_effect:g}{floor_text}", fontsize=9)
    return _png(figure)


def _front(xs: Sequence[float], ys: Sequence[float], x_up: bool) -> list[int]:
    points = {i: [ys[i], xs[i]] for i in range(len(xs))}
    front = rstats.pareto_front({str(i): p for i, p in points.items()}, [True, x_up])
    return sorted((int(i) for i in front), key=lambda i: xs[i])


def cost_figure(points: pd.DataFrame, axes_spec: Mapping[str, tuple[str, bool]], title: str) -> bytes:
    """mIoU (seed mean) against each cost column, one panel each, with the Pareto front (mIoU up and the cost
    axis in its good direction). ``axes_spec``: column → (label, bigger is better)."""
    plt = _pyplot()
    usable = {c: spec for c, spec in axes_spec.items() if c in points and pd.to_numeric(points[c]).notna().any()}
    figure, panels = plt.subplots(1, max(1, len(usable)), figsize=(3.4 * max(1, len(usable)), 3.0), squeeze=False)
    for axes, (column, (label, up)) in zip(panels[0], usable.items(), strict=False):
        data = points.dropna(subset=[column, "mean"])
        xs, ys = list(pd.to_numeric(data[column])), list(data["mean"])
        axes.scatter(xs, ys, color="C0", s=18, zorder=3)
        for x, y, arm in zip(xs, ys, data[names.ARM], strict=True):
            axes.annotate(str(arm), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = _front(xs, ys, up)
        if len(front) > 1:
            axes.plot([xs[i] for i in front], [ys[i] for i in front], color="C1", linewidth=1, label="Pareto front")
            axes.legend(fontsize=7, frameon=False)
        axes.set_xlabel(label)
        axes.set_ylabel("val mIoU (seed mean)")
    figure.suptitle(title, fontsize=9)
    return _png(figure)
