"""The ``ablations`` command. Bad input exits with status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys

from ablations.config import ConfigError, load_config


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablations", description="Ablation harness for DeepLab-family segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="show what a config builds: rates, receptive field, params, MACs")
    describe.add_argument("--config", metavar="FILE", help="YAML experiment config (default: the defaults)")
    describe.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. backbone.output_stride=8",
    )
    describe.add_argument("--input-size", nargs=2, type=_positive, default=(513, 513), metavar=("H", "W"))
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"ablations: error: {error}", file=sys.stderr)
        return 2
    if args.command == "describe":
        from ablations.describe import describe, format_summary

        try:
            summary = describe(config, tuple(args.input_size))
        except RuntimeError as error:  # shapes that cannot flow through the network
            print(f"ablations: error: --input-size {args.input_size[0]} {args.input_size[1]}: {error}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
