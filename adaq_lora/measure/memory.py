"""The peak memory of one training step, measured (the Memory/MB column of the paper's Tables 1-2; book chapter 8).

A step is the training loop's own (`training.step.training_step`, Sec. 3): forward on a batch with labels, the loss
(+ γ Σ_k R(P_k, Q_k) of Eq. 6 for the SVD methods), backward, gradient clipping to norm 0.1, one paged-AdamW step,
the method's after-step hook (the rank allocator, without compaction) and `zero_grad(set_to_none=True)`. Paged AdamW creates its state at its
first step, and a real run's peak includes that state, so one warm-up step runs first and the second is measured.
An optimizer we create ourselves has learning rate 0: measuring leaves the weights as they were (memory does not
depend on the learning rate). The `base` method trains nothing: its step is the forward pass and the loss.

How the peak is found and split:
1. Tensors that exist before the step are counted directly, by storage, once each: the 4-bit packed weights with
   their quantization constants, the other weights, the adapters, the optimizer state, the buffers, the batch and
   the allocator's importance EMAs. Their bytes are the same at every instant of the step. (Counting them from the
   model, not from the profiler, also covers bitsandbytes' `Params4bit`, which the profiler's own categories file
   as an input, not a parameter, because it does not require grad.)
2. Every allocation made during the step is followed through `torch.profiler`'s allocation records
   (`profile_memory=True`) from its allocation to its free, and filed: a tensor autograd stores as a `.grad`
   (the profiler's own test, on its AccumulateGrad events) → gradients; anything allocated inside the optimizer
   step (the update's temporaries) → optimizer state; inside the allocator's update → other; memory no tensor
   owns (a library's workspace) → other; everything else the forward and backward passes make — saved tensors,
   the gradients of activations, temporaries — → activations.
3. The peak is the instant where the sum of 2 is largest; the total is 1 plus that sum, and the breakdown is 1 plus
   the categories of 2 at that same instant, so the categories add up to the total.
The profiler's `_memory_profile()` timeline would give the same numbers (checked on every method) but builds a
data-flow graph of the whole step first, which takes four times as long; its finer categories (ACTIVATION,
TEMPORARY, AUTOGRAD_DETAIL, INPUT) all land in "activations" here anyway.
On CUDA the total is `torch.cuda.max_memory_allocated` over the step, which counts every tensor on the device; what
it holds beyond the sum above (allocator rounding, library workspaces, tensors outside the model) is added to
"other".
"""
from __future__ import annotations

import copy
import gc
import os
from dataclasses import asdict, dataclass
from itertools import groupby

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import OpTree, extract_gradients

from ..adapters.lora import AdapterLayer
from ..quant.quantize import quant_state_tensors
from ..training.step import ALLOCATOR_REGION, OPTIMIZER_REGION, make_optimizer, training_step
from ..tuners.tuner import Tuner

MB = 2**20  # the paper's MB: mebibytes, as nvidia-smi and torch.cuda report memory
CATEGORIES = ("quantized_weights", "full_precision_weights", "adapters", "gradients", "optimizer_state",
              "activations", "other")
# Kineto writes a line at its top level (USDT, 5) to stderr at every profiler start and stop: two per measured step in
# a notebook's output. Level 6 silences it, errors included; a level the user has set is kept.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
REGIONS = {OPTIMIZER_REGION: "optimizer_state", ALLOCATOR_REGION: "other"}  # what a region's new tensors count as


@dataclass
class MemoryBreakdown:
    quantized_weights_mb: float  # 4-bit packed weights with their absmax (and double-quantization) constants
    full_precision_weights_mb: float  # the base's other weights: embeddings, norms, output head, float linears
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


