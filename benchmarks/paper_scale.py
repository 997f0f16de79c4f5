"""One training step of ChatGLM2-6B's architecture on a CPU, every method: the paper's Memory/MB column at its scale
(Tables 1-2; book chapter 8), with the step's time.

Memory does not depend on the weights' values, so the model is ChatGLM2-6B's published configuration
(data/chatglm2-6b.json) run as transformers' GLM (`adaq_lora.chatglm.glm_config`), built straight in bfloat16 with
random weights; `prepare` then quantizes it one matrix at a time, so it is never held twice. Each method gets the
paper profile's adapter settings, and one step at 512 tokens, batch 1 (every token an answer token: the loss's
largest case), is measured as a run measures its own: forward, backward, clipping and paged AdamW, the profiler's
memory timeline (`adaq_lora.measure.memory.measure_training_memory`), gradient checkpointing off and on. Then
`--timed` steps are timed without the profiler.

The 28 layers at full width would take the CPU minutes a step, so each method is measured at full width at
`--depths` (1, 2, 3 layers) and the 28-layer figure is the line through the two deepest: exact for weights,
adapters, optimizer state and per-layer activations as long as one candidate peak wins at every depth. The
shallowest depth checks that: each row's `linear_check` is the line's error there. Every row also carries the
predictor's figure for 28 layers (`measure/memory_model.py`, device "cpu") and the paper's Memory/MB where it has one.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/paper_scale.py [--depths 1 2 3] [--timed 2]
        [--variants …] [--out benchmarks/paper_scale.json]

Resumable: every (variant, depth) measured is written at once and skipped when the script runs again. With one
thread on a 2-core AVX512-BF16 CPU the whole grid took about an hour (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adaq_lora.atomic import write_json_atomic
from adaq_lora.chatglm import glm_config
from adaq_lora.measure.memory import measure_training_memory
from adaq_lora.measure.memory_model import predict_training_memory
from adaq_lora.measure.model_shape import load_chatglm2_6b_config
from adaq_lora.paper import PAPER_ROWS, published_memory_mb
from adaq_lora.profiles import load_profile
from adaq_lora.quant.precision import plan_precision
from adaq_lora.training import make_optimizer, set_gradient_checkpointing, training_step
from adaq_lora.tuners import prepare
from adaq_lora.tuners.registry import method_spec

GLM2 = load_chatglm2_6b_config()
SMOKE = dict(hidden_size=128, ffn_hidden_size=256, num_attention_heads=4, kv_channels=32, multi_query_group_num=2,
             padded_vocab_size=512)  # --smoke: the same code at toy width, for the tests
SEQ_LEN = 512  # tokens per step: the paper profile's examples (the paper gives none)
LINEAR_TOLERANCE = 0.05  # a row whose shallowest depth is further off its line is marked approximate
VARIANTS = {  # label → (method, overrides of the paper profile's adapter settings)
    "base": ("base", {}),
    "lora": ("lora", {}),
    "qlora": ("qlora", {}),
    "adaq_lora": ("adaq_lora", {}),  # the paper profile: 4.5 bits, NF4 floor
    "adaq_lora, 3.5 bits": ("adaq_lora", {"precision_budget_bits": 3.5, "precision_floor": "nf2"}),  # ci/cpu's
    "adalora": ("adalora", {}),
    "peft-lora": ("peft-lora", {}),
    "peft-qlora": ("peft-qlora", {}),
    "peft-adalora": ("peft-adalora", {}),
}


def adapter_config(overrides: dict):
    return replace(load_profile("paper").adapter, total_steps=1000, t_init=100, t_final=200, **overrides)


def token_batch(vocab: int, step: int) -> dict:
    ids = torch.randint(3, vocab, (1, SEQ_LEN), generator=torch.Generator().manual_seed(step))
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def measure(glm: dict, label: str, depth: int, timed: int) -> list[dict]:
    """Both checkpointing settings of `label` at `depth` layers: the profiled peak and the timed steps."""
    from transformers import GlmForCausalLM

    method, overrides = VARIANTS[label]
    config = adapter_config(overrides)
    torch.manual_seed(0)
    model = GlmForCausalLM._from_config(glm_config(glm | {"num_layers": depth}), dtype=torch.bfloat16)
    began = time.perf_counter()
    plan = None
    if method_spec(method).precision_plan:  # timed apart: what a ChatGLM2-6B run waits for before its first step
        plan = plan_precision(model, config.precision_budget_bits, None, config.precision_floor)
    plan_seconds = time.perf_counter() - began
    tuner = prepare(model, method, config, precision_plan=plan)
    prepare_seconds = time.perf_counter() - began
    max_grad_norm = load_profile("paper").train.max_grad_norm
    trainable = [p for p in tuner.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, "paged_adamw", config.learning_rate) if trainable else None
    rows = []
    for checkpointing in (False, True) if trainable else (False,):  # the untrained model has nothing to recompute
        set_gradient_checkpointing(tuner.model, checkpointing)
        breakdown = measure_training_memory(tuner, token_batch(glm["padded_vocab_size"], 0),
                                            max_grad_norm=max_grad_norm)
        seconds = []
        for step in range(timed):
            data = token_batch(glm["padded_vocab_size"], step + 1)
            started = time.perf_counter()
            if optimizer is None:
                with torch.no_grad():
                    tuner.model(**data, use_cache=False)
            else:
                training_step(tuner, [data], optimizer, max_grad_norm, compact=False)
            seconds.append(time.perf_counter() - started)
        rows.append({"variant": label, "method": method, "depth": depth, "gradient_checkpointing": checkpointing,
                     "measured_mib": breakdown.total_mb, "breakdown": breakdown.as_dict(),
                     "step_seconds": statistics.median(seconds), "prepare_seconds": prepare_seconds,
                     "plan_seconds": plan_seconds if plan is not None else None,
                     "predicted_mib": predicted_mib(glm, label, depth, checkpointing)})
    return rows


def predicted_mib(glm: dict, label: str, depth: int, checkpointing: bool) -> float | None:
    method, overrides = VARIANTS[label]
    if method_spec(method).peer:
        return None  # the predictor models our methods; PEFT's are measured only
    return predict_training_memory(glm | {"num_layers": depth}, method, adapter_config(overrides), SEQ_LEN,
                                   weight_dtype=torch.bfloat16, device="cpu",
                                   gradient_checkpointing=checkpointing).total_mb


def full_depth_row(glm: dict, measured: list[dict]) -> dict:
    """The 28-layer row of one variant and setting from its depths: the line through the two deepest, checked at
    the shallowest."""
    by_depth = sorted(measured, key=lambda row: row["depth"])
    low, high = by_depth[-2], by_depth[-1]
    layers = glm["num_layers"]

    def at(key, depth, source=None):
        value = (lambda row: row[key]) if source is None else source
        slope = (value(high) - value(low)) / (high["depth"] - low["depth"])
        return value(high) + slope * (depth - high["depth"])

    check = None
    if len(by_depth) > 2:
        first = by_depth[0]
        check = {"depth": first["depth"], "measured_mib": first["measured_mib"],
                 "line_mib": at("measured_mib", first["depth"]),
                 "relative_error": at("measured_mib", first["depth"]) / first["measured_mib"] - 1}
    method, variant = high["method"], high["variant"]
    how = f"extrapolated to {layers} layers from depths {low['depth']} and {high['depth']}"
    if check is not None and abs(check["relative_error"]) > LINEAR_TOLERANCE:
        how += (f"; not linear: depth {check['depth']} is {check['relative_error']:+.0%} off the line (a precision plan's "
                "mix of precisions changes with depth), so this row is approximate")
    paper = ({"table_1": published_memory_mb(1, method), "table_2": published_memory_mb(2, method)}
             if method in PAPER_ROWS[1] and variant == method else None)
    return {"variant": variant, "method": method, "gradient_checkpointing": high["gradient_checkpointing"],
            "measured_mib": at("measured_mib", layers),
            "how": how,
            "linear_check": check,
            "breakdown": {name: at(None, layers, lambda row, n=name: row["breakdown"][n]) for name in high["breakdown"]},
            "predicted_mib": predicted_mib(glm, variant, layers, high["gradient_checkpointing"]),
            "step_seconds": at("step_seconds", layers), "paper_mb": paper,
            "prepare_seconds": at("prepare_seconds", layers),
            "plan_seconds": at("plan_seconds", layers) if high.get("plan_seconds") is not None else None}


def markdown(rows: list[dict]) -> str:
    lines = ["| method | checkpointing | measured MiB | predicted MiB | predicted ÷ measured | line's error at the "
             "shallowest depth | step s | paper MB (Table 1 / 2) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        predicted, check, paper = row["predicted_mib"], row["linear_check"], row["paper_mb"]
        cells = [row["variant"], "on" if row["gradient_checkpointing"] else "off", f"{row['measured_mib']:,.0f}",
                 "—" if predicted is None else f"{predicted:,.0f}",
                 "—" if predicted is None else f"{predicted / row['measured_mib']:.2f}",
                 "—" if check is None else f"{check['relative_error']:+.1%}", f"{row['step_seconds']:.1f}",
                 "—" if paper is None else f"{paper['table_1']:,} / {paper['table_2']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3], help="layers measured (at least two)")
    parser.add_argument("--timed", type=int, default=2, help="steps timed after the profiled one (default 2)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("paper_scale.json"))
    parser.add_argument("--smoke", action="store_true", help="toy width: checks the script, measures nothing real")
    args = parser.parse_args(argv)
    if len(set(args.depths)) < 2:
        parser.error(f"--depths needs two depths or more to draw a line through, got {args.depths}")
    torch.set_num_threads(args.threads)
    glm = GLM2 | SMOKE if args.smoke else GLM2
    report = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"measurements": []}
    done = {(row["variant"], row["depth"]) for row in report["measurements"]}
    todo = [(label, depth) for label in args.variants for depth in sorted(set(args.depths)) if (label, depth) not in done]
    for label, depth in tqdm(todo, desc="variants × depths"):
        rows = measure(glm, label, depth, args.timed)
        report["measurements"] += rows
        tqdm.write(f"{label}, {depth} layer(s): " + ", ".join(
            f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'} {r['measured_mib']:,.0f} MiB "
            f"{r['step_seconds']:.1f} s" for r in rows))
        write_json_atomic(args.out, report)  # after every build: a run cut short keeps what it measured
    groups = {}
    for row in report["measurements"]:
        groups.setdefault((row["variant"], row["gradient_checkpointing"]), []).append(row)
    report["rows"] = [full_depth_row(glm, rows) for rows in groups.values() if len({r["depth"] for r in rows}) > 1]
    report.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), seq_len=SEQ_LEN, threads=args.threads,
                  cpu=cpu_name(), markdown=markdown(report["rows"]))
    write_json_atomic(args.out, report)
    print(report["markdown"])
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
