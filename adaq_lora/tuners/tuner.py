"""What a training loop needs from a method, whoever implements it (book chapters 6 and 7).

`tuners.prepare(model, method, config)` returns a `Tuner`: the prepared model with the state of the method applied
to it (its name, its config, the rank allocator of Sec. 2.3, the precision plan of the base), the extra loss term
of Eq. 6 and the hook that runs after every optimizer step. State lives here, on the wrapper, not on the Hugging
Face model (as PEFT keeps `PeftModel.peft_config`): saving, loading and export read it from the Tuner. The PEFT
peers subclass it in `peers.py`, so the loop, the data and the evaluation are the same for every method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters.rank_allocator import RankAllocator
from ..adapters.svd_adapter import orthogonal_regularizer
from ..config import AdaQConfig
from ..quant.precision import PrecisionPlan
from .registry import MethodSpec, method_spec


@dataclass
class Tuner:
    model: nn.Module  # the model as prepared for training
    method: str  # the method's name, ours or a peer's (tuners.registry)
    config: AdaQConfig  # the settings it was prepared with
    allocator: RankAllocator | None = None  # the rank budget of SVD methods; None for the others
    precision_plan: PrecisionPlan | None = None  # how adaq_lora stores the frozen base; None: QLoRA's layout or none
    replica: nn.Module | None = None  # the DistributedDataParallel wrapper training `model` under torchrun, else None

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    @property
    def compacted(self) -> bool:
        """The adapters have been shrunk to their kept triplets (their parameters are new tensors since)."""
        return self.allocator is not None and self.allocator.compacted

    def regularizer(self) -> torch.Tensor | None:
        """γ Σ_k R(P_k, Q_k) of Sec. 2.3, added to the loss; None where the method has none or adds it itself."""
        if self.allocator is None or self.config.orth_reg_weight == 0:
            return None
        return self.config.orth_reg_weight * orthogonal_regularizer(self.model)

    def cross_entropy(self, loss: torch.Tensor) -> torch.Tensor:
        """C alone, from the `loss` the model's forward returned (ours: C itself; PEFT's AdaLoRA adds a term)."""
        return loss

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> int | None:
        """Run after optimizer.step(), before zero_grad(); returns the rank budget in force, if any.

        With `config.compact_ranks`, the final phase's first step compacts the adapters and moves `optimizer`'s
        parameters and state with them. Without an optimizer nothing is compacted: one we cannot see would go
        on updating the old parameters.
        """
        if self.allocator is None:
            return None
        budget = self.allocator.step()
        if (self.config.compact_ranks and optimizer is not None and self.allocator.rank_pattern is not None
                and not self.allocator.compacted):
            self.allocator.compact(optimizer)
        return budget

    def parameter_groups(self) -> list[dict]:
        """What the optimizer trains, as its parameter groups: the trainable parameters at the config's learning
        rate, and, where `lambda_lr_ratio` is set and not 1, the SVD adapters' λ (`lora_E`) in a group of their own at
        that multiple of it (Adam moves a scalar λ by about the rate per step, P and Q by as much per element)."""
        ratio = self.config.lambda_lr_ratio
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if self.allocator is None or ratio is None or ratio == 1:
            return [{"params": [p for _, p in named]}]
        singular = [p for name, p in named if name.endswith("lora_E")]
        rest = [p for name, p in named if not name.endswith("lora_E")]
        return [{"params": rest}, {"params": singular, "lr": self.config.learning_rate * ratio}]

    def state_tensors(self) -> list[torch.Tensor]:
        """What the method keeps beside the model between steps (the importance EMAs), for memory accounting."""
        if self.allocator is None:
            return []
        return [*self.allocator.sensitivity.values(), *self.allocator.uncertainty.values()]

    def rank_pattern(self) -> dict[str, int] | None:
        if self.allocator is None:
            return None
        return self.allocator.rank_pattern or self.allocator.current_rank_pattern()

    def state_dict(self) -> dict:
        return self.allocator.state_dict() if self.allocator is not None else {}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore `state`; call before loading tensors into the model and `optimizer`: a compacted state
        first shrinks the adapters and the optimizer's parameters to the shapes it was saved with."""
        if self.allocator is not None:
            self.allocator.load_state_dict(state, optimizer)
