"""What a training loop needs from a method, whoever implements it (book chapters 6 and 7).

`prepare(model, method, config)` returns a `Tuner`: the prepared model, the extra loss term of Eq. 6 and the
hook that runs after every optimizer step (the rank allocator of Sec. 2.3). Our six methods are built here; the
PEFT peers (`peft-lora`, `peft-qlora`, `peft-adalora`) subclass `Tuner` in `peers.py` and register there, so the loop, the data
and the evaluation are the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import METHODS, SVD_METHODS, AdaQConfig
from .methods import apply_method
from .rank_allocator import RankAllocator
from .saving import export_peft, save_adapters
from .svd_adapter import orthogonal_regularizer


@dataclass
class Tuner:
    model: nn.Module  # the model as prepared for training
    method: str  # the method's name, ours or a peer's
    config: AdaQConfig  # the settings it was prepared with
    allocator: RankAllocator | None = None  # the rank budget of SVD methods; None for the others

    def regularizer(self) -> torch.Tensor | None:
        """γ Σ_k R(P_k, Q_k) of Sec. 2.3, added to the loss; None where the method has none or adds it itself."""
        if self.allocator is None or self.config.orth_reg_weight == 0:
            return None
        return self.config.orth_reg_weight * orthogonal_regularizer(self.model)

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

    def save(self, path, base_model_name_or_path: str | None = None) -> None:
        """Adapters in our format (with the base's precision plan, if any) and in PEFT's, side by side in one folder."""
        save_adapters(self.model, path)
        if self.method not in ("base", "full"):
            export_peft(self.model, path, base_model_name_or_path)


PEER_BUILDERS: dict[str, Callable[[nn.Module, AdaQConfig], Tuner]] = {}


def all_methods() -> tuple[str, ...]:
    from . import peers  # noqa: F401  registers the PEFT peers

    return METHODS + tuple(PEER_BUILDERS)


def prepare(model: nn.Module, method: str, config: AdaQConfig | None = None, *,
            calibration: list[dict] | None = None, precision_plan=None) -> Tuner:
    """Apply `method` to `model` and return the Tuner the training loop drives.

    `calibration` (batches of one example) and `precision_plan` reach `apply_method`; only `adaq_lora` uses them.
    """
    config = config or AdaQConfig()
    valid = all_methods()
    if method not in valid:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(valid)}")
    if method in PEER_BUILDERS:
        return PEER_BUILDERS[method](model, config)
    apply_method(model, method, config, calibration=calibration, precision_plan=precision_plan)
    allocator = RankAllocator(model, config) if method in SVD_METHODS else None
    return Tuner(model=model, method=method, config=config, allocator=allocator)
