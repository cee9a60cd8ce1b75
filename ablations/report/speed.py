"""Speed columns that compare: one interleaved ``ablations bench`` run over a study's arms (``bench.bench_arms``).

Per-trial speed figures are taken minutes apart under whatever else the machine runs, so they are kept only as a
record; a report's speed columns come from this run, which times every arm in the same process, repeat by repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ablations.results import names
from ablations.sweep.study import Study


def measure(study: Study, *, repeats: int = 5, printer: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """Speed frame (``names.SPEED_COLUMNS``) and the bench's environment for every arm of a grid study (seed 0's
    config; the seed does not change the network)."""
    from ablations.bench import bench_arms, format_row

    configs = [(arm, study.resolve(arm, study.seeds[0])) for arm in study.arm_labels]
    result = bench_arms(configs, repeats=repeats)
    for row in result["rows"]:
        printer(format_row(row))
    by_arm: dict[str, dict[str, Any]] = {arm: {names.ARM: arm} for arm, _ in configs}
    for row in result["rows"]:
        entry = by_arm[row["name"]]
        if "error" in row:
            entry[f"bench/{row['mode']}_error"] = row["error"]
            continue
        if row["mode"] == "train":
            entry[names.SPEED_TRAIN_IPS] = row["images_per_s"]
        else:
            entry[names.SPEED_INFER_IPS] = row["images_per_s"]
            entry[names.SPEED_INFER_LATENCY_MS] = row["latency_ms"]
            entry[names.INFER_MACS] = row["macs"]
    frame = pd.DataFrame(list(by_arm.values()))
    for column in names.SPEED_COLUMNS:
        if column not in frame:
            frame[column] = None
    env = dict(result["environment"])
    d = configs[0][1].data
    size = "×".join(map(str, result["rows"][0]["input"])) if result["rows"] else "?"
    env["method"] = (
        f"interleaved, {repeats} repeats; train batch {d.batch_size}, eval batch {d.val_batch_size or d.batch_size}, "
        f"input {size}"
    )
    return frame[[*names.SPEED_COLUMNS, *[c for c in frame if c not in names.SPEED_COLUMNS]]], env
