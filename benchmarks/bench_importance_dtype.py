"""What a lighter importance state changes in the masks (Sec. 2.3; adapters/rank_allocator.py).

`adaq_lora` trains on the default model and the School_math stand-in with its EMAs in bfloat16, per element (the
defaults), and a shadow allocator beside it keeps the EMAs of the very same gradients another way (`--shadow`:
float32 EMAs by default, or `importance_per=triplet`, one value per triplet for P's column and Q's row, with the
run at that setting and the shadow per element). At every re-masking the shadow's choice of the `budget` best
triplets is compared with the one the run made: how many re-maskings picked a different set, and by how many
triplets. The masks the run applies are its own, so the two never drift apart through training; what is measured is
the choice alone, step by step.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_importance_dtype.py [--steps 40] [--threads N]
        [--shadow importance_dtype=float32 | --shadow importance_per=triplet] [--out PATH]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from adaq_lora import AdaQConfig, load_model
from adaq_lora.adapters.rank_allocator import RankAllocator
from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import build_example, collate_examples, load_records, pad_token_id
from adaq_lora.grid.experiment import package_versions
from adaq_lora.training import make_optimizer, training_step
from adaq_lora.tuners import prepare

MAX_LENGTH = 128


SHADOWS = {"importance_dtype=float32": ({}, {"importance_dtype": "float32"}),  # (the run's changes, the shadow's)
           "importance_per=triplet": ({"importance_per": "triplet"}, {"importance_per": "element"})}


def compare(steps: int, shadow_name: str) -> dict:
    model, tokenizer = load_model()
    run_changes, shadow_changes = SHADOWS[shadow_name]
    # masks from step 1; no compaction, so the shadow's scores keep the shapes of the adapters they describe
    config = AdaQConfig(total_steps=steps, t_init=0, t_final=1, precision_budget_bits=None, compact_ranks=False,
                        **run_changes)
    torch.manual_seed(0)
    tuner = prepare(model, "adaq_lora", config)
    shadow = RankAllocator(tuner.model, replace(config, **shadow_changes))  # scores only, never masks
    hook = tuner.after_optimizer_step
    rows = []

    def after_optimizer_step(optimizer=None):
        shadow.update_importance()  # the gradients the run's own allocator reads next
        fixed = tuner.allocator.rank_pattern is not None  # the final phase's mask, set once and never again
        budget = hook(optimizer)
        chosen = torch.cat([layer.triplet_mask.view(-1).bool() for layer in tuner.allocator.layers.values()])
        different = int((shadow.best_triplets(budget) != chosen).sum()) // 2  # one swap: one in, one out
        rows.append({"step": tuner.allocator.global_step, "budget": budget, "remasked": not fixed,
                     "triplets_swapped": different})
        return budget

    tuner.after_optimizer_step = after_optimizer_step
    optimizer = make_optimizer([p for p in tuner.model.parameters() if p.requires_grad], "paged_adamw",
                               config.learning_rate)
    examples = []
    for record in load_records("school_math"):
        try:
            examples.append(build_example(record, tokenizer, MAX_LENGTH))
        except ValueError:  # a prompt of MAX_LENGTH tokens or more leaves no answer to learn: not a training example
            continue
        if len(examples) == steps:
            break
    tuner.model.train()
    for step, example in enumerate(examples, start=1):
        outcome = training_step(tuner, [collate_examples([example], pad_token_id(tokenizer))], optimizer, 0.1)
        print(f"step {step}: loss {outcome.loss:.3f}, budget {rows[-1]['budget']}, swapped "
              f"{rows[-1]['triplets_swapped']}", file=sys.stderr, flush=True)
    remaskings = [row for row in rows if row["remasked"]]
    return {"shadow": shadow_name, "steps": rows, "remaskings": len(remaskings),
            "remaskings_differing": sum(1 for row in remaskings if row["triplets_swapped"]),
            "largest_swap": max(row["triplets_swapped"] for row in remaskings),
            "triplets": tuner.allocator.initial_budget}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--shadow", choices=list(SHADOWS), default="importance_dtype=float32")
    parser.add_argument("--out", default=str(Path(__file__).with_name("bench_importance_dtype.json")))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    figures = compare(args.steps, args.shadow)
    print(f"{figures['remaskings_differing']} of {figures['remaskings']} re-maskings chose a different set than "
          f"the shadow ({args.shadow}) would; at most {figures['largest_swap']} of {figures['triplets']} triplets "
          "swapped")
    write_json_atomic(Path(args.out), {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "command": " ".join(["benchmarks/bench_importance_dtype.py", *(argv or sys.argv[1:])]),
                                       "versions": package_versions(), **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
