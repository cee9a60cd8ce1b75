"""Optuna storages built from trials with user attributes, as a sweep writes them: no training."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

ARMS = ("(1,1,1)", "(1,2,1)")  # two arms of the multigrid axis (the toy study file in tests/test_report.py)


def add_trial(study: optuna.Study, arm: str, seed: int, *, value: float | None = None, state: str = "COMPLETE",
              failure: str | None = None, metrics: dict | None = None) -> None:  # fmt: skip
    user_attrs = {"arm": arm, "seed": seed}
    if value is not None:
        user_attrs["metrics"] = {
            "val/mIoU": value,
            "val/mIoU_small": value / 10,
            "val/mIoU_medium": value / 4,
            "val/mIoU_large": value,
            "train/images_per_s": 100.0 + seed,
            "infer/images_per_s": 400.0 + seed,
            "device": "cpu: test",
            **(metrics or {}),
        }
        user_attrs["stats"] = {"params": 2_452_562, "macs": 109_117_952, "receptive_field": 1291, "output_stride": 16}
    if failure:
        user_attrs["failure"] = {"kind": failure, "message": failure}
    trial = optuna.trial.create_trial(
        state=getattr(optuna.trial.TrialState, state),
        params={"arm": arm, "seed": seed},
        distributions={
            "arm": CategoricalDistribution(list(ARMS) + [arm] * (arm not in ARMS)),
            "seed": IntDistribution(0, 2**31 - 1),
        },
        user_attrs=user_attrs,
        value=value if state == "COMPLETE" else None,
    )
    study.add_trial(trial)


def grid_storage(folder: Path, name: str, values: dict[str, list[float]], file: str = "optuna.db") -> str:
    """A SQLite storage holding one complete trial per arm × seed (seed = position in the list)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / file}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize", load_if_exists=True)
    for seed in range(max((len(v) for v in values.values()), default=0)):
        for arm, per_seed in values.items():
            if seed < len(per_seed):
                add_trial(study, arm, seed, value=per_seed[seed])
    return url
