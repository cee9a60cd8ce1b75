"""The ``ablations`` command: parses the arguments of each subcommand and hands them to the module that does the
work, mapping bad input to one line on stderr and exit status 2 (never a traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from ablations.config import INT_MAX, SEED_MAX, ConfigError, ExperimentConfig, load_config, profile_names
from ablations.ioutil import check_name, check_readable_file, check_writable_dir, check_writable_file, first_line
from ablations.results.jsonable import json_safe


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= INT_MAX:  # torch holds sizes and counts in 64 bits
        raise argparse.ArgumentTypeError(f"{value} must be 1 … {INT_MAX} (2**63 − 1)")
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


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (``ablations <command>: error: …``), status 2, like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ablations", description="Ablation harness for DeepLab-family segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="show what a config builds: rates, receptive field, params, MACs")
    _config_arguments(describe)
    describe.add_argument("--input-size", nargs=2, type=_positive, default=(513, 513), metavar=("H", "W"))
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    train = commands.add_parser("train", help="train one config; writes config, best checkpoint and metrics.json")
    _config_arguments(train)
    train.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-<date>-<time>)")
    # A sweep's multi-device trial runs as `ablations train`; these name its W&B run like an in-process trial's.
    train.add_argument("--wandb-name", help=argparse.SUPPRESS)
    train.add_argument("--wandb-group", help=argparse.SUPPRESS)
    train.add_argument("--wandb-extra", type=json.loads, help=argparse.SUPPRESS)
    evaluate = commands.add_parser(
        "evaluate", help="validate a checkpoint of `ablations train`; prints its val metrics"
    )
    evaluate.add_argument("checkpoint", metavar="CKPT", help="a checkpoint from a run's checkpoints/ folder")
    evaluate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="on top of the checkpoint's config, e.g. train.devices=2 or eval.output_stride=8",
    )  # fmt: skip
    bench = commands.add_parser(
        "bench", help="images/s, latency, peak memory, params and MACs of a config (and the peers, --peers)"
    )
    _config_arguments(bench)
    bench.add_argument(
        "--input-size", nargs=2, type=_positive, metavar=("H", "W"), help="default 513 513 on a GPU, 256 256 on a CPU"
    )
    bench.add_argument("--batch-sizes", type=_batch_list, default=[1], metavar="B,B,...", help="default 1")
    bench.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    bench.add_argument("--channels-last", action="store_true", help="model and inputs in channels-last layout")
    bench.add_argument("--compile", action="store_true", help="torch.compile the model (compiled in the warm-up)")
    bench.add_argument("--mode", choices=("infer", "train"), default="infer", help="forward only, or a training step")
    bench.add_argument("--fast", action="store_true", help="also time the fast path (see README) next to the plain one")
    bench.add_argument("--peers", action="store_true", help="also time torchvision's and smp's DeepLabs, with ratios")
    bench.add_argument("--standard", action="store_true", help="the standard configs: OS 8/16/32 × ASPP × decoder")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument("--warmup", type=_positive, help="untimed steps first (default 10 on a GPU, 2 on a CPU)")
    bench.add_argument("--iters", type=_positive, help="timed steps per repeat (default 50 on a GPU, 5 on a CPU)")
    bench.add_argument("--repeats", type=_positive, help="repeats; images/s is their median (default 3)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    bench.add_argument("--out", metavar="FILE", help="also write the table (Markdown) to FILE")
    sweep = commands.add_parser(
        "sweep", help="run a study file (sweeps/*.yaml): every arm × seed, or a sampler's budget, then the table"
    )
    sweep.add_argument("study", metavar="STUDY", help="study file, e.g. sweeps/multigrid.yaml")
    sweep.add_argument(
        "--profile", choices=[*profile_names(), "auto"], help="named preset, or auto (default: the study's)"
    )
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="applied to every trial"
    )
    sweep.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the run folder)")
    sweep.add_argument("--out", metavar="DIR", help="run folder (default: runs/sweeps/<study name>)")
    sweep.add_argument("--study-name", metavar="NAME", help="name in the storage (default: the study's name)")
    sweep.add_argument("--workers", type=_positive, default=1, help="local worker processes (default 1)")
    sweep.add_argument("--seeds", type=_seed_list, metavar="S,S,...", help="replicate seeds (default: the study's)")
    sweep.add_argument("--budget", type=_positive, help="trials, for a study without an axis (default: the study's)")
    sweep.add_argument("--retry-failed", action="store_true", help="also re-run trials that failed (diverged, …)")
    sweep.add_argument("--max-trials", type=_positive, help="stop this worker after this many trials")
    sweep.add_argument("--table-only", action="store_true", help="print the stored comparison, run nothing")
    sweep.add_argument(
        "--strict", action="store_true", help="refuse to run when the crop makes a studied conv degenerate"
    )
    sweep.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers N
    design = sweep.add_argument_group(
        "adding seeds until each comparison is resolved (a group-sequential design; docs/statistics.md); the flags "
        "override the study's sequential: block"
    )
    design.add_argument(
        "--until-resolved", action="store_true",
        help="run the study's seeds as the first look, then add seeds in looks to the arms still unresolved",
    )  # fmt: skip
    design.add_argument("--looks", type=_look_list, metavar="N,N,...", help="seed counts of the looks (3,6,12)")
    design.add_argument("--max-seeds", type=_look_count, metavar="N", help="the last look (default 12)")
    design.add_argument("--alpha", type=_number, metavar="A", help="family-wise error rate, 0 < A < 0.5 (0.05)")
    design.add_argument("--boundary", help="obrien-fleming (default) or pocock")
    design.add_argument("--futility", type=_number, metavar="P", help="futility threshold, 0 = none (0.05)")
    sweep.add_argument(
        "--import-trials", metavar="CSV",
        help="put a committed trial CSV (reports/data/<study>.csv) into the new storage first, and go on from it",
    )  # fmt: skip
    design.add_argument(
        "--max-minutes", type=_number, metavar="M",
        help="claim no new trial after M minutes (the running ones finish; the same command resumes)",
    )  # fmt: skip
    cluster = sweep.add_argument_group("SLURM (docs/cluster.md); the flags override the study's slurm: block")
    cluster.add_argument(
        "--slurm",
        type=_count,
        metavar="N",
        help="submit N workers as a SLURM job array (needs --storage postgresql://…)",
    )
    cluster.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    cluster.add_argument("--gpus-per-worker", type=_count, metavar="G", help="--gpus-per-task of each worker (0)")
    cluster.add_argument("--cpus-per-worker", type=_count, metavar="C", help="--cpus-per-task of each worker")
    cluster.add_argument("--time", dest="time_limit", metavar="T", help="time limit: minutes or [D-]HH:MM:SS (240)")
    cluster.add_argument("--account", help="SLURM account to charge")
    cluster.add_argument(
        "--sbatch", action="append", default=[], metavar="OPTION", help="extra sbatch option, e.g. --sbatch=--qos=high"
    )
    cluster.add_argument("--max-preemptions", type=_count, metavar="K", help="preemptions of a trial before it is "
                         "recorded as failed (default 3)")  # fmt: skip
    cluster.add_argument("--wait", action="store_true", help="with --slurm: follow the jobs, then print the table")
    cluster.add_argument("--status", action="store_true", help="print the study's progress from its storage")
    check = commands.add_parser(
        "gpu-check", help="every missing GPU figure within a time budget: bench vs peers, a faithful trial, the sweep"
    )
    check.add_argument("--out", metavar="DIR", default="runs/gpu-check", help="outputs (default: runs/gpu-check)")
    check.add_argument("--budget-s", type=float, default=540.0, metavar="S", help="wall-time budget (default 540)")
    check.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    check.add_argument("--tiny", action="store_true", help="toy sizes: the whole path in seconds on a CPU (CI)")
    check.add_argument("--no-bench", action="store_true", help="skip the bench (spend the budget on the sweep)")
    report = commands.add_parser(
        "report", help="every study's trials → reports/: verdict tables, the papers beside ours, geometry, figures"
    )
    report.add_argument("--runs", metavar="DIR", help="refresh studies from DIR/<study>/optuna.db (default: "
                        "runs/sweeps when it exists)")  # fmt: skip
    report.add_argument("--storage", metavar="URL", help="refresh studies from this Optuna storage")
    report.add_argument("--study", dest="studies", action="append", default=[], metavar="NAME",
                        help="report only these studies (repeatable; default: every study file with data)")  # fmt: skip
    report.add_argument("--sweeps", metavar="DIR", default="sweeps", help="study files (default: sweeps)")
    report.add_argument("--out", metavar="DIR", default="reports", help="report folder (default: reports)")
    report.add_argument("--data", metavar="DIR", help="trial CSVs (default: OUT/data)")
    report.add_argument("--format", default="md,csv", metavar="md,csv,tex", help="outputs (default: md,csv)")
    report.add_argument("--bench", action="store_true", help="re-measure every arm's speed, interleaved, here")
    report.add_argument("--no-wandb", action="store_true", help="do not log the W&B report runs")
    return parser


def _count(text: str) -> int:
    """An integer ≥ 0 (the range is checked where the flag is used, so that ``--slurm 0`` gets its own line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"{value} must be 0 … {INT_MAX}")
    return value


