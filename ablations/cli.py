"""The ``ablations`` command. Bad input exits with status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ablations.config import ConfigError, ExperimentConfig, load_config, profile_names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


def _config_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="FILE", help="YAML experiment config (default: the defaults)")
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. backbone.output_stride=8",
    )
    command.add_argument("--profile", choices=profile_names(), help="named preset applied before the config file")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablations", description="Ablation harness for DeepLab-family segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="show what a config builds: rates, receptive field, params, MACs")
    _config_arguments(describe)
    describe.add_argument("--input-size", nargs=2, type=_positive, default=(513, 513), metavar=("H", "W"))
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    train = commands.add_parser("train", help="train one config; writes config, best checkpoint and metrics.json")
    _config_arguments(train)
    train.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-<date>-<time>)")
    return parser


def _error(message: object) -> int:
    print(f"ablations: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides, profile=args.profile)
    except ConfigError as error:
        return _error(error)
    if args.command == "describe":
        return _describe(config, tuple(args.input_size), as_json=args.json)
    return _train(config, args.out)


def _describe(config: ExperimentConfig, input_size: tuple[int, int], *, as_json: bool) -> int:
    from ablations.describe import describe, format_summary

    try:
        summary = describe(config, input_size)
    except RuntimeError as error:  # shapes that cannot flow through the network
        return _error(f"--input-size {input_size[0]} {input_size[1]}: {error}")
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    return 0


def _train(config: ExperimentConfig, out: str | None) -> int:
    from ablations.data.datasets import DatasetError
    from ablations.model.backbones import WeightsError
    from ablations.train import train

    out_dir = out or time.strftime("runs/train-%Y%m%d-%H%M%S")
    try:
        metrics = train(config, out_dir)
    except (ConfigError, DatasetError, WeightsError) as error:
        return _error(error)
    print(
        f"val/mIoU {metrics['val/mIoU']:.4f} (best at step {metrics['best_step']}), "
        f"{metrics.get('train/images_per_s', float('nan')):.1f} training images/s on {metrics['device']}, "
        f"{metrics['wall_time_s']:.0f} s in all; wrote {out_dir}/metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
