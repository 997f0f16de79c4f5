"""Importance ranking and the global rank budget of Sec. 2.3 (book chapter 5).

Every element θ of P, λ and Q gets a sensitivity I = |θ · ∂L/∂θ|, smoothed by an EMA (β1) into Ī and weighted
by its uncertainty U, an EMA (β2) of |I − Ī|: s = Ī · U. Triplet i of matrix k scores
S_{k,i} = s(λ_{k,i}) + mean s(P_k[:, i]) + mean s(Q_k[i, :]).

One budget b(t) holds for all n matrices together. It stays at n · init_r for the first t_init steps, falls on a
cubic to n · target_r by step T − t_final, and stays there:
    b(t) = b_T + (b_0 − b_T) · (1 − (t − t_init) / (T − t_init − t_final))³.
Every ΔT steps the b(t) best triplets over the whole model stay visible and the others are masked. In the final
t_final steps the mask is fixed; the rank each matrix keeps is the rank pattern. `compact(optimizer)` then
shrinks the adapters to it and frees the EMAs (compaction.py).

The two EMAs are stored in `config.importance_dtype`, bfloat16 by default (PEFT keeps them in float32): half the
bytes of the heaviest state before compaction, two values per adapter element. Each update is computed in float32
and rounded once; bfloat16 keeps float32's range, so the tiny products |θ · ∂L/∂θ| do not underflow as in float16,
and its 8-bit mantissa orders the triplets as float32 does except for near-ties (measured in benchmarks/).

With `config.importance_per = "triplet"` the EMAs of P's columns and Q's rows are kept per triplet instead of per
element: the sensitivity folded in each step is the mean of |θ · ∂L/∂θ| over the triplet's column (row), so Ī is
exactly the mean of the per-element Ī (an EMA is linear), while U and so s = Ī · U are taken of that mean, not
averaged over elements. It keeps r values per matrix instead of (out + in) · r, the state's share of the peak at the
start of a run; `benchmarks/bench_importance_dtype.py --shadow importance_per=triplet` measures how often it chooses
other triplets than the per-element scores.

Call `step()` in a plain training loop after `optimizer.step()` and before `optimizer.zero_grad()`: it reads the
gradients. (The Hugging Face Trainer never calls PEFT's `update_and_allocate`; forgetting it leaves the budget
at init_r.)
"""
from __future__ import annotations

import torch
from torch import nn

from .compaction import compact_layers, compact_to_masks, leading_triplets
from ..config import AdaQConfig
from .svd_adapter import SVDLinear, svd_layers

SCORED_PARAMETERS = ("lora_A", "lora_E", "lora_B")


def cubic_budget(step: int, initial_budget: int, target_budget: int, t_init: int, t_final: int, total_steps: int) -> int:
    """b(t) of Sec. 2.3, as an integer number of triplets."""
    if step < t_init:
        return initial_budget
    if step >= total_steps - t_final:
        return target_budget
    progress = (step - t_init) / (total_steps - t_init - t_final)
    return int(target_budget + (initial_budget - target_budget) * (1 - progress) ** 3)


