"""Step time and peak training memory of our methods beside PEFT's (book chapter 7; paper Sec. 3's memory column).

Our `lora`, `qlora` and `adaq_lora` (each with its defaults: the fused loss, adaq_lora's precision plan and 16-bit
importance EMAs), our `qlora` with transformers' loss (so the fused loss's saving is told apart from the method's),
and the PEFT peers `peft-lora`, `peft-qlora` and `peft-adalora` (as their users run them) are prepared on copies of
the same base model (the default SmolLM2-135M-Instruct) and trained on the same School_math stand-in examples, each
cut to exactly SEQUENCE_LENGTH tokens, batch 1, through the training loop's own step
(`adaq_lora.training.training_step`: paged AdamW, clipping 0.1, the orthogonality term and the rank allocator for
the SVD methods). All seven live in one process and take their steps in turn, round-robin, so that a slow spell of a
shared machine falls on every method alike; the first `--warmup` rounds are not timed and the median of the timed
steps is reported. Peak memory comes from `adaq_lora.measure.memory.measure_training_memory`, one method at a time,
with gradient checkpointing off and on (PEFT's AdaLoRA allocator counted, as ours); MEMORY_TARGETS says which
setting each target of `adaq_lora`'s peak holds for. The budget schedule is laid out over a long run (t_init = 0), so
every timed step of the SVD methods re-scores and re-masks its triplets, as in the middle of training.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_methods.py [--steps 8] [--warmup 2] [--gradient-checkpointing]
                                                                  [--threads N] [--out PATH]

prints a markdown table of the figures with the ratios ours / peer and writes them to `--out` (JSON, atomically).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from adaq_lora import AdaQConfig, load_model
from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import build_example, collate_examples, load_records, pad_token_id
from adaq_lora.grid.experiment import package_versions
from adaq_lora.measure.memory import measure_training_memory
from adaq_lora.training import make_optimizer, set_gradient_checkpointing, start_from_gradient, training_step
from adaq_lora.tuners import Tuner, prepare

CONTESTANTS = {  # label: (method, changes to AdaQConfig); ours run with their defaults, the fused loss included
    "adaq_lora": ("adaq_lora", {}),
    "adaq_lora, AdaLoRA's start": ("adaq_lora", {"svd_init": "gaussian", "lambda_lr_ratio": 1.0}),  # before 2026-12
    "qlora": ("qlora", {}),
    "qlora, transformers' loss": ("qlora", {"fused_loss": False}),  # attributes the fused loss's saving
    "lora": ("lora", {}),
    "peft-adalora": ("peft-adalora", {}),
    "peft-qlora": ("peft-qlora", {}),
    "peft-lora": ("peft-lora", {}),
}
PAIRS = (("adaq_lora", "peft-adalora"), ("qlora", "peft-qlora"), ("qlora, transformers' loss", "peft-qlora"),
         ("lora", "peft-lora"), ("adaq_lora", "adaq_lora, AdaLoRA's start"))
TARGETS = {("adaq_lora", "peft-adalora"): 1.0, ("qlora", "peft-qlora"): 1.0,  # ours at most this × the other's step
           ("adaq_lora", "adaq_lora, AdaLoRA's start"): 1.03}  # the new start costs at most 3% (time, and memory)
MEMORY_TARGETS = (  # (peer, gradient checkpointing, adaq_lora's peak at most × the peer's)
    ("peft-qlora", True, 0.55), ("peft-lora", True, 0.25), ("qlora", True, 0.80), ("peft-qlora", False, 0.70))
SEQUENCE_LENGTH = 128
DATASET = "school_math"
MAX_GRAD_NORM = 0.1
BUDGET_STEPS = 10_000  # a run long enough that the benchmark's steps all fall where the budget is still moving


@dataclass
class Contestant:
    label: str  # a key of CONTESTANTS
    tuner: Tuner  # the prepared model
    optimizer: torch.optim.Optimizer  # paged AdamW over its trainable parameters
    step_seconds: list[float] = field(default_factory=list)  # timed steps only


def fixed_length_batches(tokenizer, count: int) -> list[dict[str, torch.Tensor]]:
    """`count` single-example batches of the stand-in, each exactly SEQUENCE_LENGTH real tokens long."""
    pad_id = pad_token_id(tokenizer)
    batches = []
    for record in load_records(DATASET):
        try:
            example = build_example(record, tokenizer, SEQUENCE_LENGTH)
        except ValueError:  # a prompt of SEQUENCE_LENGTH tokens or more leaves no answer to learn: not a training batch
            continue
        if len(example["input_ids"]) == SEQUENCE_LENGTH:
            batches.append(collate_examples([example], pad_id))
        if len(batches) == count:
            return batches
    raise ValueError(f"{DATASET} has fewer than {count} examples of {SEQUENCE_LENGTH} tokens or more")


def contestant(label: str, base_model: torch.nn.Module, gradient_checkpointing: bool,
               calibration: list[dict]) -> Contestant:
    method, changes = CONTESTANTS[label]
    model = copy.deepcopy(base_model)
    torch.manual_seed(0)
    config = AdaQConfig(total_steps=BUDGET_STEPS, t_init=0, t_final=0, **changes)
    tuner = prepare(model, method, config, calibration=calibration)  # only adaq_lora's precision plan reads it
    set_gradient_checkpointing(tuner.model, gradient_checkpointing)
    tuner.model.config.use_cache = False
    tuner.model.train()
    return Contestant(label, tuner, make_optimizer(tuner.parameter_groups(), "paged_adamw", config.learning_rate))


def timed_step(player: Contestant, batch: dict[str, torch.Tensor]) -> float:
    """One optimizer step as `adaq_lora.training.train` takes it; returns its wall time."""
    began = time.perf_counter()
    training_step(player.tuner, [batch], player.optimizer, MAX_GRAD_NORM)
    return time.perf_counter() - began


def measure(steps: int, warmup: int, gradient_checkpointing: bool) -> dict:
    model, tokenizer = load_model()
    batches = fixed_length_batches(tokenizer, warmup + steps)
    players = [contestant(label, model, gradient_checkpointing, batches) for label in CONTESTANTS]
    starter = players[list(CONTESTANTS).index("adaq_lora")]  # its start, as train() takes it before the first step
    began = time.perf_counter()
    start_from_gradient(starter.tuner, batches[:starter.tuner.config.gradient_start_batches])
    start_seconds = time.perf_counter() - began
    for round_index, batch in enumerate(batches):
        seconds = {player.label: timed_step(player, batch) for player in players}
        if round_index >= warmup:
            for player in players:
                player.step_seconds.append(seconds[player.label])
        print(f"round {round_index + 1}/{len(batches)}" + (" (warm-up)" if round_index < warmup else "") + ": " +
              ", ".join(f"{method} {value:.3f}s" for method, value in seconds.items()), file=sys.stderr, flush=True)
    figures = {"adaq_lora's gradient start": {"seconds": start_seconds,
                                             "batches": starter.tuner.config.gradient_start_batches}}
    for player in players:
        figures[player.label] = {"median_step_seconds": statistics.median(player.step_seconds),
                                  "step_seconds": player.step_seconds}
        for checkpointing in (False, True):
            set_gradient_checkpointing(player.tuner.model, checkpointing)
            breakdown = measure_training_memory(player.tuner, batches[0], max_grad_norm=MAX_GRAD_NORM)
            suffix = "_checkpointing" if checkpointing else ""
            figures[player.label][f"peak_memory_mb{suffix}"] = breakdown.total_mb
            figures[player.label][f"memory_breakdown{suffix}"] = breakdown.as_dict()
    return figures


def pair_rows(figures: dict) -> list[dict]:
    rows = []
    for ours, peer in PAIRS:
        time_ratio = figures[ours]["median_step_seconds"] / figures[peer]["median_step_seconds"]
        rows.append({"ours": ours, "peer": peer, "time_ratio": time_ratio,
                     **{f"memory_ratio{suffix}": figures[ours][f"peak_memory_mb{suffix}"] /
                        figures[peer][f"peak_memory_mb{suffix}"] for suffix in ("", "_checkpointing")},
                     "target": TARGETS.get((ours, peer)),
                     "met": time_ratio <= TARGETS[ours, peer] if (ours, peer) in TARGETS else None})
    return rows


def memory_target_rows(figures: dict) -> list[dict]:
    """adaq_lora's peak against each contestant of MEMORY_TARGETS, with checkpointing on or off as it says."""
    rows = []
    for peer, checkpointing, target in MEMORY_TARGETS:
        key = "peak_memory_mb_checkpointing" if checkpointing else "peak_memory_mb"
        ours, theirs = figures["adaq_lora"][key], figures[peer][key]
        rows.append({"peer": peer, "gradient_checkpointing": checkpointing, "ours_mb": ours, "peer_mb": theirs,
                     "ratio": ours / theirs, "target": target, "met": ours / theirs <= target})
    return rows


