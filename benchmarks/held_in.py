"""What the sweeps share (sweep_start.py, sweep_budget.py): short runs scored on a held-in split of the training data.

A run is the ci profile raised to `steps` training examples (one epoch: one step each), scored on the HELD_IN records
of the 80% training split that follow the cpu profile's 400 training records: never trained on by any run here or in
the grid, and never the test split, so no default is chosen on the grid's test prompts. Each run is one
`grid.experiment.execute` with its overrides of the profile, in its own process with one torch thread, `--jobs` at a
time; each finished run is added to `--out` (JSON, atomically) as soon as it lands, so a sweep cut off part way
resumes by running the same command again. A run also leaves its row in its own folder (ROW_FILE), so one whose
sweep process died while it ran is still collected: the next command (`--table` included) adds it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import load_records, split_records
from adaq_lora.grid.experiment import SPLIT_SEED, TEST_FRACTION, execute, plan_experiment
from adaq_lora.grid.jobs import run_side_by_side

REPO = Path(__file__).resolve().parents[1]
HELD_IN_START, HELD_IN = 400, 24  # held-in records: training split [400, 424), after the cpu profile's 400
MAX_NEW_TOKENS = 128  # enough for a School_math answer's final 答 line
ROW_FILE = "sweep_row.json"  # a finished run's row, in its own folder


def run_key(dataset: str, variant: str, seed: int) -> str:
    return f"{dataset} | {variant} | seed {seed}"


def held_in_run(method: str, dataset: str, seed: int, steps: int, overrides: dict, work: Path,
                observe=None) -> tuple[dict, dict]:
    """One short run scored on the held-in records: (the experiment's result, the row fields every sweep keeps)."""
    torch.set_num_threads(1)
    experiment = plan_experiment(method, dataset, "ci", seed,
                                 {"train_size": steps, "max_new_tokens": MAX_NEW_TOKENS, **overrides})
    training_split, _ = split_records(load_records(dataset), TEST_FRACTION, seed=SPLIT_SEED)
    experiment = replace(experiment, test_records=training_split[HELD_IN_START:HELD_IN_START + HELD_IN])
    result = execute(experiment, work, force=True, progress=False, observe=observe)
    losses = result["lm_losses"]
    quarter = max(1, len(losses) // 4)
    return result, {
        "dataset": dataset, "seed": seed, "method": method, "adapter_overrides": overrides, "steps": len(losses),
        "held_in_records": [HELD_IN_START, HELD_IN_START + HELD_IN],
        "quarter_cross_entropy": [statistics.fmean(losses[i * quarter:(i + 1) * quarter]) for i in range(4)],
        "last_quarter_cross_entropy": statistics.fmean(losses[-quarter:]),
        "held_in_avg": result["avg"], "held_in_accuracy": result["accuracy"],
        "median_step_seconds": result["median_step_seconds"], "start_seconds": result["start_seconds"],
        "train_seconds": result["train_seconds"], "memory_mb": result["memory_mb"], "lm_losses": losses,
        "cpu": result["cpu"], "finished_at": result["finished_at"]}


def sweep_main(script: str, variants: list[str], default_out: Path, run_one: Callable[..., dict],
               table: Callable[[dict], str], argv=None) -> int:
    """The command line of a sweep: run every (data set, variant, seed) not yet in --out, or print --table.

    `run_one(dataset, variant, seed, steps, work)` runs one variant and returns its row; `script` is the sweep's
    own file, run again as a child (`--one`) for every run so that each has a process of its own.
    """
    name = Path(script).stem
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["school_math", "alpaca_zh"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=variants, default=variants)
    parser.add_argument("--steps", type=int, default=240, help="training examples, one step each (default 240)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each (default 2)")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--table", action="store_true", help="print the table of what --out holds and stop")
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = REPO / "runs" / name.replace("_", "-")
    if args.one:  # a child: run one variant and print its row
        dataset, variant, seed = args.one
        work = runs / f"{dataset}-{seed}-{variant}"
        row = run_one(dataset, variant, int(seed), args.steps, work)
        write_json_atomic(work / ROW_FILE, row)
        print("ROW " + json.dumps(row, ensure_ascii=False))
        return 0
    rows = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    left = {run_key(r["dataset"], r["variant"], r["seed"]): r for r in
            (json.loads(path.read_text(encoding="utf-8")) for path in sorted(runs.glob(f"*/{ROW_FILE}")))}
    if set(left) - set(rows):  # rows of runs whose sweep process did not live to collect them
        rows.update({key: row for key, row in left.items() if key not in rows})
        write_json_atomic(args.out, rows)
    if args.table:
        print(table(rows))
        return 0
    todo = [(d, v, s) for s in args.seeds for v in args.variants for d in args.datasets if run_key(d, v, s) not in rows]

    def start(job: tuple, env: dict) -> subprocess.Popen:
        log = runs / f"{job[0]}-{job[2]}-{job[1]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, script, "--steps", str(args.steps), "--one", job[0], job[1], str(job[2])]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=log.open("w", encoding="utf-8"), text=True)

    def finished(job: tuple, process: subprocess.Popen) -> bool:
        found = [line[4:] for line in process.stdout.read().splitlines() if line.startswith("ROW ")]
        if process.returncode != 0 or not found:
            print(f"failed {run_key(*job)} (exit {process.returncode})", file=sys.stderr, flush=True)
            return False
        rows[run_key(*job)] = json.loads(found[-1])
        write_json_atomic(args.out, rows)
        print(f"done {run_key(*job)}: last-quarter CE {rows[run_key(*job)]['last_quarter_cross_entropy']:.3f}", flush=True)
        return True

    run_side_by_side(todo, start, finished, args.jobs)
    print(table(rows))
    return 0
