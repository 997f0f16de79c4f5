"""The `adaq-lora` command: run one cell of the paper's grid, or print Tables 1 and 2 (Sec. 3; book chapter 8).

    adaq-lora run --method adaq_lora --dataset school_math --profile ci [--seed 0] [--set key=value ...] --out DIR
    adaq-lora tables RUNS_DIR [--csv PATH]
    torchrun --nproc_per_node=N -m adaq_lora.cli run ...   (one cell, data-parallel: training/distributed.py)

A wrong method, data set, profile or `--set` key is refused before any model is loaded: exit status 2, one
message on stderr naming the valid choices, no traceback. Failures after that point (a crash in training) keep
their traceback, because they are bugs or the machine's limits, not a mistyped argument.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from ..profiles import PROFILE_NAMES, load_profile, parse_assignments

USAGE_ERROR = 2


class CommandError(Exception):
    """A mistake in the command's arguments, shown as one line on stderr."""


@contextmanager
def usage_errors(*kinds: type[Exception]):
    """Turn an error of `kinds`, raised inside, into a CommandError: a mistake of the caller's, not a bug."""
    try:
        yield
    except kinds as error:
        raise CommandError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaq-lora", description="ADAQ-LoRA: the paper's grid and tables.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="fine-tune and score one method on one data set")
    run.add_argument("--method", required=True, help="base, full, lora, qlora, adalora, adaq_lora, or a PEFT peer")
    run.add_argument("--dataset", required=True, help="a stand-in's name, a hub id, or a .json/.jsonl path")
    run.add_argument("--profile", required=True, choices=PROFILE_NAMES, help="how much the run does")
    run.add_argument("--seed", type=int, default=0, help="seeds the adapters' start and the batch order (default 0)")
    run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override one profile field, e.g. --set train_size=100 or --set adapter.target_r=6 "
                          "(a section's field may drop its section: --set target_r=6; repeatable)")
    run.add_argument("--out", required=True, help="folder for result.json, predictions.jsonl and adapters/")
    run.add_argument("--force", action="store_true", help="run again even if the folder holds a complete result")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    tables = commands.add_parser("tables", help="print Tables 1 and 2 from the result.json files under RUNS_DIR")
    tables.add_argument("runs_dir", metavar="RUNS_DIR")
    tables.add_argument("--csv", metavar="PATH", help="also write the tables as CSV")
    return parser


def run_command(args) -> None:
    from ..training.distributed import join_world, leave_world
    from .experiment import RESULT_FILE, FolderHoldsAnotherRun, execute, plan_experiment

    with usage_errors(ValueError):
        overrides = parse_assignments(args.assignments)
        profile = load_profile(args.profile, overrides)
    world = join_world(profile.device)  # torchrun's processes, or this one alone
    if world.main and profile.multiplies_in_float32():
        print("adaq-lora run: this CPU has no bfloat16 units: the bfloat16 base's matrix products run in float32 "
              "(adaq_lora/training/float32_products.py)", file=sys.stderr)
    try:
        with usage_errors(ValueError):
            experiment = plan_experiment(args.method, args.dataset, args.profile, args.seed, overrides)
        with usage_errors(FolderHoldsAnotherRun):  # a ValueError from inside the run keeps its traceback
            result = execute(experiment, args.out, force=args.force, progress=not args.quiet)
    finally:
        leave_world()
    if world.main:
        summary = {key: result[key] for key in ("method", "dataset", "model", "rouge-1", "rouge-2", "rouge-l",
                                                "bleu-4", "avg", "memory_mb", "train_seconds")}
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        print(f"written: {args.out}/{RESULT_FILE}")


def tables_command(args) -> None:
    from .tables import build_tables, collect_results, markdown, table_for, write_csv

    with usage_errors(ValueError):
        results = collect_results(args.runs_dir)
    tables = build_tables(results)
    print(markdown(tables))
    outside = sorted({r["dataset"] for r in results if table_for(r["dataset"]) is None})
    if outside:
        print(f"not in Tables 1-2 (data set is neither Alpaca_Chinese nor School_math): {', '.join(outside)}",
              file=sys.stderr)
    if args.csv:
        print(f"written: {write_csv(tables, args.csv)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"run": run_command, "tables": tables_command}[args.command](args)
    except CommandError as error:
        print(f"adaq-lora {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