def markdown(figures: dict, rows: list[dict], memory_rows: list[dict]) -> str:
    lines = ["| ours | peer | ours s/step | peer s/step | time ours/peer | target | peak MiB ours / peer "
             "| memory ours/peer | with checkpointing: peak MiB ours / peer | memory ours/peer |", "|---" * 10 + "|"]
    for row in rows:
        ours, peer = figures[row["ours"]], figures[row["peer"]]
        target = "—" if row["target"] is None else f"≤ {row['target']:.2f} {'met' if row['met'] else 'MISSED'}"
        lines.append(f"| {row['ours']} | {row['peer']} | {ours['median_step_seconds']:.3f} | "
                     f"{peer['median_step_seconds']:.3f} | {row['time_ratio']:.2f} | {target} | "
                     f"{ours['peak_memory_mb']:.0f} / {peer['peak_memory_mb']:.0f} | {row['memory_ratio']:.2f} | "
                     f"{ours['peak_memory_mb_checkpointing']:.0f} / {peer['peak_memory_mb_checkpointing']:.0f} | "
                     f"{row['memory_ratio_checkpointing']:.2f} |")
    lines += ["", "| adaq_lora peak against | ours MiB | peer MiB | ratio | target |", "|---|---|---|---|---|"]
    lines += [f"| {row['peer']} (checkpointing {'on' if row['gradient_checkpointing'] else 'off'}) | "
              f"{row['ours_mb']:.0f} | {row['peer_mb']:.0f} | {row['ratio']:.2f} | "
              f"≤ {row['target']:.2f} {'met' if row['met'] else 'MISSED'} |" for row in memory_rows]
    start = figures["adaq_lora's gradient start"]
    lines += ["", f"adaq_lora's gradient start, once before the first step: {start['seconds']:.1f} s over "
                  f"{start['batches']} micro-batches, {start['seconds'] / figures['adaq_lora']['median_step_seconds']:.1f} "
                  "median steps"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first (default 2)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("bench_methods.json")), help="JSON output")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    figures = measure(args.steps, args.warmup, args.gradient_checkpointing)
    rows, memory_rows = pair_rows(figures), memory_target_rows(figures)
    table = markdown(figures, rows, memory_rows)
    print(table)
    write_json_atomic(Path(args.out), {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_methods.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"steps": args.steps, "warmup": args.warmup, "gradient_checkpointing": args.gradient_checkpointing,
                     "sequence_length": SEQUENCE_LENGTH, "batch_size": 1, "dataset": DATASET, "model": "default"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads()},
        "versions": package_versions(), "methods": figures, "pairs": rows,
        "memory_targets": memory_rows, "markdown": table,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
