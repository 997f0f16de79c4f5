"""What a precision budget below 4 bits costs ADAQ-LoRA, and which budget a profile should default to (book chapter 6).

Short runs scored on a held-in split of the training data (`held_in.py` says how): adaq_lora with its default start
at frozen-base budgets from 2.5 to 6 bits a weight, the same with LoftQ's start (the adapters begin at the best
rank-init_r fit of what the low bits took away), the plan as it was before NF3 and NF2 (a 4-bit floor, 6 bits), and
qlora beside them. Each row adds to the run's figures what the plan decided (matrices per precision, its bits a
weight) and the peak's breakdown, from which the frozen base's bits a weight are read as the run holds them.

    HF_HUB_OFFLINE=1 python benchmarks/sweep_budget.py [--datasets school_math alpaca_zh] [--seeds 0 1]
        [--variants …] [--steps 240] [--jobs 2] [--out benchmarks/sweep_budget.json] [--table]
"""
from __future__ import annotations

import sys
from pathlib import Path

from adaq_lora.display import budget_sweep_table
from adaq_lora.quant.blockwise import PRECISIONS
from adaq_lora.quant.precision import PrecisionPlan
from held_in import REPO, held_in_run, sweep_main

BUDGETS = (2.5, 3.0, 3.5, 4.0, 4.5, 6.0)
VARIANTS = {  # label: (method, profile overrides)
    "qlora": ("qlora", {}),
    **{f"{budget:g} bits": ("adaq_lora", {"precision_budget_bits": budget}) for budget in BUDGETS},
    **{f"{budget:g} bits, LoftQ start": ("adaq_lora", {"precision_budget_bits": budget, "loftq_init": True})
       for budget in (2.5, 3.0, 3.5, 4.0)},
    "6 bits, NF4 floor (the plan before)": ("adaq_lora", {"precision_budget_bits": 6.0, "precision_floor": "nf4"}),
}
WEIGHT_CATEGORIES = ("quantized_weights", "full_precision_weights")  # the frozen base in a memory breakdown


def run_one(dataset: str, variant: str, seed: int, steps: int, work: Path) -> dict:
    """One variant's run, scored on the held-in records, with its plan and the frozen base's bits; returns its row."""
    method, adapter = VARIANTS[variant]
    result, row = held_in_run(method, dataset, seed, steps, adapter, work)
    breakdown = result["memory_breakdown"]
    row = {"variant": variant, **row, "memory_breakdown": breakdown}
    if adapter.get("precision_budget_bits") is not None:
        plan = PrecisionPlan.load(work)
        frozen_mb = sum(breakdown[f"{category}_mb"] for category in WEIGHT_CATEGORIES)
        row.update(plan_bits=plan.bits_per_parameter,
                   plan_counts={p: sum(v == p for v in plan.precisions.values()) for p in PRECISIONS},
                   frozen_bits_measured=8 * frozen_mb * 2**20 / sum(plan.parameters.values()))
    return row


if __name__ == "__main__":
    sys.exit(sweep_main(__file__, list(VARIANTS), REPO / "benchmarks" / "sweep_budget.json", run_one,
                        budget_sweep_table))