DESIGN_FLAGS = ("looks", "max_seeds", "alpha", "boundary", "futility")
_CLUSTER_FLAGS = ("partition", "gpus_per_worker", "cpus_per_worker", "time_limit", "account", "max_preemptions")


def _sweep_mode_error(args: argparse.Namespace) -> str | None:
    """The combinations of --slurm, --status, --wait and the cluster options that make no sense, as one line."""
    given = [f"--{k.replace('_limit', '').replace('_', '-')}" for k in _CLUSTER_FLAGS if getattr(args, k) is not None]
    given += ["--sbatch"] if args.sbatch else []
    if args.status:
        clash = [f for f, on in (("--slurm", args.slurm is not None), ("--wait", args.wait),
                                 ("--table-only", args.table_only), ("--worker", args.worker)) if on]  # fmt: skip
        if clash or given:
            return f"--status only reads the storage; drop {', '.join(clash + given)}"
        return None
    if args.slurm is None:
        if args.wait or given:
            return f"{', '.join((['--wait'] if args.wait else []) + given)}: only with --slurm N"
        return None
    if args.slurm < 1:
        return f"--slurm {args.slurm}: the number of workers (array tasks) must be at least 1"
    clash = [f for f, on in (("--workers", args.workers != 1), ("--worker", args.worker),
                             ("--table-only", args.table_only)) if on]  # fmt: skip
    if clash:
        return f"--slurm N runs its workers as SLURM jobs; drop {', '.join(clash)} (--workers is for one machine)"
    return None


