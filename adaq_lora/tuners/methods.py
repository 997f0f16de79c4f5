"""The paper's methods as one call on any causal LM (book chapters 1, 3, 4 and 6).

| method          | frozen base             | trainable                               | paper       |
|-----------------|-------------------------|-----------------------------------------|-------------|
| `base`          | everything              | nothing (the "GLM2" rows of Tables 1-2) | Sec. 3      |
| `full`          | nothing                 | every weight (small models only)        | Sec. 1      |
| `lora`          | full precision          | B A on the target matrices              | Eq. 1       |
| `qlora`         | 4-bit NF4, double quant | B A on the target matrices              | QLoRA       |
| `adalora`       | full precision          | P Λ Q with the rank budget              | Eqs. 5-7    |
| `adaq_lora`     | by the precision plan   | P Λ Q with the rank budget              | the paper's |
| `adaq_lora_nf4` | 4-bit NF4, double quant | P Λ Q with the rank budget              | ablation    |

Kept apart as PEFT keeps its tuners: the layers live in `adapters/` (`lora.py`, `svd_adapter.py`), the 4-bit storage
in `quant/`; this module only decides which layer goes where, and registers the seven in `tuners.registry`.
`adaq_lora_nf4` is ADAQ-LoRA with QLoRA's storage (as `precision_budget_bits=None` would give): set beside `qlora` it
judges the SVD adapters and the rank budget alone, set beside `adaq_lora` the precision plan alone.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from itertools import chain

import torch
from torch import nn

from ..adapters.loftq import loftq_start
from ..adapters.lora import AdapterLayer, LoraLinear
from ..adapters.rank_allocator import RankAllocator
from ..adapters.svd_adapter import SVDLinear
from ..config import AdaQConfig
from ..models import default_target_modules, linear_leaf_names
from ..quant.precision import PrecisionPlan, apply_precision_plan, plan_precision
from ..quant.blockwise import BlockwiseMatrix
from ..quant.quantize import compute_dtype_for, quantize_model
from .registry import MethodSpec, method_spec, register_method
from .tuner import Tuner

ADAPTER_LAYERS = {"lora": LoraLinear, "svd": SVDLinear}


def resolve_compute_dtype(config: AdaQConfig, device: torch.device) -> torch.dtype:
    if config.compute_dtype == "auto":
        return compute_dtype_for(device)
    return getattr(torch, config.compute_dtype)


def apply_method(model: nn.Module, method: str, config: AdaQConfig | None = None, *,
                 calibration: list[dict] | None = None, precision_plan: PrecisionPlan | None = None) -> nn.Module:
    """Prepare `model` in place for fine-tuning with `method` (one of ours) and return it.

    `adaq_lora` with `config.precision_budget_bits` set stores the frozen base by a precision plan
    (`quant/precision.py`): `precision_plan` if given (e.g. loaded with saved adapters), else one made now from the
    `calibration` batches (one example each; None: the data-free plan). Seed torch before the call: the
    adapters' random starts come from torch's generator. The model keeps the mode it had (as PEFT's
    `get_peft_model` does): the new layers would otherwise start in training mode, with dropout on.
    `tuners.prepare` does the same and returns the `Tuner` that holds the method's state.
    """
    spec = method_spec(method)
    apply_ours(model, spec, method_config(spec, config or AdaQConfig()), calibration, precision_plan)
    return model


def method_config(spec: MethodSpec, config: AdaQConfig) -> AdaQConfig:
    """`config` as `spec`'s method runs it: an SVD method fills the start fields left at None with its own start.

    LoftQ's start (`loftq_init`) needs SVD adapters on a quantized base; any other method runs without it, as it runs
    without `svd_init`: a profile's one adapter section serves every method of its grid.
    """
    if config.loftq_init and not (spec.svd and spec.quantized):
        config = replace(config, loftq_init=False)
    return config.with_start(spec.svd_start) if spec.svd_start is not None else config


def apply_ours(model: nn.Module, spec: MethodSpec, config: AdaQConfig, calibration: list[dict] | None,
               precision_plan: PrecisionPlan | None) -> PrecisionPlan | None:
    """`apply_method`'s work; returns the precision plan the base was stored by, if any."""
    if spec.peer:
        raise ValueError(f"{spec.name} is PEFT's: prepare it with adaq_lora.tuners.prepare(model, {spec.name!r})")
    # a base loaded in 4 bits (transformers' BitsAndBytesConfig) is welcome; adapters or a precision plan are not
    if adapter_layers(model) or any(isinstance(module, BlockwiseMatrix) for module in model.modules()):
        raise ValueError("a method is already applied to this model (it holds adapters or a precision-planned "
                         "base); load a fresh one")
    training = model.training
    for param in model.parameters():
        param.requires_grad_(spec.trains_base)
    plan = None
    if spec.adapter is not None:
        targets = config.target_modules or default_target_modules(model)
        available = linear_leaf_names(model)
        unknown = sorted(set(targets) - available)
        if unknown:
            raise ValueError(f"unknown target module(s) {unknown}; this model's linear layers are: {sorted(available)}")
        # references, not copies: they keep the targets' full-precision weights alive through quantization
        originals = ({name: layer.weight.detach() for name, layer in target_linears(model, targets)}
                     if config.loftq_init else {})
        if spec.quantized:
            compute_dtype = resolve_compute_dtype(config, next(model.parameters()).device)
            if spec.precision_plan and (precision_plan is not None or config.precision_budget_bits is not None):
                plan = precision_plan or plan_precision(model, config.precision_budget_bits, calibration,
                                                        config.precision_floor)
                apply_precision_plan(model, plan, compute_dtype)
            else:
                quantize_model(model, quant_type=config.quant_type, double_quant=config.double_quant,
                               compute_dtype=compute_dtype)
        inject_adapters(model, ADAPTER_LAYERS[spec.adapter], targets, config)
        loftq_start(model, originals)
    model.train(training)
    return plan


