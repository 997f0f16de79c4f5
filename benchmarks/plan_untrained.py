"""What each precision budget costs the *untrained* default model (book chapter 6): before any adapter can help.

The default model's frozen matrices are scored once (`precision.score_matrix`, Fisher-weighted by the first 8
training examples, as a run's plan is), then planned at each budget (and, for comparison, with the plan's old 4-bit
floor), stored, and scored by cross-entropy on the held-in records of the training split (`held_in.py`): the same
24 answers the sweeps score, never the grid's test prompts. One thread; about five minutes.

    HF_HUB_OFFLINE=1 python benchmarks/plan_untrained.py [--dataset school_math] [--calibration 8] [--budgets …]
        [--out benchmarks/plan_untrained.json]

Rows are added to what `--out` holds; a calibration count other than the runs' (CALIBRATION_EXAMPLES) is named in
the row's key.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import collate_examples, load_records, pad_token_id, split_records, tokenize_records
from adaq_lora.grid.experiment import SPLIT_SEED, TEST_FRACTION
from adaq_lora.models import load_model
from adaq_lora.quant.blockwise import PRECISIONS
from adaq_lora.quant.precision import (CALIBRATION_EXAMPLES, apply_precision_plan, calibration_batches,
                                       choose_precisions, fisher_diagonal, frozen_matrices, score_matrix)
from held_in import HELD_IN, HELD_IN_START, REPO

PLANS = {"nf2": (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0), "nf4": (4.5, 5.0, 6.0)}  # floor: budgets
MAX_LENGTH = 256  # the ci profile's


def held_in_cross_entropy(model, batches: list[dict]) -> float:
    with torch.no_grad():
        return statistics.fmean(model(**batch).loss.item() for batch in batches)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="school_math")
    parser.add_argument("--calibration", type=int, default=CALIBRATION_EXAMPLES, help="calibration examples")
    parser.add_argument("--budgets", type=float, nargs="+", help="only these budgets (default: every one of PLANS)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "plan_untrained.json")
    args = parser.parse_args(argv)
    recorded = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    named = "" if args.calibration == CALIBRATION_EXAMPLES else f", {args.calibration} calibration examples"
    torch.set_num_threads(1)
    model, tokenizer = load_model(None)
    training_split, _ = split_records(load_records(args.dataset), TEST_FRACTION, seed=SPLIT_SEED)
    pad_id = pad_token_id(tokenizer)
    calibration = calibration_batches(tokenize_records(training_split[:args.calibration], tokenizer, MAX_LENGTH), pad_id,
                                      args.calibration)
    held_in = [collate_examples([example], pad_id) for example in
               tokenize_records(training_split[HELD_IN_START:HELD_IN_START + HELD_IN], tokenizer, MAX_LENGTH)]
    rows = recorded.get("rows", {}) | {"float32": {"cross_entropy": held_in_cross_entropy(model, held_in)}}
    matrices = frozen_matrices(model)
    fisher = fisher_diagonal(model, list(matrices), calibration)
    scores, shapes = {}, {}
    for name in matrices:
        weight = model.get_submodule(name).weight.detach()
        scores[name], shapes[name] = score_matrix(weight, fisher.pop(name)), tuple(weight.shape)
    tied = {name: shared for name, shared in matrices.items() if shared}
    for floor, budgets in PLANS.items():
        for budget in (b for b in budgets if args.budgets is None or b in args.budgets):
            key = f"{budget:g} bits, floor {floor}{named}"
            plan = choose_precisions(scores, shapes, budget, tied, calibrated=True, floor=floor)
            stored, _ = load_model(None)
            apply_precision_plan(stored, plan)
            rows[key] = {
                "budget_bits": budget, "floor": floor, "plan_bits": plan.bits_per_parameter,
                "counts": {p: sum(v == p for v in plan.precisions.values()) for p in PRECISIONS},
                "embedding": plan.precisions["model.embed_tokens"], "calibration_examples": args.calibration,
                "cross_entropy": held_in_cross_entropy(stored, held_in)}
            print(f"{key}: {rows[key]}", flush=True)
            write_json_atomic(args.out, {"dataset": args.dataset, "held_in_records": [HELD_IN_START,
                                                                                      HELD_IN_START + HELD_IN],
                                         "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
