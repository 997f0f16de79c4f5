"""The precision plan of a model loaded in 4 bits: scored from its files, one matrix at a time (book chapter 6;
the paper profile's path, Sec. 3).

A 6B model such as ChatGLM2-6B is loaded straight into NF4 by transformers' bitsandbytes loader
(`quantize_on_load`): its 12 GB of 16-bit weights never have to fit on the GPU, but then the model in memory holds
only NF4 codes, from which nothing can say what NF4 cost each matrix. So the plan is made before loading, from the
16-bit weights in the model's safetensors files, read one tensor at a time: the same scores and the same greedy
choice as `precision.plan_precision`, over every matrix of the decoder, the embedding and the output head.

The Fisher weighting needs the 16-bit model's gradients, which this path exists to avoid holding, so the plan is
data-free: F ≡ 1, the plain squared error (the plan says so: `calibrated=False`). transformers then loads every
decoder matrix in NF4, as QLoRA stores them, and only the output head and the embedding in 16 bits; the plan
remembers its folder (`PrecisionPlan.source`), and `apply_precision_plan` replaces each matrix planned at another
precision (NF3, NF2, 8 bits, bfloat16) by reading its 16-bit weights from the files again (`weight_files.matrix_from_files`), one
matrix at a time: the whole 16-bit model is never in memory, whatever the plan says.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .precision import PrecisionPlan, choose_precisions, score_matrix
from .quantize import OUTPUT_HEADS
from .weight_files import weight_files


def plan_precision_from_files(folder: str | Path, budget_bits: float, device: str | torch.device = "cpu",
                              progress: bool = True, floor: str = "nf2") -> PrecisionPlan:
    """The data-free plan of the model in `folder` (config.json and safetensors shards) within `budget_bits`.

    Every 2-D floating-point `*.weight` tensor is a matrix of a linear layer or an embedding; norms and biases are
    1-D and stay as they are. `device` scores there (a GPU is much faster for a 6B model).
    """
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    scores, shapes = {}, {}
    for file in tqdm(weight_files(folder), desc="scoring precisions", disable=not progress):
        with safe_open(file, framework="pt", device=str(device)) as tensors:
            for key in tensors.keys():
                sliced = tensors.get_slice(key)
                if not key.endswith(".weight") or len(sliced.get_shape()) != 2 or "F" not in sliced.get_dtype():
                    continue
                weight = tensors.get_tensor(key)
                name = key.removesuffix(".weight")
                scores[name], shapes[name] = score_matrix(weight, floor=floor), tuple(weight.shape)
                del weight  # one matrix in memory at a time
    tied = {}
    if config.get("tie_word_embeddings") and not set(OUTPUT_HEADS) & set(scores):  # the head has no weight of its own
        embedding = next(name for name in scores if name.endswith("embed_tokens"))
        tied = {embedding: list(OUTPUT_HEADS)}
    plan = choose_precisions(scores, shapes, budget_bits, tied, calibrated=False, floor=floor)
    plan.source = str(folder)
    return plan