def build(model: nn.Module, config: AdaQConfig, calibration=None, precision_plan=None, *, method: str) -> Tuner:
    """One of our methods applied to `model`, as the Tuner the training loop drives."""
    spec = method_spec(method)
    config = method_config(spec, config)
    plan = apply_ours(model, spec, config, calibration, precision_plan)
    allocator = RankAllocator(model, config) if spec.svd else None
    return Tuner(model=model, method=method, config=config, allocator=allocator, precision_plan=plan)


def inject_adapters(model: nn.Module, layer_class: type[AdapterLayer], targets, config: AdaQConfig) -> None:
    """Replace every linear layer whose leaf name is in `targets` by `layer_class` wrapped around it."""
    rank = config.init_r if layer_class is SVDLinear else config.r
    for name, module in target_linears(model, targets):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        start = {"init": config.svd_init or "gaussian"} if layer_class is SVDLinear else {}
        adapter = layer_class(module, rank, config.lora_alpha, config.lora_dropout, config.init_std, **start)
        device = next(chain(module.parameters(), module.buffers())).device  # a blockwise base holds only buffers
        setattr(parent, leaf, adapter.to(device))


def target_linears(model: nn.Module, targets) -> list[tuple[str, nn.Linear]]:
    """(name, layer) for every linear layer whose leaf name is in `targets`."""
    return [(name, module) for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear)]


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, AdapterLayer)}


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_merged(model: nn.Module, merged: bool) -> None:
    """Merge every adapter into its base for inference (True), or take them out again (False)."""
    for layer in adapter_layers(model).values():
        layer.merge() if merged else layer.unmerge()


def _register(name: str, label: str, adapter: str | None, quantized: bool, **traits) -> None:
    register_method(MethodSpec(name, label, adapter, quantized, partial(build, method=name), **traits))


_register("base", "", None, False)  # the untrained model: the paper's "GLM2" rows
_register("full", "+full fine-tuning", None, False, trains_base=True)
_register("lora", "+LoRA", "lora", False)
_register("qlora", "+QLoRA", "lora", True)
_register("adalora", "+AdaLoRA", "svd", False, svd_start="adalora")
_register("adaq_lora", "+ADAQ-LoRA", "svd", True, precision_plan=True, svd_start="adaq")
_register("adaq_lora_nf4", "+ADAQ-LoRA, QLoRA's storage", "svd", True, svd_start="adaq")  # the ablation: no plan
