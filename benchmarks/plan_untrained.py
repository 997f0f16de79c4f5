"""What each precision budget costs the *untrained* default model (book chapter 6): before any adapter can help.

The default model's frozen matrices are scored once (`precision.score_matrix`, Fisher-weighted by the first 8
training examples, as a run's plan is), then planned at each budget (and, for comparison, with the plan's old 4-bit
floor), stored, and scored by cross-entropy on the held-in records of the training split (`held_in.py`): the same
24 answers the sweeps score, never the grid's test prompts. One thread; about five minutes.

    HF_HUB_OFFLINE=1 python benchmarks/plan_untrained.py [--dataset school_math] [--out benchmarks/plan_untrained.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import collate_examples, load_records, pad_token_id, split_records, tokenize_records
from adaq_lora.grid.experiment import SPLIT_SEED, TEST_FRACTION
from adaq_lora.models import load_model
from adaq_lora.quant.blockwise import PRECISIONS
from adaq_lora.quant.precision import (apply_precision_plan, calibration_batches, choose_precisions, fisher_diagonal,
                                       frozen_matrices, score_matrix)
from held_in import HELD_IN, HELD_IN_START, REPO

PLANS = {"nf2": (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0), "nf4": (4.5, 5.0, 6.0)}  # floor: budgets
MAX_LENGTH = 256  # the ci profile's


def held_in_cross_entropy(model, batches: list[dict]) -> float:
    with torch.no_grad():
        return statistics.fmean(model(**batch).loss.item() for batch in batches)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="school_math")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "plan_untrained.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = load_model(None)
    training_split, _ = split_records(load_records(args.dataset), TEST_FRACTION, seed=SPLIT_SEED)
    pad_id = pad_token_id(tokenizer)
    calibration = calibration_batches(tokenize_records(training_split[:8], tokenizer, MAX_LENGTH), pad_id)
    held_in = [collate_examples([example], pad_id) for example in
               tokenize_records(training_split[HELD_IN_START:HELD_IN_START + HELD_IN], tokenizer, MAX_LENGTH)]
    rows = {"float32": {"cross_entropy": held_in_cross_entropy(model, held_in)}}
    matrices = frozen_matrices(model)
    fisher = fisher_diagonal(model, list(matrices), calibration)
    scores, shapes = {}, {}
    for name in matrices:
        weight = model.get_submodule(name).weight.detach()
        scores[name], shapes[name] = score_matrix(weight, fisher.pop(name)), tuple(weight.shape)
    tied = {name: shared for name, shared in matrices.items() if shared}
    for floor, budgets in PLANS.items():
        for budget in budgets:
            plan = choose_precisions(scores, shapes, budget, tied, calibrated=True, floor=floor)
            stored, _ = load_model(None)
            apply_precision_plan(stored, plan)
            rows[f"{budget:g} bits, floor {floor}"] = {
                "budget_bits": budget, "floor": floor, "plan_bits": plan.bits_per_parameter,
                "counts": {p: sum(v == p for v in plan.precisions.values()) for p in PRECISIONS},
                "embedding": plan.precisions["model.embed_tokens"],
                "cross_entropy": held_in_cross_entropy(stored, held_in)}
            print(f"{budget:g} bits, floor {floor}: {rows[f'{budget:g} bits, floor {floor}']}", flush=True)
            write_json_atomic(args.out, {"dataset": args.dataset, "held_in_records": [HELD_IN_START,
                                                                                      HELD_IN_START + HELD_IN],
                                         "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
