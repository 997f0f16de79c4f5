"""Does a bfloat16 base train fast enough on this CPU? The cpu profile's choice of storage (results/README.md).

The cpu profile stores every method's frozen weights in bfloat16, so that QLoRA's embedding and head sit at the same
16 bits as the precision plan's best tier. That is only worth it where bfloat16 matrix products are fast (CPUs with
AVX512-BF16 or AMX); elsewhere they can be several times slower than float32. This measures the median time of a
training step (forward, backward, clipping, paged AdamW) of LoRA and QLoRA on the default model in float32, in
bfloat16 with torch's own kernels, and in bfloat16 with its products taken in float32 (`training/float32_products.py`,
what a run does on a CPU without bfloat16 units), on School_math stand-in examples, in one process, one after another.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_base_dtype.py [--steps 8] [--out PATH]
"""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from adaq_lora import AdaQConfig, load_model
from adaq_lora.atomic import write_json_atomic
from adaq_lora.data import collate_examples, load_records, pad_token_id, tokenize_records
from adaq_lora.grid.experiment import package_versions
from adaq_lora.profiles import load_profile
from adaq_lora.training import float32_products, make_optimizer, training_step
from adaq_lora.tuners import prepare

METHODS = ("lora", "qlora")
ARMS = {"float32": ("float32", False), "bfloat16": ("bfloat16", False),  # arm → (storage, float32 products)
        "bfloat16_float32_products": ("bfloat16", True)}


def median_step_seconds(method: str, arm: str, steps: int) -> float:
    """Median wall time of `steps` training steps after one warm-up step."""
    dtype, in_float32 = ARMS[arm]
    model, tokenizer = load_model(dtype=getattr(torch, dtype))
    tuner = prepare(model, method, AdaQConfig(compute_dtype=dtype))
    max_length = load_profile("cpu").train.max_length
    examples = tokenize_records(load_records("school_math")[: steps + 1], tokenizer, max_length)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], "paged_adamw", 3e-4)
    model.train()
    seconds = []
    for example in examples:
        batch = collate_examples([example], pad_token_id(tokenizer))
        began = time.perf_counter()
        with float32_products(in_float32):
            training_step(tuner, [batch], optimizer, max_grad_norm=0.1)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    capability = torch.backends.cpu.get_cpu_capability()
    rows = []
    for method in METHODS:
        times = {arm: median_step_seconds(method, arm, args.steps) for arm in ARMS}
        rows.append({"method": method, **{f"{arm}_s": t for arm, t in times.items()},
                     **{f"{arm}_over_float32": times[arm] / times["float32"] for arm in list(ARMS)[1:]}})
        print(f"{method} on a {capability} CPU, {torch.get_num_threads()} thread(s), s per step: "
              + ", ".join(f"{arm} {t:.2f} ({t / times['float32']:.2f}x)" for arm, t in times.items()))
    write_json_atomic(args.out, {"rows": rows, "cpu_capability": capability, "threads": torch.get_num_threads(),
                                 "steps": args.steps, "versions": package_versions(),
                                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


if __name__ == "__main__":
    main()
