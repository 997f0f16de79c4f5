"""Measure the memory of recorded runs again, as the package measures it now, without training them again.

    python scripts/remeasure_memory.py results/cpu [--methods adaq_lora]

A run's Memory/MB is the peak of one training step before training (`grid/cell_start.py`): it depends on the
run's settings and on the package's code, not on what the run learned. When the code changes how much a step
holds but not what it computes (the blockwise layers' saved inputs, for one), the recorded scores still stand and
only the memory is stale. For every complete run of the given methods (default: those that store their base by a
precision plan) whose settings are the profile's today, this rebuilds the run's start (`start_cell`), measures
it (`measure_cell_memory`) and, where the number differs, rewrites result.json atomically with the new
`memory_mb`, `memory_breakdown` and `memory_measured`, keeping the first measurement under `memory_as_recorded`
and saying when and at which commit it was measured again (`memory_remeasured`). A run whose settings differ
from the profile's today is left as recorded, and said so. Nothing else in the result changes.
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
from adaq_lora.grid.experiment import RESULT_FILE, plan_experiment
from adaq_lora.grid.tables import collect_results
from adaq_lora.tuners.registry import method_names, method_spec

MEMORY_KEYS = ("memory_mb", "memory_breakdown", "memory_measured")


def commit() -> str | None:
    """The repository's commit, if this is a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def remeasure(run_dir: Path) -> str:
    """Measure one run again and rewrite its result if the memory differs; what happened, in a few words."""
    path = run_dir / RESULT_FILE
    result = json.loads(path.read_text(encoding="utf-8"))
    experiment = plan_experiment(result["method"], result["dataset"], result["profile"], result["seed"])
    if (today := experiment.identity())["settings"] != result["settings"] or today["model"] != result["model"]:
        return f"left as recorded: its settings are not the {result['profile']!r} profile's today"
    tuner, tokenizer, examples = start_cell(experiment, progress=False)
    memory = measure_cell_memory(experiment, tuner, examples, pad_token_id(tokenizer))
    before = result["memory_mb"]
    if abs(memory["memory_mb"] - before) < 0.05:
        return f"as recorded ({before:.1f} MB)"
    result.setdefault("memory_as_recorded", {key: result[key] for key in MEMORY_KEYS})
    result.update(memory)
    result["memory_remeasured"] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit()}
    write_json_atomic(path, result)
    return f"{before:.1f} → {memory['memory_mb']:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a results folder, e.g. results/cpu")
    parser.add_argument("--methods", nargs="+", choices=method_names(),
                        default=[name for name in method_names() if method_spec(name).precision_plan])
    args = parser.parse_args(argv)
    runs = [result for result in collect_results(args.folder) if result["method"] in args.methods]  # renamed rows: no
    if not runs:
        print(f"no complete run of {', '.join(args.methods)} under {args.folder}", file=sys.stderr)
        return 1
    for result in runs:
        run_dir = Path(result["path"]).parent
        print(f"{run_dir}: {remeasure(run_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
