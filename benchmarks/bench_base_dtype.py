"""Does a bfloat16 base train fast enough on this CPU? The cpu profile's choice of storage (results/README.md).

The cpu profile stores every method's frozen weights in bfloat16, so that QLoRA's embedding and head sit at the same
16 bits as the precision plan's best tier. That is only worth it where bfloat16 matrix products are fast (CPUs with
AVX512-BF16 or AMX); elsewhere they can be several times slower than float32. This measures the median time of a
training step (forward, backward, clipping, paged AdamW) of LoRA and QLoRA on the default model at both dtypes, on
School_math stand-in examples padded to the profile's longest, in one process, the methods one after another.

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
from adaq_lora.training import make_optimizer, training_step
from adaq_lora.tuners import prepare

METHODS = ("lora", "qlora")
DTYPES = ("float32", "bfloat16")


def median_step_seconds(method: str, dtype: str, steps: int) -> float:
    """Median wall time of `steps` training steps after one warm-up step."""
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
        times = {dtype: median_step_seconds(method, dtype, args.steps) for dtype in DTYPES}
        rows.append({"method": method, **{f"{dtype}_s": t for dtype, t in times.items()},
                     "bfloat16_over_float32": times["bfloat16"] / times["float32"]})
        print(f"{method}: float32 {times['float32']:.2f} s, bfloat16 {times['bfloat16']:.2f} s per step "
              f"({rows[-1]['bfloat16_over_float32']:.2f}x) on a {capability} CPU, {torch.get_num_threads()} thread(s)")
    write_json_atomic(args.out, {"rows": rows, "cpu_capability": capability, "threads": torch.get_num_threads(),
                                 "steps": args.steps, "versions": package_versions(),
                                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


if __name__ == "__main__":
    main()
