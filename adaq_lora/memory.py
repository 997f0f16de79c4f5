"""The peak memory of one training step, measured (the Memory/MB column of the paper's Tables 1-2; book chapter 8).

A step is what the training loop does (Sec. 3): forward on a batch with labels, the loss (+ γ Σ_k R(P_k, Q_k) of
Eq. 6 for the SVD methods), backward, gradient clipping to norm 0.1, one paged-AdamW step, the rank allocator's
importance update when one is given, and `zero_grad(set_to_none=True)`. Paged AdamW creates its state at its
first step, and a real run's peak includes that state, so one warm-up step runs first and the second is measured.
An optimizer we create ourselves has learning rate 0: measuring leaves the weights as they were (memory does not
depend on the learning rate). The `base` method trains nothing: its step is the forward pass and the loss.

How the peak is found and split (the profiler's memory timeline only sees what happens inside the profiled step):
1. Tensors that exist before the step are counted directly, by storage, once each: the 4-bit packed weights with
   their quantization constants (bitsandbytes' `Params4bit` does not require grad, so the profiler sees it as an
   input, not a parameter), the other weights, the adapters, the optimizer state, the buffers, the batch and the
   allocator's importance EMAs. Their bytes are the same at every instant of the step.
2. Every tensor created during the step is followed through `torch.profiler`'s memory timeline and sorted by the
   profiler's category (which it infers from the autograd data flow): GRADIENT → gradients; OPTIMIZER_STATE, and anything made inside the optimizer step
   (the update's temporaries) → optimizer state; ACTIVATION, AUTOGRAD_DETAIL (gradients of activations), TEMPORARY
   and INPUT (tensors the forward computes from the batch, such as the rotary tables) → activations; tensors of
   the allocator's update, and allocations the profiler cannot name (category None: workspaces such as a
   matmul's packing buffers) → other.
3. The peak is the instant where the sum of 2 is largest; the total is 1 plus that sum, and the breakdown is 1 plus
   the categories of 2 at that same instant, so the categories add up to the total.
On CUDA the total is `torch.cuda.max_memory_allocated` over the step, which counts every tensor on the device; what
it holds beyond the sum above (allocator rounding, library workspaces, tensors outside the model) is added to
"other".
"""
from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from itertools import groupby

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.profiler._memory_profiler import Action, Category, MemoryProfile, TensorKey

from .lora import AdapterLayer
from .rank_allocator import RankAllocator
from .svd_adapter import orthogonal_regularizer
from .train import make_optimizer

MB = 2**20  # the paper's MB: mebibytes, as nvidia-smi and torch.cuda report memory
CATEGORIES = ("quantized_weights", "full_precision_weights", "adapters", "gradients", "optimizer_state",
              "activations", "other")
OPTIMIZER_REGION = "adaq_lora.optimizer_update"  # clipping and the optimizer's step
IMPORTANCE_REGION = "adaq_lora.importance_update"  # the rank allocator's EMAs of Sec. 2.3
REGIONS = {OPTIMIZER_REGION: "optimizer_state", IMPORTANCE_REGION: "other"}  # what a region's new tensors count as
PROFILER_CATEGORIES = {  # the profiler's category of a tensor made by the forward or backward pass -> ours
    Category.GRADIENT: "gradients",
    Category.OPTIMIZER_STATE: "optimizer_state",
    Category.ACTIVATION: "activations",
    Category.AUTOGRAD_DETAIL: "activations",
    Category.TEMPORARY: "activations",
    Category.INPUT: "activations",
}


