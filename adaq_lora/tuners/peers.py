"""The peers a user would otherwise pick: PEFT's LoRA, QLoRA and AdaLoRA (book chapters 7 and 8).

They run through the same training loop, data and evaluation as our methods, so the tables and the benchmarks
compare like with like. The 4-bit peers sit on the same bitsandbytes NF4 base that `quant/quantize.py` builds for
ours. PEFT's AdaLoRA adds its own orthogonality term inside the forward pass (a mean of unsquared norms, weight
0.5 by default) and needs `update_and_allocate(step)` after each optimizer step, which the loop calls here. The
cross-entropy it reports (`lm_losses`, comparable across methods) is the wrapped transformers model's loss, copied
before PEFT adds that term.
`peft_config` is the one place our `AdaQConfig` names are said in PEFT's: the peers and the export both use it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AdaQConfig
from ..models import default_target_modules
from ..quant.quantize import quantize_model
from .methods import resolve_compute_dtype
from .registry import MethodSpec, register_method
from .tuner import Tuner

PEFT_ADALORA_ORTH_REG_WEIGHT = 0.5  # PEFT's default for its own (mean, unsquared) regularizer


def peft_config(adapter: str, config: AdaQConfig, target_modules, orth_reg_weight: float, **extra):
    """PEFT's `LoraConfig` (adapter "lora") or `AdaLoraConfig` ("svd") holding `config`'s settings."""
    from peft import AdaLoraConfig, LoraConfig

    common = dict(target_modules=list(target_modules), lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                  task_type="CAUSAL_LM", **extra)
    if adapter == "lora":
        return LoraConfig(r=config.r, **common)
    return AdaLoraConfig(init_r=config.init_r, target_r=config.target_r, tinit=config.t_init, tfinal=config.t_final,
                         deltaT=config.delta_t, beta1=config.beta1, beta2=config.beta2,
                         orth_reg_weight=orth_reg_weight, total_step=config.total_steps, **common)


@dataclass
class PeftTuner(Tuner):
    """A PEFT model driven by our loop; AdaLoRA's budget lives in PEFT's own rank allocator."""

    global_step: int = 0  # PEFT's AdaLoRA counts its steps itself
    _cross_entropy: torch.Tensor | None = None  # transformers' loss of the last forward, before PEFT's term

    def __post_init__(self):
        # PEFT calls the wrapped model's `forward` directly, past any hook, so its forward is wrapped on the instance
        # (as accelerate's hooks do) to keep a copy of transformers' loss before PEFT's AdaLoRA adds to it in place
        wrapped = self.model.base_model.model
        forward = wrapped.forward

        @functools.wraps(forward)
        def recording_forward(*args, **kwargs):
            output = forward(*args, **kwargs)
            loss = getattr(output, "loss", None)
            self._cross_entropy = None if loss is None else loss.detach().clone()
            return output

        wrapped.forward = recording_forward

    def regularizer(self) -> torch.Tensor | None:
        return None  # PEFT's AdaLoRA adds it to outputs.loss itself; LoRA has none

    def cross_entropy(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self._cross_entropy is None else self._cross_entropy

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

    def state_tensors(self) -> list[torch.Tensor]:
        """PEFT's AdaLoRA allocator: three float32 tensors per adapter element (ipt, exp_avg_ipt, exp_avg_unc)."""
        allocator = self._peft_allocator()
        if allocator is None:
            return []
        return [t for table in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in table.values()]

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


def _builder(name: str, adapter: str, quantized: bool):
    def build(model: nn.Module, config: AdaQConfig, calibration=None, precision_plan=None) -> PeftTuner:
        from peft import get_peft_model

        if quantized:
            device = next(model.parameters()).device
            quantize_model(model, quant_type=config.quant_type, double_quant=config.double_quant,
                           compute_dtype=resolve_compute_dtype(config, device))
        targets = config.target_modules or default_target_modules(model)
        settings = peft_config(adapter, config, targets, PEFT_ADALORA_ORTH_REG_WEIGHT)
        return PeftTuner(model=get_peft_model(model, settings), method=name, config=config)

    return build


for _name, _label, _adapter, _quantized in (("peft-lora", "+LoRA (PEFT)", "lora", False),
                                            ("peft-qlora", "+QLoRA (PEFT)", "lora", True),
                                            ("peft-adalora", "+AdaLoRA (PEFT)", "svd", True)):
    register_method(MethodSpec(_name, _label, _adapter, _quantized, _builder(_name, _adapter, _quantized), peer=True))
