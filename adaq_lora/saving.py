"""Saving adapters, loading them back, and exporting them to PEFT's format (book chapters 6 and 7).

Our own format keeps everything a resumed run needs: every adapter tensor (masked triplets included, since
they may come back), the triplet masks, the method, its `AdaQConfig` and the rank pattern, in
`adaq_adapters.safetensors` + `adaq_config.json`. Adapters compacted in the final phase are saved at their kept
rank; loading compacts the fresh model's adapters to the saved ranks first. An `adaq_lora` model's precision plan
(`precision_plan.json`) is saved beside them, and loading stores the fresh base by it.

`export_peft` writes what `peft.PeftModel.from_pretrained` reads: LoRA/QLoRA adapters as a PEFT `LoraConfig`,
AdaLoRA/ADAQ-LoRA adapters as an `AdaLoraConfig` whose rank pattern lists the kept triplets. PEFT then shrinks
each SVD adapter to its kept rank and keeps the scale α / init_r, so its logits equal ours. PEFT's rank pattern
indexes its init_r triplets, so a compacted adapter's pattern is its kept count padded with False to init_r.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .compaction import compact_layers, leading_triplets
from .config import SVD_METHODS, AdaQConfig
from .methods import adapter_layers, apply_method
from .precision import PLAN_FILE, PrecisionPlan
from .svd_adapter import SVDLinear, svd_layers

WEIGHTS_FILE = "adaq_adapters.safetensors"
CONFIG_FILE = "adaq_config.json"
ADAPTER_TENSORS = ("lora_A", "lora_E", "lora_B", "triplet_mask")


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=2, ensure_ascii=False)
    os.replace(staging, path)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    path = Path(path)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging, metadata=metadata)
    os.replace(staging, path)


def _applied_method(model: nn.Module) -> str:
    method = getattr(model, "adaq_method", None)
    if method is None:
        raise ValueError("the model carries no method: call adaq_lora.apply_method(model, method, config) first")
    return method


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, layer in adapter_layers(model).items():
        for tensor_name in ADAPTER_TENSORS:
            if hasattr(layer, tensor_name):
                state[f"{name}.{tensor_name}"] = getattr(layer, tensor_name)
    return state


def rank_pattern(model: nn.Module) -> dict[str, int]:
    """The rank each SVD adapter keeps now: the number of its unmasked triplets."""
    return {name: layer.active_rank for name, layer in adapter_layers(model).items() if isinstance(layer, SVDLinear)}


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters, their masks, the method and its config into the folder `path`."""
    method = _applied_method(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(path / WEIGHTS_FILE, adapter_state(model))
    write_json_atomic(path / CONFIG_FILE, {
        "method": method,
        "config": model.adaq_config.to_dict(),
        "rank_pattern": rank_pattern(model),
        "base_model": getattr(model, "name_or_path", None),
    })
    plan = getattr(model, "adaq_precision_plan", None)
    if plan is not None:
        plan.save(path)
    return path


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply the saved method to a fresh base `model` (or reuse the one applied) and load the saved adapters."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: {path} is not a folder written by adaq_lora.save_adapters")
    saved = json.loads(config_file.read_text())
    if getattr(model, "adaq_method", None) is None:
        # the base is stored as it was in training: by the saved precision plan, not by one made anew
        plan = PrecisionPlan.load(path) if (path / PLAN_FILE).exists() else None
        apply_method(model, saved["method"], AdaQConfig.from_dict(saved["config"]), precision_plan=plan)
    elif model.adaq_method != saved["method"]:
        raise ValueError(f"{path} holds {saved['method']!r} adapters but the model has {model.adaq_method!r} applied")
    tensors = load_file(weights_file)
    layers = svd_layers(model)
    saved_ranks = {name: tensors[key].shape[0] for name in layers if (key := f"{name}.triplet_mask") in tensors}
    compacted = {name: rank for name, rank in saved_ranks.items() if rank < layers[name].r}
    compact_layers(layers, leading_triplets(layers, compacted))  # saved after rank compaction: shapes first
    expected = adapter_state(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_file} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for key, target in expected.items():
            if target.shape != tensors[key].shape:
                raise ValueError(f"{weights_file}: {key} has shape {tuple(tensors[key].shape)}, the model {tuple(target.shape)}")
            target.copy_(tensors[key])
    return model


def export_peft(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads."""
    from peft import AdaLoraConfig, LoraConfig

    method = _applied_method(model)
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"method {method!r} has no adapters to export to PEFT")
    config: AdaQConfig = model.adaq_config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    targets = sorted({name.rsplit(".", 1)[-1] for name in layers})
    common = dict(
        target_modules=targets, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path or getattr(model, "name_or_path", None),
    )
    tensors = {}
    if method in SVD_METHODS:
        pattern = {}
        for name, layer in layers.items():
            keep = layer.triplet_mask.view(-1).bool()
            pattern[f"{name}.lora_E"] = keep.tolist() + [False] * (config.init_r - layer.r)
            tensors[f"base_model.model.{name}.lora_A"] = layer.lora_A[keep]
            tensors[f"base_model.model.{name}.lora_E"] = layer.lora_E[keep]
            tensors[f"base_model.model.{name}.lora_B"] = layer.lora_B[:, keep]
        peft_config = AdaLoraConfig(
            init_r=config.init_r, target_r=config.target_r, tinit=config.t_init, tfinal=config.t_final,
            deltaT=config.delta_t, beta1=config.beta1, beta2=config.beta2, orth_reg_weight=config.orth_reg_weight,
            total_step=config.total_steps, rank_pattern=pattern, **common,
        )
    else:
        for name, layer in layers.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A
            tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B
        peft_config = LoraConfig(r=config.r, **common)
    peft_config.save_pretrained(str(path))
    save_tensors_atomic(path / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    return path