@dataclass
class MemoryBreakdown:
    quantized_weights_mb: float  # 4-bit packed weights with their absmax (and double-quantization) constants
    full_precision_weights_mb: float  # every other weight of the base: embeddings, norms, the output head, float linears
    adapters_mb: float  # the trainable adapter matrices (LoRA's A, B; the SVD adapters' P, λ, Q)
    gradients_mb: float  # gradients alive at the peak
    optimizer_state_mb: float  # AdamW's two moments, and the update's temporaries when the peak is in the step
    activations_mb: float  # tensors saved for backward, their gradients in flight, and the forward's temporaries
    other_mb: float  # buffers, the batch, the rank allocator's importance EMAs, unattributed allocations
    total_mb: float  # the peak: measured as one number, or the sum of the categories for a prediction

    @classmethod
    def from_bytes(cls, by_category: dict[str, int], total_bytes: int | None = None) -> "MemoryBreakdown":
        """From bytes per category (names as in CATEGORIES); the total is their sum unless given."""
        unknown = sorted(set(by_category) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown memory categories {unknown}; valid: {CATEGORIES}")
        total = sum(by_category.values()) if total_bytes is None else total_bytes
        return cls(**{f"{name}_mb": by_category.get(name, 0) / MB for name in CATEGORIES}, total_mb=total / MB)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def categories_mb(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_mb") for name in CATEGORIES}


def token_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of random token ids with labels and a full attention mask, shaped like the training loop's."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def quant_state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState: absmax, the code table, and with double quantization the offset
    and the second-level state."""
    tensors = [getattr(state, name) for name in ("absmax", "code", "offset") if torch.is_tensor(getattr(state, name, None))]
    nested = getattr(state, "state2", None)
    return tensors + (quant_state_tensors(nested) if nested is not None else [])


def static_tensors(model: nn.Module, optimizer=None, allocator: RankAllocator | None = None,
                   batch: dict | None = None) -> dict[int, tuple[str, int]]:
    """Storage pointer → (category, bytes) for every tensor that outlives a step, each storage once."""
    found: dict[int, tuple[str, int]] = {}

    def add(tensor: torch.Tensor, category: str) -> None:
        storage = tensor.untyped_storage()
        found.setdefault(storage.data_ptr(), (category, storage.nbytes()))

    for module in model.modules():
        for param in module.parameters(recurse=False):
            state = getattr(param, "quant_state", None)
            if state is not None:
                add(param, "quantized_weights")
                for tensor in quant_state_tensors(state):
                    add(tensor, "quantized_weights")
            else:
                add(param, "adapters" if isinstance(module, AdapterLayer) else "full_precision_weights")
        for buffer in module.buffers(recurse=False):
            add(buffer, "other")
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for value in state.values():
            if torch.is_tensor(value):
                add(value, "optimizer_state")
    if allocator is not None:
        for tensor in [*allocator.sensitivity.values(), *allocator.uncertainty.values()]:
            add(tensor, "other")
    for value in (batch or {}).values():
        if torch.is_tensor(value):
            add(value, "other")
    return found


def training_step(model: nn.Module, batch: dict, optimizer, orth_reg_weight: float, max_grad_norm: float,
                  allocator: RankAllocator | None) -> None:
    """One step of the training loop; named regions tell the profiler which tensors the update makes."""
    loss = model(**batch, use_cache=False).loss
    if orth_reg_weight:
        loss = loss + orth_reg_weight * orthogonal_regularizer(model)
    if optimizer is None:
        return
    loss.backward()
    with record_function(OPTIMIZER_REGION):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
    if allocator is not None:
        with record_function(IMPORTANCE_REGION):
            allocator.update_importance()
    optimizer.zero_grad(set_to_none=True)


def measure_training_memory(model: nn.Module, batch: dict, optimizer=None, *, orth_reg_weight: float = 0.0,
                            max_grad_norm: float = 0.1, allocator: RankAllocator | None = None) -> MemoryBreakdown:
    """The peak memory of one training step of `model` on `batch` (input_ids and labels), by category.

    `optimizer`: None for bitsandbytes' paged AdamW (the paper's) at learning rate 0 on the trainable parameters;
    with an optimizer of your own the model takes two real steps (the warm-up and the measured one).
    `allocator`: the rank allocator of an SVD method; its importance update runs in both steps (the first creates
    its EMAs, which count in "other").
    """
    if "input_ids" not in batch or "labels" not in batch:
        raise ValueError(f"the batch needs input_ids and labels, got keys {sorted(batch)}; see token_batch()")
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None and trainable:
        optimizer = make_optimizer(trainable, "paged_adamw", learning_rate=0.0)
    model.train()
    model.zero_grad(set_to_none=True)
    training_step(model, batch, optimizer, orth_reg_weight, max_grad_norm, allocator)  # warm-up: state exists
    gc.collect()
    static = static_tensors(model, optimizer, allocator, batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    # No Python stack: with it the event tree nests ops under Python calls, hiding the named regions, and the
    # categories used here come from the autograd data flow. (`prof._memory_profile()` insists on the stack.)
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=False) as prof:
        training_step(model, batch, optimizer, orth_reg_weight, max_grad_norm, allocator)
    dynamic_total, dynamic = timeline_peak(MemoryProfile(prof.profiler.kineto_results), device, static)
    by_category = dict.fromkeys(CATEGORIES, 0)
    for category, nbytes in [*static.values(), *dynamic.items()]:
        by_category[category] += nbytes
    total = sum(nbytes for _, nbytes in static.values()) + dynamic_total
    if device.type == "cuda":
        allocated_peak = torch.cuda.max_memory_allocated(device)
        by_category["other"] += max(0, allocated_peak - total)
        total = max(total, allocated_peak)
    return MemoryBreakdown.from_bytes(by_category, total)


def creation_regions(memory_profile) -> dict[TensorKey, str]:
    """The category (see REGIONS) of each tensor allocated inside a named region of the step."""
    regions = {}
    for event in memory_profile._op_tree.dfs():
        kind, fields = event.typed
        if kind != _EventType.Allocation or fields.alloc_size <= 0:
            continue
        region = event.parent
        while region is not None and region.name not in REGIONS:
            region = region.parent
        key = TensorKey.from_allocation(fields)
        if key is not None and region is not None:
            regions[key] = REGIONS[region.name]
    return regions


def timeline_peak(memory_profile, device: torch.device, static: dict[int, tuple[str, int]]) -> tuple[int, dict[str, int]]:
    """(bytes, bytes per category) at the instant the step's own tensors weigh most; `static` ones are skipped."""
    regions = creation_regions(memory_profile)
    categories = memory_profile._categories

    def category_of(key, version: int) -> str:
        if not isinstance(key, TensorKey):
            return "other"
        profiler_category = categories.get(key, version)
        if profiler_category is Category.GRADIENT:
            return "gradients"
        return regions.get(key) or PROFILER_CATEGORIES.get(profiler_category, "other")

    timeline = memory_profile.timeline
    created = {key for _, action, (key, _), _ in timeline if action == Action.CREATE}
    live = dict.fromkeys(CATEGORIES, 0)
    best = dict(live)
    for _, events in groupby(timeline, key=lambda event: event[0]):  # the events of one instant
        for _, action, (key, version), nbytes in events:
            if key.device != device or (isinstance(key, TensorKey) and key not in created and key.storage.ptr in static):
                continue  # another device, or a tensor counted directly (the same bytes at every instant)
            if action in (Action.PREEXISTING, Action.CREATE):
                live[category_of(key, version)] += nbytes
            elif action == Action.INCREMENT_VERSION:
                live[category_of(key, version)] -= nbytes
                live[category_of(key, version + 1)] += nbytes
            elif action == Action.DESTROY:
                live[category_of(key, version)] -= nbytes
        if sum(live.values()) > sum(best.values()):
            best = dict(live)
    return sum(best.values()), best
