"""Record the cpu-profile grid that chapter 8 reads: both stand-ins × the methods × three seeds (results/README.md).

    python scripts/record_grid.py [--jobs 2] [--commit] [--seeds 0 1 2] [--datasets …] [--methods …] [--list]

Each cell is one `adaq-lora run` in its own process with one torch thread, in a work folder under runs/cpu-grid/
(checkpoints every 100 steps, so a killed cell resumes where it stopped). A finished cell's result.json and
predictions.jsonl are copied into results/cpu/<data set>/<method>/seed<k>/ (the adapters stay behind), and with
--commit each cell is committed as it lands, alone, so a grid cut off part way keeps every finished cell. Cells
already in results/ are skipped: run the script again to go on. `base` decodes greedily and trains nothing, so its
answers do not depend on the seed: it is recorded for seed 0 only.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from adaq_lora.atomic import staged
from adaq_lora.grid.jobs import run_side_by_side

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("school_math", "alpaca_zh")
METHODS = ("base", "qlora", "adaq_lora", "adaq_lora_nf4", "lora")  # the claims' pairs first
KEPT = ("predictions.jsonl", "result.json")  # result.json last: a cell with it is whole, as in the run itself


def cells(seeds: list[int], datasets=DATASETS, methods=METHODS) -> list[tuple[str, str, int]]:
    """(data set, method, seed) in the order they are run: seed by seed, so that a cut grid is a complete seed."""
    return [(dataset, method, seed) for seed in seeds for dataset in DATASETS for method in METHODS
            if dataset in datasets and method in methods and not (method == "base" and seed != seeds[0])]


def recorded_dir(dataset: str, method: str, seed: int) -> Path:
    return REPO / "results" / "cpu" / dataset / method / f"seed{seed}"


def work_dir(dataset: str, method: str, seed: int) -> Path:
    return REPO / "runs" / "cpu-grid" / dataset / method / f"seed{seed}"


def start(cell: tuple[str, str, int], env: dict) -> subprocess.Popen:
    dataset, method, seed = cell
    work = work_dir(*cell)
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "adaq_lora.cli", "run", "--method", method, "--dataset", dataset,
               "--profile", "cpu", "--seed", str(seed), "--out", str(work), "--quiet"]
    log = open(work / "log.txt", "a", encoding="utf-8")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def keep(cell: tuple[str, str, int], commit: bool) -> Path:
    """Copy the finished cell's files into results/ (each staged, then renamed: `atomic.staged`), and commit them alone."""
    target = recorded_dir(*cell)
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        with staged(target / name) as staging:
            shutil.copyfile(work_dir(*cell) / name, staging)
    if commit:
        relative = str(target.relative_to(REPO))
        for attempt in range(5):  # another git command may hold the index for a moment
            added = subprocess.run(["git", "add", "--", relative], cwd=REPO)
            done = added.returncode == 0 and subprocess.run(
                ["git", "commit", "-q", "-m", f"Recorded cpu grid cell {'/'.join(map(str, cell))}", "--", relative],
                cwd=REPO).returncode == 0
            if done:
                break
            time.sleep(10)
        else:
            print(f"could not commit {relative}; commit it by hand", file=sys.stderr)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cells at once, one torch thread each (default 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=DATASETS, help="only these stand-ins")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, help="only these methods")
    parser.add_argument("--commit", action="store_true", help="git-commit each cell's files as it lands")
    parser.add_argument("--list", action="store_true", help="print the cells still to run and stop")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    todo = [cell for cell in cells(args.seeds, args.datasets, args.methods) if not (recorded_dir(*cell) / KEPT[-1]).exists()]
    if args.list:
        print("\n".join("/".join(map(str, cell)) for cell in todo) or "every cell is recorded")
        return 0

    def finished(cell: tuple[str, str, int], process: subprocess.Popen) -> bool:
        if process.returncode == 0:
            print(f"recorded {keep(cell, args.commit)}", flush=True)
        else:
            print(f"failed {'/'.join(map(str, cell))} (exit {process.returncode}): see "
                  f"{work_dir(*cell) / 'log.txt'}", file=sys.stderr, flush=True)
        return process.returncode == 0

    failed = run_side_by_side(todo, start, finished, args.jobs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
