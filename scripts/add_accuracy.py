"""Score the answer accuracy of recorded runs that predate it, from their own predictions.jsonl.

    python scripts/add_accuracy.py results/cpu

For every complete run under the folder whose result.json has no `accuracy`, reads the recorded predictions and
references, scores each with `adaq_lora.scoring.accuracy` (the data set's kind), and rewrites, atomically,
predictions.jsonl with each example's `accuracy` among its scores and result.json with the mean and its bootstrap
interval (the run's own number of resamples, seed 0, as a run computes them). Nothing is retrained or regenerated;
a run that already has its accuracy is left as it is.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from adaq_lora.atomic import write_json_atomic, write_jsonl_atomic
from adaq_lora.data import json_lines_rows
from adaq_lora.grid.experiment import PREDICTIONS_FILE, RESULT_FILE
from adaq_lora.grid.tables import collect_results
from adaq_lora.scoring.accuracy import accuracy_scores, answer_kind
from adaq_lora.scoring.metrics import bootstrap_intervals


def add_accuracy(run_dir: Path) -> bool:
    """Score one run in place; False if it already had its accuracy."""
    result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    if "accuracy" in result:
        return False
    path = run_dir / PREDICTIONS_FILE
    rows = [row for _, row in json_lines_rows(path.read_text(encoding="utf-8"), path)]
    if len(rows) != result["n_test"]:
        raise ValueError(f"{path} holds {len(rows)} predictions for n_test={result['n_test']}: the run was cut short "
                         "or its files are from two runs; rerun that cell")
    scores = accuracy_scores([row["prediction"] for row in rows], [row["reference"] for row in rows],
                             answer_kind(result["dataset"]))
    for row, correct in zip(rows, scores):
        row["scores"]["accuracy"] = correct
    interval = bootstrap_intervals({"accuracy": scores}, n_resamples=result["settings"]["bootstrap_resamples"],
                                   seed=0)["accuracy"]
    result["accuracy"] = statistics.fmean(scores)
    result["intervals"]["accuracy"] = list(interval)
    write_jsonl_atomic(run_dir / PREDICTIONS_FILE, rows)
    write_json_atomic(run_dir / RESULT_FILE, result)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for result in collect_results(args[0]):
        run_dir = Path(result["path"]).parent
        print(f"{run_dir}: {'scored' if add_accuracy(run_dir) else 'already scored'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
