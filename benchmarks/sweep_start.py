"""Which start lets ADAQ-LoRA's SVD adapters learn as fast as QLoRA's B A (book chapter 3; AdaQConfig's start fields).

Short runs scored on a held-in split of the training data (`held_in.py` says how). Beside the run's own figures
(LM loss per step, held-in Avg and accuracy, median step time, peak memory of a step) each row traces how the
adapters grow: every TRACE_EVERY steps, ‖ΔW‖_F of three representative matrices (the first layer's q_proj, a middle
layer's down_proj, the last layer's v_proj).

    HF_HUB_OFFLINE=1 python benchmarks/sweep_start.py [--datasets school_math alpaca_zh] [--seeds 0 1]
        [--variants …] [--steps 240] [--jobs 2] [--out benchmarks/sweep_start.json] [--table]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from adaq_lora.display import start_sweep_table
from adaq_lora.tuners import adapter_layers
from held_in import REPO, held_in_run, sweep_main

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
TRACE_EVERY = 10
TRACED = (("q_proj", 0), ("down_proj", 0.5), ("v_proj", 1))  # (leaf name, depth as a share of the layers)


def traced_layers(tuner) -> dict[str, torch.nn.Module]:
    layers = adapter_layers(tuner.model)
    chosen = {}
    for leaf, depth in TRACED:
        names = [name for name in layers if name.endswith(f".{leaf}")]
        name = names[round(depth * (len(names) - 1))]
        chosen[name] = layers[name]
    return chosen


def run_one(dataset: str, variant: str, seed: int, steps: int, work: Path) -> dict:
    """One variant's run, scored on the held-in records, with its ‖ΔW‖ trace; returns its row."""
    method, adapter = VARIANTS[variant]
    trace: list[dict] = []

    def observe(tuner):
        layers = traced_layers(tuner)

        def after_step(step, outcome):
            if step == 1 or step % TRACE_EVERY == 0:
                with torch.no_grad():
                    norms = {name: layer.delta_weight().norm().item() for name, layer in layers.items()}
                trace.append({"step": step, "delta_w_norm": norms})
        return after_step

    _, row = held_in_run(method, dataset, seed, steps, adapter, work, observe)
    return {"variant": variant, **row, "delta_w_trace": trace}


if __name__ == "__main__":
    sys.exit(sweep_main(__file__, list(VARIANTS), REPO / "benchmarks" / "sweep_start.json", run_one, start_sweep_table))
