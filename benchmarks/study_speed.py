"""A study's arms timed interleaved, with no trial run: training and inference images/s per arm and each arm's
ratio to the baseline (``ablations.report.speed.measure``, the same measurement as ``ablations report --bench``).
For a study whose speed is part of the paper's answer before any GPU trains it — ``fov`` (v2 Table 1 reports
training images/s: 7×7 1.44, 4×4 2.90, LargeFOV 4.84, "3.36 times faster") — and to size a sweep.

    python benchmarks/study_speed.py sweeps/fov.yaml --profile quick --repeats 3
"""

from __future__ import annotations

import argparse

from ablations.hardware import cpu_name
from ablations.report.speed import measure
from ablations.results import names
from ablations.sweep.study import load_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file, e.g. sweeps/fov.yaml")
    parser.add_argument("--profile", help="profile (default: the study's)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; images/s is their median")
    args = parser.parse_args()
    study = load_study(args.study, profile=args.profile)
    frame, env = measure(study, repeats=args.repeats, printer=lambda line: None)
    print(f"{study.name} ({study.profile}): {env.get('device', cpu_name())}; {env['method']}")
    base = frame.set_index(names.ARM).loc[study.baseline or study.arm_labels[0]]
    print(f"{'arm':<16} {'train img/s':>12} {'× baseline':>11} {'infer img/s':>12} {'× baseline':>11}")
    for row in frame.to_dict("records"):
        train, infer = row[names.SPEED_TRAIN_IPS], row[names.SPEED_INFER_IPS]
        print(
            f"{row[names.ARM]:<16} {train:>12.2f} {train / base[names.SPEED_TRAIN_IPS]:>11.2f} "
            f"{infer:>12.2f} {infer / base[names.SPEED_INFER_IPS]:>11.2f}"
        )


if __name__ == "__main__":
    main()
