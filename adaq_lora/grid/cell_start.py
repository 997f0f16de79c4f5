"""A cell's model as its run starts training, and the peak memory of its first step (Tables 1-2's Memory/MB).

`grid.experiment.execute` calls these before it trains. `scripts/remeasure_memory.py` calls them again on a
recorded cell, to measure its memory as the package measures it now without training again: memory is measured
before the first step, so it depends on the cell's settings and the package's code, not on what training learns.

- `load_cell_model`: the base model and tokenizer; `adaq_lora` with the model loaded in 4 bits plans its
  precision from the model's files (`quant/file_plan.py`).
- `start_cell`: that model with the method applied (`adaq_lora` on a full-precision load plans its precision from
  the first training examples, `quant/precision.py`) and gradient checkpointing set as the run trains.
- `measure_cell_memory`: the peak of one training step on the run's longest batch (`base`: the forward pass and
  the loss), by `measure.memory.measure_training_memory`.
Each takes the cell as a `grid.experiment.Experiment` (not imported here: that module imports this one).
"""
from __future__ import annotations

import torch

from ..data import collate_examples, pad_token_id, tokenize_records
from ..measure.memory import measure_training_memory
from ..models import load_model, model_folder
from ..quant.file_plan import plan_precision_from_files
from ..quant.precision import PrecisionPlan, calibration_batches
from ..training import set_gradient_checkpointing
from ..training.distributed import current_world
from ..tuners import Tuner, method_spec, prepare


def load_cell_model(experiment, progress: bool) -> tuple[torch.nn.Module, object, PrecisionPlan | None]:
    """The base model, the tokenizer, and the precision plan when it has to be made before loading: float on the CPU
    profiles (`prepare` quantizes and plans); with `quantize_on_load` the 4-bit methods load in NF4, adaq_lora's plan
    scored from the model's files first (`quant/file_plan.py`), its other precisions re-read from them by `prepare`."""
    p = experiment.profile
    dtype = p.base_dtype
    spec = method_spec(experiment.method)
    quantization_config, plan = None, None
    if p.quantize_on_load and spec.quantized:
        from transformers import BitsAndBytesConfig

        if spec.precision_plan and p.adapter.precision_budget_bits is not None:
            plan = plan_precision_from_files(model_folder(p.model), p.adapter.precision_budget_bits, p.device, progress,
                                             p.adapter.precision_floor)
        # every decoder matrix in NF4; `prepare` re-reads from the files those the plan stores otherwise, one at a time
        quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    device = f"cuda:{current_world().local_rank}" if p.device == "cuda" else None  # one GPU per process
    model, tokenizer = load_model(p.model, dtype=dtype, device=device, quantization_config=quantization_config)
    return model, tokenizer, plan


def start_cell(experiment, progress: bool) -> tuple[Tuner, object, list[dict]]:
    """(tuner, tokenizer, the tokenized training examples): the cell as its first step finds it. torch is seeded
    with the run's seed before the adapters are drawn."""
    model, tokenizer, plan = load_cell_model(experiment, progress)
    torch.manual_seed(experiment.seed)
    examples = tokenize_records(experiment.train_records, tokenizer, experiment.profile.train.max_length)  # once a run
    calibration = calibration_batches(examples, pad_token_id(tokenizer)) if plan is None else None
    tuner = prepare(model, experiment.method, experiment.adaq_config(), calibration=calibration, precision_plan=plan)
    set_gradient_checkpointing(tuner.model, experiment.profile.train.gradient_checkpointing)  # memory sees the run
    return tuner, tokenizer, examples


def measure_cell_memory(experiment, tuner: Tuner, examples: list[dict], pad_id: int) -> dict:
    """Peak memory of one training step on the run's longest batch (`base`: its forward pass and loss).

    Measured before training, where a run's peak is: SVD adapters are still at init_r with the allocator's
    importance EMAs beside them (rank compaction frees both later). The measurement's steps run at learning rate 0
    on an optimizer of their own, so the weights do not move; the tuner's state they change is put back afterwards.
    """
    p = experiment.profile
    longest = sorted(examples, key=lambda example: len(example["input_ids"]), reverse=True)[: p.train.batch_size]
    batch = collate_examples(longest, pad_id)
    breakdown = measure_training_memory(tuner, batch, max_grad_norm=p.train.max_grad_norm,
                                        optimizer_name=p.train.optimizer)
    shape = "×".join(str(size) for size in batch["input_ids"].shape)
    what = ("a forward pass and the loss (base trains nothing)" if not method_spec(experiment.method).trains
            else f"one training step (forward, backward, clipping, {p.train.optimizer})")
    return {"memory_mb": breakdown.total_mb, "memory_breakdown": breakdown.as_dict(),
            "memory_measured": f"{what} on the longest training batch, {shape} tokens"}
