"""Re-score the answer accuracy of recorded runs from their own predictions.jsonl, as the package scores it now.

    python scripts/add_accuracy.py results/cpu

For every complete run under the folder, reads the recorded predictions and references, scores each with
`adaq_lora.scoring.accuracy` (the data set's kind: `accuracy`, and for School_math `accuracy_working` too), and
where anything differs from what the run holds rewrites, atomically, predictions.jsonl with each example's scores
and result.json with the means and their bootstrap intervals (the run's own number of resamples, seed 0, as a run
computes them). It prints, run by run, how many answers changed verdict. Nothing is retrained or regenerated; a run
already scored as the package scores now is left as it is.
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


def rescore(run_dir: Path) -> dict[str, int] | None:
    """Score one run in place; per score, how many answers changed (a score the run lacked counts every answer);
    None if nothing changed."""
    result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    path = run_dir / PREDICTIONS_FILE
    rows = [row for _, row in json_lines_rows(path.read_text(encoding="utf-8"), path)]
    if len(rows) != result["n_test"]:
        raise ValueError(f"{path} holds {len(rows)} predictions for n_test={result['n_test']}: the run was cut short "
                         "or its files are from two runs; rerun that cell")
    scores = accuracy_scores([row["prediction"] for row in rows], [row["reference"] for row in rows],
                             answer_kind(result["dataset"]))
    changed = {name: sum(row["scores"].get(name) != value for row, value in zip(rows, values))
               for name, values in scores.items()}
    if not any(changed.values()):
        return None
    for name, values in scores.items():
        for row, value in zip(rows, values):
            row["scores"][name] = value
    intervals = bootstrap_intervals(scores, n_resamples=result["settings"]["bootstrap_resamples"], seed=0)
    for name, values in scores.items():
        result[name] = statistics.fmean(values)
        result["intervals"][name] = list(intervals[name])
    write_jsonl_atomic(run_dir / PREDICTIONS_FILE, rows)
    write_json_atomic(run_dir / RESULT_FILE, result)
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for result in collect_results(args[0]):
        run_dir = Path(result["path"]).parent
        changed = rescore(run_dir)
        print(f"{run_dir}: " + ("as scored" if changed is None else
                                ", ".join(f"{name} changed for {count} answer(s)" for name, count in changed.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