def static_tensors(model: nn.Module, optimizer=None, method_state: list[torch.Tensor] = (),
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
        stored = getattr(module, "precision", None)  # a BlockwiseMatrix holds a frozen matrix in its buffers
        for buffer in module.buffers(recurse=False):
            add(buffer, "other" if stored is None else
                "full_precision_weights" if stored == "bf16" else "quantized_weights")
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for value in state.values():
            if torch.is_tensor(value):
                add(value, "optimizer_state")
    for tensor in method_state:  # a rank allocator's importance statistics, ours or PEFT's
        add(tensor, "other")
    for value in (batch or {}).values():
        if torch.is_tensor(value):
            add(value, "other")
    return found


def _measured_step(tuner: Tuner, batch: dict, optimizer, max_grad_norm: float) -> None:
    """The training loop's step (`training.step`); `base`, with nothing to train, runs its forward pass and loss."""
    if optimizer is None:
        tuner.model(**batch, use_cache=False).loss
        return
    training_step(tuner, [batch], optimizer, max_grad_norm, compact=False)


def measure_training_memory(tuner: Tuner, batch: dict, optimizer=None, *, max_grad_norm: float = 0.1,
                            optimizer_name: str = "paged_adamw") -> MemoryBreakdown:
    """The peak memory of one training step of `tuner` on `batch` (input_ids and labels), by category.

    `optimizer`: None for `optimizer_name` (default bitsandbytes' paged AdamW, the paper's; a run passes its
    profile's) at learning rate 0 on the trainable parameters; with an optimizer of your own the model takes two
    real steps (the warm-up and the measured one). The method's
    after-step hook runs in both (an SVD method's first creates its importance EMAs, which count in "other"), without
    rank compaction; the tuner's own state (the allocator's step and EMAs, the masks) is put back afterwards.
    """
    if "input_ids" not in batch or "labels" not in batch:
        raise ValueError(f"the batch needs input_ids and labels, got keys {sorted(batch)}; see token_batch()")
    model = tuner.model
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None and trainable:
        optimizer = make_optimizer(trainable, optimizer_name, learning_rate=0.0)
    tuner_state = copy.deepcopy(tuner.state_dict())
    masks = {name: mask.clone() for name, mask in model.named_buffers() if name.endswith("triplet_mask")}
    model.train()
    model.zero_grad(set_to_none=True)
    _measured_step(tuner, batch, optimizer, max_grad_norm)  # warm-up: the optimizer's and the allocator's state exist
    gc.collect()
    static = static_tensors(model, optimizer, tuner.state_tensors(), batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    # No Python stack: with it the profiler nests ops under Python calls, which hides the named regions.
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=False) as prof:
        _measured_step(tuner, batch, optimizer, max_grad_norm)
    tuner.load_state_dict(tuner_state)
    with torch.no_grad():
        for name, mask in model.named_buffers():
            if name in masks:
                mask.copy_(masks[name])
    dynamic_total, dynamic = timeline_peak(OpTree(prof.profiler.kineto_results), device, static)
    by_category = dict.fromkeys(CATEGORIES, 0)
    for category, nbytes in [*static.values(), *dynamic.items()]:
        by_category[category] += nbytes
    total = sum(nbytes for _, nbytes in static.values()) + dynamic_total
    if device.type == "cuda":
        allocated_peak = torch.cuda.max_memory_allocated(device)
        by_category["other"] += max(0, allocated_peak - total)
        total = max(total, allocated_peak)
    return MemoryBreakdown.from_bytes(by_category, total)


def gradient_ids(op_tree: OpTree) -> set[int]:
    """Ids of the tensors autograd stores as .grad: the profiler's own test, on its AccumulateGrad events."""
    return {key.id for event in op_tree.dfs() for _, key in extract_gradients(event) if key is not None}


def region_category(event) -> str | None:
    """What a tensor allocated by `event` counts as if it happened inside a named region (see REGIONS)."""
    while event is not None and event.name not in REGIONS:
        event = event.parent
    return REGIONS[event.name] if event is not None else None


def timeline_peak(op_tree: OpTree, device: torch.device,
                  static: dict[int, tuple[str, int]]) -> tuple[int, dict[str, int]]:
    """(bytes, bytes per category) at the instant the step's own allocations weigh most.

    The timeline is the profiler's allocation records in time order. An allocation made in the step lives until
    its free; one freed in the step but made before it lived from the start, unless it is a `static` tensor.
    """
    gradients = gradient_ids(op_tree)
    allocations = [event for event in op_tree.sorted_nodes
                   if event.typed[0] == _EventType.Allocation and event.typed[1].device == device]

    def category_of(event) -> str:
        fields = event.typed[1]
        if fields.id is None:
            return "other"  # memory no tensor owns: a library's workspace
        if fields.id in gradients:
            return "gradients"
        return region_category(event.parent) or "activations"

    live = dict.fromkeys(CATEGORIES, 0)
    allocated: set[int] = set()
    for event in allocations:  # first pass: what was there before the step and is freed during it
        fields = event.typed[1]
        if fields.alloc_size > 0:
            allocated.add(fields.ptr)
        elif fields.ptr in allocated:
            allocated.remove(fields.ptr)
        elif fields.ptr not in static:
            live["other"] -= fields.alloc_size
    best = dict(live)
    open_allocations: dict[int, tuple[str, int]] = {}  # pointer -> (category, bytes) of what the step allocated
    for _, events in groupby(allocations, key=lambda event: event.start_time_ns):  # the allocations of one instant
        for event in events:
            fields = event.typed[1]
            if fields.alloc_size > 0:
                category = category_of(event)
                open_allocations[fields.ptr] = (category, fields.alloc_size)
                live[category] += fields.alloc_size
            elif fields.ptr in open_allocations:
                category, nbytes = open_allocations.pop(fields.ptr)
                live[category] -= nbytes
            elif fields.ptr not in static:
                live["other"] += fields.alloc_size  # a tensor from before the step, freed now
        if sum(live.values()) > sum(best.values()):
            best = dict(live)
    return sum(best.values()), best
