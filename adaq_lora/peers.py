"""The peers a user would otherwise pick: PEFT's LoRA, QLoRA and AdaLoRA (book chapters 7 and 8).

They run through the same training loop, data and evaluation as our methods, so the tables and the benchmarks
compare like with like. The 4-bit peers sit on the same bitsandbytes NF4 base that `quantize.py` builds for
ours. PEFT's AdaLoRA adds its own orthogonality term inside the forward pass (a mean of unsquared norms, weight
0.5 by default) and needs `update_and_allocate(step)` after each optimizer step, which the loop calls here.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AdaQConfig
from .methods import resolve_compute_dtype
from .models import default_target_modules
from .quantize import quantize_model
from .tuning import PEER_BUILDERS, Tuner

PEFT_ADALORA_ORTH_REG_WEIGHT = 0.5  # PEFT's default for its own (mean, unsquared) regularizer


class PeftTuner(Tuner):
    """A PEFT model driven by our loop; AdaLoRA's budget lives in PEFT's own rank allocator."""

    global_step: int = 0

    def regularizer(self) -> torch.Tensor | None:
        return None  # PEFT's AdaLoRA adds it to outputs.loss itself; LoRA has none

    def _peft_allocator(self):
        return getattr(self.model.base_model, "rankallocator", None)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> int | None:
        allocator = self._peft_allocator()
        if allocator is None:
            return None
        self.global_step += 1
        self.model.base_model.update_and_allocate(self.global_step)
        budget, _ = allocator.budget_schedule(self.global_step)
        return int(budget)

    def rank_pattern(self) -> dict[str, int] | None:
        if self._peft_allocator() is None:
            return None
        pattern = self.model.peft_config["default"].rank_pattern
        if pattern:
            return {name.replace(".lora_E.default", ""): int(sum(kept)) for name, kept in pattern.items()}
        return {name: int(module.r["default"]) for name, module in self.model.base_model.model.named_modules()
                if hasattr(module, "lora_E")}

    def state_dict(self) -> dict:
        allocator = self._peft_allocator()
        if allocator is None:
            return {}
        return {"global_step": self.global_step, "ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt,
                "exp_avg_unc": allocator.exp_avg_unc, "rank_pattern": self.model.peft_config["default"].rank_pattern}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
        allocator = self._peft_allocator()
        if allocator is None:
            return
        self.global_step = state["global_step"]
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        self.model.peft_config["default"].rank_pattern = state["rank_pattern"]

    def save(self, path, base_model_name_or_path: str | None = None) -> None:
        self.model.save_pretrained(str(path))


def _peft_common(model: nn.Module, config: AdaQConfig) -> dict:
    targets = list(config.target_modules or default_target_modules(model))
    return dict(target_modules=targets, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                task_type="CAUSAL_LM")


def _build(method: str, quantized: bool, peft_config_factory):
    def build(model: nn.Module, config: AdaQConfig) -> PeftTuner:
        from peft import get_peft_model

        if quantized:
            device = next(model.parameters()).device
            quantize_model(model, quant_type=config.quant_type, double_quant=config.double_quant,
                           compute_dtype=resolve_compute_dtype(config, device))
        peft_model = get_peft_model(model, peft_config_factory(model, config))
        return PeftTuner(model=peft_model, method=method, config=config)

    return build


def _lora_config(model, config):
    from peft import LoraConfig

    return LoraConfig(r=config.r, **_peft_common(model, config))


def _adalora_config(model, config):
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=config.init_r, target_r=config.target_r, tinit=config.t_init, tfinal=config.t_final,
                         deltaT=config.delta_t, beta1=config.beta1, beta2=config.beta2,
                         orth_reg_weight=PEFT_ADALORA_ORTH_REG_WEIGHT, total_step=config.total_steps,
                         **_peft_common(model, config))


PEER_BUILDERS["peft-lora"] = _build("peft-lora", False, _lora_config)
PEER_BUILDERS["peft-qlora"] = _build("peft-qlora", True, _lora_config)
PEER_BUILDERS["peft-adalora"] = _build("peft-adalora", True, _adalora_config)
