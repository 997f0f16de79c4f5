"""Which start lets ADAQ-LoRA's SVD adapters learn as fast as QLoRA's B A (book chapter 3; AdaQConfig's start fields).

Short runs of the ci profile raised to `--steps` training examples (one epoch: one step each), scored on a held-in
split of the *training* data: the HELD_IN records of the 80% split that follow the cpu profile's 400 training records,
never seen in training by any run here or in the grid, and never the test split. Every variant is one
`grid.experiment.execute` with its overrides of the profile, in its own process with one torch thread, two at a time; each
finished run is added to `--out` (JSON, atomically) as soon as it lands, so a sweep cut off part way resumes by
running the same command again. Beside the run's own figures (LM loss per step, held-in Avg and accuracy, median step
time, peak memory of a step) each row traces how the adapters grow: every TRACE_EVERY steps, ‖ΔW‖_F of three
representative matrices (the first layer's q_proj, a middle layer's down_proj, the last layer's v_proj).

    HF_HUB_OFFLINE=1 python benchmarks/sweep_start.py [--datasets school_math alpaca_zh] [--seeds 0 1]
        [--variants …] [--steps 240] [--jobs 2] [--out benchmarks/sweep_start.json] [--table]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import load_records, split_records
from adaq_lora.display import start_sweep_table
from adaq_lora.grid.experiment import SPLIT_SEED, TEST_FRACTION, execute, plan_experiment
from adaq_lora.grid.jobs import run_side_by_side
from adaq_lora.tuners import adapter_layers

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # label: (method, profile overrides); the adaq_lora rows name every start field they use
    "qlora": ("qlora", {}),
    "lora": ("lora", {}),
    "gaussian, λ×1 (AdaLoRA's start)": ("adaq_lora", {"svd_init": "gaussian", "lambda_lr_ratio": 1.0}),
    "gaussian, λ×64": ("adaq_lora", {"svd_init": "gaussian", "lambda_lr_ratio": 64.0}),
    "orthonormal, λ×16": ("adaq_lora", {"svd_init": "orthonormal", "lambda_lr_ratio": 16.0}),
    "gradient, λ×1": ("adaq_lora", {"svd_init": "gradient", "lambda_lr_ratio": 1.0}),
    "gradient, λ×16": ("adaq_lora", {"svd_init": "gradient", "lambda_lr_ratio": 16.0}),
    "gradient, λ×64": ("adaq_lora", {"svd_init": "gradient", "lambda_lr_ratio": 64.0}),
    "gradient at the Gaussian's lengths, λ×64": ("adaq_lora", {"svd_init": "gradient_std", "lambda_lr_ratio": 64.0}),
    # the budget's falling phase over 30%-70% of the steps instead of 10%-80% (AdaLoRA's advice: about half)
    "gaussian, λ×64, budget falls 30-70%": ("adaq_lora", {"svd_init": "gaussian", "lambda_lr_ratio": 64.0,
                                                          "t_init_fraction": 0.3, "t_final_fraction": 0.3}),
    "gradient, λ×64, budget falls 30-70%": ("adaq_lora", {"svd_init": "gradient", "lambda_lr_ratio": 64.0,
                                                          "t_init_fraction": 0.3, "t_final_fraction": 0.3}),
}
HELD_IN_START, HELD_IN = 400, 24  # held-in records: training split [400, 424), after the cpu profile's 400
MAX_NEW_TOKENS = 128  # enough for a School_math answer's final 答 line
TRACE_EVERY = 10
TRACED = (("q_proj", 0), ("down_proj", 0.5), ("v_proj", 1))  # (leaf name, depth as a share of the layers)


def run_key(dataset: str, variant: str, seed: int) -> str:
    return f"{dataset} | {variant} | seed {seed}"


def traced_layers(tuner) -> dict[str, torch.nn.Module]:
    layers = adapter_layers(tuner.model)
    chosen = {}
    for leaf, depth in TRACED:
        names = [name for name in layers if name.endswith(f".{leaf}")]
        name = names[round(depth * (len(names) - 1))]
        chosen[name] = layers[name]
    return chosen


def run_one(dataset: str, variant: str, seed: int, steps: int, work: Path) -> dict:
    """One variant's run, scored on the held-in records; returns its row."""
    torch.set_num_threads(1)
    method, adapter = VARIANTS[variant]
    overrides = {"train_size": steps, "max_new_tokens": MAX_NEW_TOKENS, **adapter}
    experiment = plan_experiment(method, dataset, "ci", seed, overrides)
    training_split, _ = split_records(load_records(dataset), TEST_FRACTION, seed=SPLIT_SEED)
    experiment = replace(experiment, test_records=training_split[HELD_IN_START:HELD_IN_START + HELD_IN])
    trace: list[dict] = []

    def observe(tuner):
        layers = traced_layers(tuner)

        def after_step(step, outcome):
            if step == 1 or step % TRACE_EVERY == 0:
                with torch.no_grad():
                    norms = {name: layer.delta_weight().norm().item() for name, layer in layers.items()}
                trace.append({"step": step, "delta_w_norm": norms})
        return after_step

    result = execute(experiment, work, force=True, progress=False, observe=observe)
    losses = result["lm_losses"]
    quarter = max(1, len(losses) // 4)
    return {"dataset": dataset, "variant": variant, "seed": seed, "method": method, "adapter_overrides": adapter,
            "steps": len(losses), "held_in_records": [HELD_IN_START, HELD_IN_START + HELD_IN],
            "quarter_cross_entropy": [statistics.fmean(losses[i * quarter:(i + 1) * quarter]) for i in range(4)],
            "last_quarter_cross_entropy": statistics.fmean(losses[-quarter:]),
            "held_in_avg": result["avg"], "held_in_accuracy": result["accuracy"],
            "median_step_seconds": result["median_step_seconds"], "start_seconds": result["start_seconds"],
            "train_seconds": result["train_seconds"], "memory_mb": result["memory_mb"],
            "lm_losses": losses, "delta_w_trace": trace, "cpu": result["cpu"], "finished_at": result["finished_at"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["school_math", "alpaca_zh"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=240, help="training examples, one step each (default 240)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sweep_start.json")
    parser.add_argument("--table", action="store_true", help="print the table of what --out holds and stop")
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child: run one variant and print its row
        dataset, variant, seed = args.one
        row = run_one(dataset, variant, int(seed), args.steps, REPO / "runs" / "sweep-start" / f"{dataset}-{seed}-{variant}")
        print("ROW " + json.dumps(row, ensure_ascii=False))
        return 0
    rows = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    if args.table:
        print(start_sweep_table(rows))
        return 0
    todo = [(d, v, s) for s in args.seeds for d in args.datasets for v in args.variants if run_key(d, v, s) not in rows]

    def start(job: tuple, env: dict) -> subprocess.Popen:
        log = REPO / "runs" / "sweep-start" / f"{job[0]}-{job[2]}-{job[1]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--steps", str(args.steps), "--one", job[0], job[1], str(job[2])]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=log.open("w", encoding="utf-8"), text=True)

    def finished(job: tuple, process: subprocess.Popen) -> bool:
        found = [line[4:] for line in process.stdout.read().splitlines() if line.startswith("ROW ")]
        if process.returncode != 0 or not found:
            print(f"failed {run_key(*job)} (exit {process.returncode})", file=sys.stderr, flush=True)
            return False
        rows[run_key(*job)] = json.loads(found[-1])
        write_json_atomic(args.out, rows)
        print(f"done {run_key(*job)}: last-quarter CE {rows[run_key(*job)]['last_quarter_cross_entropy']:.3f}", flush=True)
        return True

    run_side_by_side(todo, start, finished, args.jobs)
    print(start_sweep_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