class RankAllocator:
    """Scores the triplets of every SVD adapter of `model` and masks them to the budget."""

    def __init__(self, model: nn.Module, config: AdaQConfig):
        self.config = config
        self.layers: dict[str, SVDLinear] = svd_layers(model)
        if not self.layers:
            raise ValueError("the model has no SVD adapters: apply method 'adalora' or 'adaq_lora' before the RankAllocator")
        self.initial_budget = sum(layer.r for layer in self.layers.values())
        self.target_budget = config.target_r * len(self.layers)
        self.sensitivity: dict[tuple[str, str], torch.Tensor] = {}
        self.uncertainty: dict[tuple[str, str], torch.Tensor] = {}
        self.global_step = 0
        self.budget = self.initial_budget
        self.rank_pattern: dict[str, int] | None = None
        self.compacted = False  # adapters shrunk to the rank pattern, EMAs freed

    def budget_at(self, step: int) -> int:
        c = self.config
        return cubic_budget(step, self.initial_budget, self.target_budget, c.t_init, c.t_final, c.total_steps)

    @property
    def in_final_phase(self) -> bool:
        return self.global_step >= self.config.total_steps - self.config.t_final

    @torch.no_grad()
    def update_importance(self) -> None:
        """Fold this step's |θ · ∂L/∂θ| into the two EMAs of every scored parameter."""
        beta1, beta2 = self.config.beta1, self.config.beta2
        storage = getattr(torch, self.config.importance_dtype)
        for name, layer in self.layers.items():
            for param_name in SCORED_PARAMETERS:
                param = getattr(layer, param_name)
                if param.grad is None:
                    raise RuntimeError(
                        f"{name}.{param_name} has no gradient: call RankAllocator.step() after optimizer.step() "
                        "and before optimizer.zero_grad(set_to_none=True)"
                    )
                key = (name, param_name)
                sensitivity = (param * param.grad).abs().float()
                if self.config.importance_per == "triplet" and param_name != "lora_E":  # Q: r × in, P: out × r
                    sensitivity = sensitivity.mean(dim=1 if param_name == "lora_A" else 0, keepdim=True)
                if key not in self.sensitivity:
                    self.sensitivity[key] = torch.zeros_like(sensitivity, dtype=storage)
                    self.uncertainty[key] = torch.zeros_like(sensitivity, dtype=storage)
                # the arithmetic in float32, the storage in `importance_dtype` (a no-op copy when that is float32)
                smoothed = self.sensitivity[key].float().mul_(beta1).add_(sensitivity, alpha=1 - beta1)
                spread = self.uncertainty[key].float().mul_(beta2).add_((sensitivity - smoothed).abs(), alpha=1 - beta2)
                self.sensitivity[key].copy_(smoothed)
                self.uncertainty[key].copy_(spread)

    def element_scores(self, name: str, param_name: str) -> torch.Tensor:
        key = (name, param_name)
        return self.sensitivity[key].float() * self.uncertainty[key].float()

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """S_{k,i} for every matrix k, a vector of its r triplet scores."""
        scores = {}
        for name in self.layers:
            lam = self.element_scores(name, "lora_E").view(-1)
            q_rows = self.element_scores(name, "lora_A").mean(dim=1)
            p_columns = self.element_scores(name, "lora_B").mean(dim=0)
            scores[name] = lam + q_rows + p_columns
        return scores

    @torch.no_grad()
    def best_triplets(self, budget: int) -> torch.Tensor:
        """Which of all triplets, in layer order, are the `budget` best by score (a boolean vector)."""
        flat = torch.cat(list(self.triplet_scores().values()))
        keep = torch.zeros_like(flat, dtype=torch.bool)
        # a stable sort breaks ties by position, the same way on every rank of a data-parallel run
        keep[torch.sort(flat, descending=True, stable=True).indices[:budget]] = True
        return keep

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Keep the `budget` best triplets over all matrices visible, hide the rest."""
        keep, offset = self.best_triplets(budget), 0
        for layer in self.layers.values():
            layer.set_mask(keep[offset : offset + layer.r])
            offset += layer.r

    def step(self) -> int:
        """One optimizer step has happened: update importance, re-mask when due, return the budget in force."""
        c = self.config
        self.global_step += 1
        if self.rank_pattern is not None:
            return self.budget
        self.update_importance()
        self.budget = self.budget_at(self.global_step)
        if self.in_final_phase:
            self.mask_to_budget(self.budget)
            self.rank_pattern = self.current_rank_pattern()
        elif self.global_step >= c.t_init and (self.global_step - c.t_init) % c.delta_t == 0:
            self.mask_to_budget(self.budget)
        return self.budget

    def compact(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Final phase: shrink every adapter (and `optimizer`'s state) to its kept triplets, free the EMAs."""
        if self.rank_pattern is None:
            raise ValueError(f"step {self.global_step} is before the final phase: masked triplets may still come back")
        compact_to_masks(self.layers, optimizer)
        self.sensitivity.clear()  # never read again once the mask is fixed
        self.uncertainty.clear()
        self.compacted = True

    def current_rank_pattern(self) -> dict[str, int]:
        return {name: layer.active_rank for name, layer in self.layers.items()}

    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "budget": self.budget,
            "rank_pattern": self.rank_pattern,
            "compacted": self.compacted,
            "sensitivity": {f"{n}|{p}": t for (n, p), t in self.sensitivity.items()},
            "uncertainty": {f"{n}|{p}": t for (n, p), t in self.uncertainty.items()},
        }

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore `state`; a compacted one first shrinks the adapters (and `optimizer`'s parameters) to its
        rank pattern, so the saved tensors and optimizer state that are loaded next fit their shapes."""
        compacted = state.get("compacted", False)
        if self.compacted and not compacted:
            raise ValueError("the adapters are compacted: an uncompacted allocator state no longer fits them")
        self.global_step = state["global_step"]
        self.budget = state["budget"]
        self.rank_pattern = state["rank_pattern"]
        if compacted and not self.compacted:
            compact_layers(self.layers, leading_triplets(self.layers, self.rank_pattern), optimizer)
            self.compacted = True
        for target, source in ((self.sensitivity, state["sensitivity"]), (self.uncertainty, state["uncertainty"])):
            target.clear()
            for key, tensor in source.items():
                name, param_name = key.split("|")
                target[(name, param_name)] = tensor.clone()
