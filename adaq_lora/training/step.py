"""One optimizer step, the package's only one (Secs. 2.3 and 3; book chapters 3, 6 and 7).

For each micro-batch: the loss L = C + γ Σ_k R(P_k, Q_k) (Eq. 6's term built before the forward pass, so that
autograd runs its backward last and the adapters' gradients do not sit beside the logits' at the step's memory
peak) and its backward; then clipping to the paper's maximum gradient norm, the optimizer step, the method's
after-step hook (the rank allocator of Sec. 2.3: importance, budget, mask, and rank compaction when the final
phase begins, before `zero_grad`, which it needs the gradients for) and `zero_grad`. `train()`, the memory
measurement, the benchmark, chapter 3 and the README's example all call `training_step`. Under torchrun the
forward goes through the tuner's DDP replica (`distributed.py`): gradients are averaged over the ranks at the last
micro-batch's backward, the recorded losses are the mean over every rank's micro-batches, and the ranks' masks are
compared after each allocator step.

The optimizer update and the allocator run inside named profiler regions, so the memory measurement can tell the
tensors they make from the activations; outside a profiler a region costs nothing worth measuring.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..adapters.gradient_start import gradient_start
from ..tuners.tuner import Tuner
from .distributed import (accumulating, check_masks_agree, mean_over_ranks, replicate, sum_over_ranks,
                          sum_tensor_over_ranks)
from .fused_loss import FusedLossModel

OPTIMIZER_REGION = "adaq_lora.optimizer_update"  # clipping and the optimizer's step
ALLOCATOR_REGION = "adaq_lora.importance_update"  # the method's after-step hook: the rank allocator of Sec. 2.3


def set_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Recompute each decoder layer's activations in its backward (the paper profile's setting), or stop doing so.

    Non-reentrant checkpointing: the reentrant kind backpropagates into a checkpointed layer only when the layer's
    input requires grad, which the output of a frozen embedding does not, so adapters inside would get no gradient
    (PEFT's `prepare_model_for_kbit_training` works around it with `enable_input_require_grads`).
    """
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


class NonFiniteLoss(FloatingPointError):
    """The loss of a micro-batch is NaN or infinite; raised before its backward pass."""

    def __init__(self, value: float, method: str):
        super().__init__(f"non-finite loss {value} ({method})")
        self.value, self.method = value, method


@dataclass(frozen=True)
class StepOutcome:
    loss: float  # L, the mean over the step's micro-batches (regularizer included)
    cross_entropy: float  # C alone, comparable across methods
    budget: int | None  # the rank budget in force after the step; None for methods without one
    tokens: int  # non-padding tokens the step saw


def make_optimizer(params, name: str, learning_rate: float) -> torch.optim.Optimizer:
    """bitsandbytes' paged AdamW ("paged_adamw", the paper's; "paged_adamw_8bit" with its moments in 8 bits) or
    torch's AdamW ("adamw"), without weight decay. `params`: parameters, or groups (`Tuner.parameter_groups`)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    from ..quant.kernels import import_bitsandbytes

    optim = import_bitsandbytes().optim
    # Paging moves an optimizer's state between GPU and CPU memory under pressure; on a CPU there is nothing to page
    # to, so bitsandbytes' paged AdamW keeps ordinary state and says so at every first step (chapter 1 says it once).
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU", category=UserWarning)
    paged = optim.PagedAdamW8bit if name == "paged_adamw_8bit" else optim.PagedAdamW
    return paged(params, lr=learning_rate, weight_decay=0.0)


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters `optimizer` updates now (rank compaction replaces them: never keep a list of your own)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def loss_model(tuner: Tuner) -> torch.nn.Module:
    """What a step calls for the loss: our methods' model with the fused loss (`fused_loss.py`) unless the config
    turns it off; the PEFT peers as their users run them, with transformers' loss."""
    if tuner.config.fused_loss and not tuner.spec.peer:
        return FusedLossModel(tuner.model)
    return tuner.model


def training_loss(tuner: Tuner, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """L = C + γ Σ_k R(P_k, Q_k) on one micro-batch (Sec. 2.3), and C alone."""
    regularizer = tuner.regularizer()
    model = tuner.replica or loss_model(tuner)  # under torchrun through DDP, whose backward averages the gradients
    output = model(**batch, use_cache=False)
    loss = output if isinstance(output, torch.Tensor) else output.loss
    return (loss if regularizer is None else loss + regularizer), tuner.cross_entropy(loss)


def start_from_gradient(tuner: Tuner, batches: list[dict]) -> None:
    """Turn `tuner`'s SVD adapters to the top singular vectors of the loss gradient summed over `batches` (this
    process's share of the run's first micro-batches; `adapters/gradient_start.py`), with C as a step computes it."""
    gradient_start(tuner.allocator.layers, batches, lambda batch: training_loss(tuner, batch)[1], sum_tensor_over_ranks)


def training_step(tuner: Tuner, batches: list[dict], optimizer: torch.optim.Optimizer,
                  max_grad_norm: float = 0.1, *, compact: bool = True) -> StepOutcome:
    """One optimizer step over `batches` (its micro-batches, gradients accumulated); see the module docstring.

    A non-finite loss raises `NonFiniteLoss` (a FloatingPointError) before its backward pass: the weights stay.
    `compact=False` leaves the adapters their shapes whatever the schedule says: the memory measurement, which must
    leave the tuner as it found it, takes its steps so.
    """
    loss_sum = cross_entropy_sum = 0.0
    tokens = 0
    for index, batch in enumerate(batches):
        with accumulating(tuner.replica, last=index == len(batches) - 1):
            loss, cross_entropy = training_loss(tuner, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(loss.item(), tuner.method)
            (loss / len(batches)).backward()
        loss_sum += loss.item()
        cross_entropy_sum += cross_entropy.item()
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    with record_function(OPTIMIZER_REGION):
        torch.nn.utils.clip_grad_norm_(optimized_parameters(optimizer), max_grad_norm)
        optimizer.step()
    compacted = tuner.compacted
    with record_function(ALLOCATOR_REGION):
        budget = tuner.after_optimizer_step(optimizer if compact else None)
    if tuner.replica is not None:
        if tuner.compacted != compacted:  # the adapters are new, smaller tensors; DDP's buckets hold the old ones
            tuner.replica = replicate(loss_model(tuner))
        if tuner.allocator is not None:
            check_masks_agree(tuner.model, tuner.allocator.global_step)
    optimizer.zero_grad(set_to_none=True)
    loss, cross_entropy = mean_over_ranks([loss_sum / len(batches), cross_entropy_sum / len(batches)])
    return StepOutcome(loss, cross_entropy, budget, sum_over_ranks(tokens))
