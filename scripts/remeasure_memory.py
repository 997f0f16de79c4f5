"""Measure the memory of recorded runs again, as the package measures it now, without training them again.

    python scripts/remeasure_memory.py results/cpu [--methods qlora adaq_lora ...]

A run's Memory/MB is the peak of one training step before training (`grid/cell_start.py`): it depends on the
run's settings and on the package's code, not on what the run learned, and not on its seed (the seed draws the
adapters' values, not their sizes; the measured batch is the longest of the training split, which the seed does not
choose). So when the code changes how much a step holds but not what it computes, the recorded scores still stand
and only the memory is stale, and runs recorded at different times compare their memory only once it is measured by
one version of the code. For every complete run of the given methods (default: all), this rebuilds the run's start
from its own recorded settings (`start_cell`; a setting the record predates takes the value it had before it
existed, `BEFORE_THE_KEY`), measures it (`measure_cell_memory`; once for runs that differ only by seed) and, where
the number differs, rewrites result.json atomically with the new `memory_mb`, `memory_breakdown` and
`memory_measured`, keeping the first measurement under `memory_as_recorded` and saying when and at which commit it
was measured again (`memory_remeasured`). Nothing else in the result changes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import pad_token_id
from adaq_lora.grid.cell_start import measure_cell_memory, start_cell
from adaq_lora.grid.experiment import RESULT_FILE, flat_keys, plan_experiment
from adaq_lora.grid.tables import collect_results
from adaq_lora.tuners.registry import method_names

MEMORY_KEYS = ("memory_mb", "memory_breakdown", "memory_measured")
NOT_THE_RUN = ("description", "datasets")  # profile fields that describe it and change nothing a run does
# A setting added after a run was recorded, with the behaviour it had before (config.py) where today's default differs.
BEFORE_THE_KEY = {"adapter.precision_floor": "nf4", "adapter.svd_init": "gaussian", "adapter.lambda_lr_ratio": 1.0}


def flat(settings: dict) -> dict:
    """A profile's settings as dotted keys (`adapter.init_r`), less those that change nothing a run does."""
    return {key: value for key, value in flat_keys(settings).items() if key.split(".")[0] not in ("name", *NOT_THE_RUN)}


def recorded_overrides(settings: dict) -> dict:
    """Overrides that rebuild the profile a run was recorded with, from the settings its result.json names."""
    recorded = flat(settings)
    return {**{key: value for key, value in BEFORE_THE_KEY.items() if key not in recorded}, **recorded}


def measure(result: dict) -> dict:
    """The run's memory measured now, from its recorded settings (ValueError if they cannot be rebuilt)."""
    experiment = plan_experiment(result["method"], result["dataset"], result["profile"], result["seed"],
                                 recorded_overrides(result["settings"]))
    rebuilt = flat(experiment.identity()["settings"])
    differing = sorted(key for key, value in flat(result["settings"]).items() if rebuilt.get(key) != value)
    if differing:
        raise ValueError(f"{result['path']}: its settings could not be rebuilt ({', '.join(differing)}); "
                         "its memory is left as recorded")
    tuner, tokenizer, examples = start_cell(experiment, progress=False)
    return measure_cell_memory(experiment, tuner, examples, pad_token_id(tokenizer))


def commit() -> str | None:
    """The repository's commit, if this is a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def rewrite(run_dir: Path, memory: dict, stamp: dict) -> str:
    """Put `memory` into the run's result.json if it differs from what is there; what happened, in a few words."""
    path = run_dir / RESULT_FILE
    result = json.loads(path.read_text(encoding="utf-8"))
    before = result["memory_mb"]
    if abs(memory["memory_mb"] - before) < 0.05:
        return f"as recorded ({before:.1f} MB)"
    result.setdefault("memory_as_recorded", {key: result[key] for key in MEMORY_KEYS})
    result.update(memory, memory_remeasured=stamp)
    write_json_atomic(path, result)
    return f"{before:.1f} → {memory['memory_mb']:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a results folder, e.g. results/cpu")
    parser.add_argument("--methods", nargs="+", choices=method_names(), default=list(method_names()),
                        help="methods whose runs are measured (a renamed row by the method it ran)")
    args = parser.parse_args(argv)
    runs = [result for result in collect_results(args.folder) if result.get("ran_as", result["method"]) in args.methods]
    if not runs:
        print(f"no complete run of {', '.join(args.methods)} under {args.folder}", file=sys.stderr)
        return 1
    stamp = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit()}
    measured: dict[str, dict] = {}  # runs that differ only by seed: one measurement
    for result in runs:
        run = {**result, "method": result.get("ran_as", result["method"])}
        same = json.dumps([run["method"], run["dataset"], run["profile"], run["settings"]], sort_keys=True)
        if same not in measured:
            measured[same] = measure(run)
        print(f"{Path(result['path']).parent}: {rewrite(Path(result['path']).parent, measured[same], stamp)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
