"""ADAQ-LoRA's peak memory at each precision budget beside QLoRA's and PEFT's, on any task file (book chapter 6).

Each method is prepared as `adaq-lora run` prepares it on the ci profile (the default model, the file's first
`train_size` training records, adaq_lora's plan calibrated on them) and one training step on the longest of those
records is measured by `adaq_lora.measure.memory.measure_training_memory`, as a run measures its own peak, with
gradient checkpointing on (`--checkpointing off` for the other setting). No training follows: the peak of a run is
its first steps, which this step is. Rows: peft-qlora, peft-lora, qlora, and adaq_lora at every `--budgets`, with its
importance EMAs per element (the default) and per triplet (`importance_per`).

    HF_HUB_OFFLINE=1 python benchmarks/memory_budget.py --dataset FILE [--budgets 3 3.5 4 4.5 6]
        [--checkpointing on|off] [--out benchmarks/memory_budget.json]
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import collate_examples, pad_token_id, tokenize_records
from adaq_lora.grid.experiment import plan_experiment
from adaq_lora.measure.memory import measure_training_memory
from adaq_lora.models import load_model
from adaq_lora.quant.precision import calibration_batches
from adaq_lora.training import set_gradient_checkpointing
from adaq_lora.tuners import prepare

PEERS = ("peft-qlora", "peft-lora", "qlora")
TARGETS = {"peft-qlora": 0.55, "peft-lora": 0.25, "qlora": 0.80}  # adaq_lora's peak at most × the peer's (checkpointing on)


def peak(method: str, overrides: dict, dataset: str, checkpointing: bool) -> dict:
    """One training step's peak (MiB) and its breakdown for `method` prepared as a ci-profile run on `dataset`."""
    experiment = plan_experiment(method, dataset, "ci", 0, overrides)
    profile = experiment.profile
    model, tokenizer = load_model(None)
    pad_id = pad_token_id(tokenizer)
    examples = tokenize_records(experiment.train_records, tokenizer, profile.train.max_length)
    torch.manual_seed(0)
    tuner = prepare(model, method, experiment.adaq_config(), calibration=calibration_batches(examples, pad_id))
    set_gradient_checkpointing(tuner.model, checkpointing)
    longest = max(examples, key=lambda example: len(example["input_ids"]))
    breakdown = measure_training_memory(tuner, collate_examples([longest], pad_id),
                                        max_grad_norm=profile.train.max_grad_norm, optimizer_name=profile.train.optimizer)
    plan = tuner.precision_plan
    return {"method": method, "overrides": overrides, "peak_mb": breakdown.total_mb, "breakdown": breakdown.as_dict(),
            "tokens": len(longest["input_ids"]), "plan_bits": plan.bits_per_parameter if plan is not None else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a task file (JSON lines of instruction/input/output)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5, 4.0, 4.5, 6.0])
    parser.add_argument("--checkpointing", choices=("on", "off"), default="on")
    parser.add_argument("--train-size", type=int, default=64, help="training records the run would use (default 64)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("memory_budget.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpointing = args.checkpointing == "on"
    common = {"train_size": args.train_size, "gradient_checkpointing": checkpointing}
    variants = {peer: (peer, common) for peer in PEERS}
    for budget in args.budgets:
        for per in ("element", "triplet"):
            variants[f"adaq_lora, {budget:g} bits, EMAs per {per}"] = (
                "adaq_lora", {**common, "precision_budget_bits": budget, "importance_per": per})
    rows = {}
    for label, (method, overrides) in variants.items():
        rows[label] = peak(method, overrides, args.dataset, checkpointing)
        print(f"{label}: {rows[label]['peak_mb']:.1f} MiB", flush=True)
    lines = ["| adaq_lora | peak MiB | " + " | ".join(f"× {peer} (target ≤ {TARGETS[peer]:.2f})" for peer in PEERS) + " |",
             "|---" * (2 + len(PEERS)) + "|"]
    for label, row in rows.items():
        if label not in PEERS:
            ratios = [row["peak_mb"] / rows[peer]["peak_mb"] for peer in PEERS]
            lines.append(f"| {label.removeprefix('adaq_lora, ')} | {row['peak_mb']:.1f} | " + " | ".join(
                f"{ratio:.2f} {'met' if ratio <= TARGETS[peer] else 'missed'}" for ratio, peer in zip(ratios, PEERS)) + " |")
    lines.append("| peers | " + ", ".join(f"{peer} {rows[peer]['peak_mb']:.1f}" for peer in PEERS) + " | |" + " |" * 2)
    print("\n".join(lines))
    write_json_atomic(args.out, {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "dataset": args.dataset, "gradient_checkpointing": checkpointing,
                                 "rows": rows, "markdown": "\n".join(lines)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