def _int_list(text: str, *, minimum: int, maximum: int, distinct: bool, example: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. {example}") from None
    if not values or any(not minimum <= v <= maximum for v in values) or (distinct and len(set(values)) != len(values)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected {'distinct ' if distinct else ''}integers {minimum} … {maximum}"
        )
    return values


def _look_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seed counts separated by commas, e.g. 3,6,12") from None


def _look_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _batch_list(text: str) -> list[int]:
    return _int_list(text, minimum=1, maximum=INT_MAX, distinct=False, example="1,8")


def _seed_list(text: str) -> list[int]:
    return _int_list(text, minimum=0, maximum=SEED_MAX, distinct=True, example="0,1,2")  # each becomes train.seed


def _error(message: object) -> int:
    from ablations.ioutil import redact

    line = " ".join(str(message).split("\n")).strip()  # one line, and never a password from a storage URL
    print(f"ablations: error: {redact(line)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if argv is None:
        # W&B records every run's command line (its metadata "args"): a password in a storage URL must not reach
        # it. The command itself keeps the real arguments (workers are started from ``given``).
        from ablations.ioutil import redact

        sys.argv[1:] = [redact(a) for a in sys.argv[1:]]
    if args.command == "sweep":
        return _sweep(args, given)
    if args.command == "bench":
        return _bench(args)
    if args.command == "report":
        return _report(args)
    if args.command == "gpu-check":
        return _gpu_check(args)
    if args.command == "evaluate":
        return _evaluate(args)
    try:
        config = load_config(args.config, args.overrides, profile=args.profile)
    except ConfigError as error:
        return _error(error)
    if args.command == "describe":
        return _describe(config, tuple(args.input_size), as_json=args.json)
    return _train(config, args.out, name=args.wandb_name, group=args.wandb_group, extra=args.wandb_extra)


def _describe(config: ExperimentConfig, input_size: tuple[int, int], *, as_json: bool) -> int:
    from ablations.geometry.describe import describe, format_summary

    try:
        summary = describe(config, input_size)
    except RuntimeError as error:  # shapes that cannot flow through the network
        return _error(f"--input-size {input_size[0]} {input_size[1]}: {error}")
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    return 0


def _train(
    config: ExperimentConfig, out: str | None, *, name: str | None = None, group: str | None = None, extra=None
) -> int:
    from ablations.data.datasets import DatasetError
    from ablations.model.backbones import WeightsError
    from ablations.training.checkpoints import CheckpointWriteError
    from ablations.training.train import train

    out_dir = out or time.strftime("runs/train-%Y%m%d-%H%M%S")
    try:
        check_writable_dir("--out", out_dir, ConfigError)
        for flag, value in (("--wandb-name", name), ("--wandb-group", group)):
            if value is not None:
                check_name(flag, value, ConfigError)
        metrics = train(config, out_dir, name=name, group=group, wandb_extra=extra)
    except (ConfigError, DatasetError, WeightsError) as error:
        return _error(error)
    except CheckpointWriteError as error:  # not bad input: the run stopped; its last whole checkpoint is kept
        print(f"ablations: error: {error}", file=sys.stderr)
        return 1
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # another DDP rank: rank 0 reports the run (and alone wrote its files)
        return 0
    from ablations.results.tables import fmt_measured

    print(
        f"val/mIoU {fmt_measured(metrics.get('val/mIoU'), '.4f')} (best at step {metrics['best_step']}), "
        f"training images/s {fmt_measured(metrics.get('train/images_per_s'), '.1f')} on {metrics['device']}, "
        f"{metrics['wall_time_s']:.0f} s in all; wrote {metrics['out_dir']}/metrics.json"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import pickle

    from ablations.data.datasets import DatasetError
    from ablations.training.train import evaluate

    try:
        path = check_readable_file("checkpoint", args.checkpoint, ConfigError)
        metrics = evaluate(path, args.overrides)
    except (ConfigError, DatasetError) as error:
        return _error(error)
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:  # not ours, or a truncated one
        first = first_line(error, 200)
        return _error(f"checkpoint {args.checkpoint}: cannot be loaded ({first})")
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(json.dumps(json_safe(metrics), indent=2))  # an IoU not measured (class absent) is null, not NaN
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ablations import bench

    try:
        configs = bench.configs_from(args.config, args.overrides, args.profile, args.standard)
        device = bench.resolve_device(args.device)
        input_size = tuple(args.input_size) if args.input_size else bench.default_input(device)
        counts = bench.default_counts(device)
        plain = bench.Method(
            mode=args.mode,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            warmup=args.warmup or counts["warmup"],
            iters=args.iters or counts["iters"],
            repeats=args.repeats or counts["repeats"],
        )
        methods = [plain, bench.fast_method(plain, device)] if args.fast else [plain]
        if args.out:
            check_writable_file("--out", args.out, ConfigError)  # before the timing, not after it
    except (ConfigError, bench.BenchError) as error:
        return _error(error)
    printer = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    printer(
        f"bench: {len(configs)} config(s){' + peers' if args.peers else ''} on {device.type}, input "
        f"{input_size[0]}×{input_size[1]}, batch {','.join(map(str, args.batch_sizes))}, "
        f"{' / '.join(m.label() for m in methods)}; {plain.warmup} warm-up steps, {plain.repeats} × {plain.iters} "
        "timed"
    )
    result = bench.run(
        configs,
        device=device,
        input_size=input_size,
        batch_sizes=args.batch_sizes,
        methods=methods,
        peers=args.peers,
        printer=printer,
    )
    result["input_size"] = list(input_size)
    result["methods"] = [dataclasses.asdict(m) for m in methods]
    table = bench.format_report(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    if args.json:
        print(json.dumps(json_safe(result), indent=2))  # a figure not measured is null: NaN is no JSON
    else:
        print()
        print(table)
        if args.out:
            print(f"\nwrote {args.out}")
    failed = [row for row in result["rows"] if "error" in row]
    return 1 if failed and len(failed) == len(result["rows"]) else 0


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from ablations.sweep import SweepError
    from ablations.sweep.imported import import_trials
    from ablations.sweep.run import SweepRequest, run_sweep
    from ablations.sweep.study import StudyError

    mode_error = _sweep_mode_error(args)
    if mode_error:
        return _error(mode_error)
    slurm = None
    if args.slurm is not None:
        slurm = {k: getattr(args, k) for k in _CLUSTER_FLAGS} | {"workers": args.slurm, "sbatch": args.sbatch}
    request = SweepRequest(
        args.study, profile=args.profile, sets=args.overrides, seeds=args.seeds, budget=args.budget,
        study_name=args.study_name, out=args.out, storage=args.storage, workers=args.workers, worker=args.worker,
        retry_failed=args.retry_failed, max_trials=args.max_trials, table_only=args.table_only, strict=args.strict,
        argv=argv, slurm=slurm, wait=args.wait, status=args.status, until_resolved=args.until_resolved,
        design={k: getattr(args, k) for k in DESIGN_FLAGS if getattr(args, k) is not None},
        max_minutes=args.max_minutes, import_trials=args.import_trials, importer=import_trials,
    )  # fmt: skip
    try:
        outcome = run_sweep(request, printer=lambda line: print(line, flush=True))
    except (SweepError, StudyError) as error:
        return _error(error)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C inside a fit into SystemExit(1)
        print("\nablations: interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    if slurm is not None or args.status:  # submitted (and followed, with --wait), or the status printed
        if outcome.table is None:
            return outcome.status
    elif outcome.status:
        print(f"ablations: a worker exited with status {outcome.status}", file=sys.stderr)
    if outcome.table is None:  # a worker: its parent prints the table
        return 0
    if args.table_only:
        print(outcome.table)
        return 0
    from ablations.ioutil import redact
    from ablations.report.build import sweep_report

    print()
    print(outcome.table, flush=True)
    print(
        f"\ntrials, metrics and configs: {outcome.out_dir} (summary.md, summary.json, trials.json) and "
        f"{redact(outcome.url)}"
    )
    print(sweep_report(outcome.study, outcome.name, outcome.url, outcome.out_dir))
    return 1 if slurm is not None and outcome.status else 0  # --wait: the workers ended with trials left


def _gpu_check(args: argparse.Namespace) -> int:
    from ablations.gpucheck import GpuCheckError, run_gpu_check
    from ablations.sweep import SweepError
    from ablations.sweep.study import StudyError

    try:
        check_writable_dir("--out", args.out, ConfigError)
        run_gpu_check(
            args.out, budget_s=args.budget_s, device=args.device, tiny=args.tiny, bench=not args.no_bench,
            printer=lambda line: print(line, flush=True),
        )  # fmt: skip
    except (GpuCheckError, ConfigError, StudyError, SweepError) as error:
        return _error(error)
    except (KeyboardInterrupt, SystemExit):
        print("\nablations: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _report(args: argparse.Namespace) -> int:
    from ablations.report.build import generate
    from ablations.results import ResultsError

    runs = Path(args.runs) if args.runs else (Path("runs/sweeps") if Path("runs/sweeps").is_dir() else None)
    if runs is not None and not args.runs and not any(runs.glob("*/optuna.db")):
        runs = None  # the default folder holds no storage: report from the committed data
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    # The top-level README's results table follows reports/ only: a report written elsewhere leaves it alone.
    readme = Path("README.md") if Path(args.out).resolve() == Path("reports").resolve() else None
    try:
        reports = generate(
            sweeps_dir=Path(args.sweeps),
            out_dir=Path(args.out),
            data_dir=Path(args.data) if args.data else None,
            runs=runs,
            storage=args.storage,
            study_names=args.studies,
            formats=formats,
            bench=args.bench,
            wandb=not args.no_wandb,
            readme=readme if readme is not None and readme.is_file() else None,
        )
    except ResultsError as error:
        return _error(error)
    print(f"wrote {len(reports)} study report(s) and {Path(args.out) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
