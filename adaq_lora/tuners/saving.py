"""Saving adapters, loading them back, and exporting them to PEFT's format (book chapters 6 and 7).

Our own format keeps everything a resumed run needs: every adapter tensor (masked triplets included, since
they may come back), the triplet masks, the method, its `AdaQConfig` and the rank pattern, in
`adaq_adapters.safetensors` + `adaq_config.json`. Adapters compacted in the final phase are saved at their kept
rank; loading compacts the fresh model's adapters to the saved ranks first. An `adaq_lora` model's precision plan
(`precision_plan.json`) is saved beside them, and loading stores the fresh base by it.

Everything is read from the `Tuner` (its method, config and precision plan), not from the model. `save` is what a
run calls: a PEFT peer saves itself with PEFT's `save_pretrained`, ours write both formats side by side.

`export_peft` writes what `peft.PeftModel.from_pretrained` reads: LoRA/QLoRA adapters as a PEFT `LoraConfig`,
AdaLoRA/ADAQ-LoRA adapters as an `AdaLoraConfig` whose rank pattern lists the kept triplets. PEFT then shrinks
each SVD adapter to its kept rank and keeps the scale α / init_r, so its logits equal ours. PEFT's rank pattern
indexes its init_r triplets, so a compacted adapter's pattern is its kept count padded with False to init_r.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..adapters.compaction import compact_layers, leading_triplets
from ..adapters.svd_adapter import SVDLinear, svd_layers
from ..atomic import save_tensors_atomic, write_json_atomic
from ..config import AdaQConfig
from ..quant.precision import PLAN_FILE, PrecisionPlan
from .methods import adapter_layers
from .peers import peft_config
from .registry import method_spec
from .tuner import Tuner

WEIGHTS_FILE = "adaq_adapters.safetensors"
CONFIG_FILE = "adaq_config.json"
ADAPTER_TENSORS = ("lora_A", "lora_E", "lora_B", "triplet_mask")


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


def _require_tuner(tuner, action: str) -> None:
    if not isinstance(tuner, Tuner):
        raise ValueError(f"{action} takes the Tuner that holds the method, its config and its precision plan; got a "
                         f"{type(tuner).__name__}: make it with adaq_lora.prepare(model, method, config) "
                         "(apply_method alone keeps no state)")


def save(tuner: Tuner, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """What a run keeps of its method: PEFT's own files for a peer; ours and their PEFT export for our methods."""
    if tuner.spec.peer:
        tuner.model.save_pretrained(str(path))
        return Path(path)
    save_adapters(tuner, path)
    if tuner.spec.adapter is not None:
        export_peft(tuner, path, base_model_name_or_path)
    return Path(path)


def save_adapters(tuner: Tuner, path: str | Path) -> Path:
    """Write the adapters, their masks, the method, its config and the base's precision plan into the folder `path`."""
    _require_tuner(tuner, "save_adapters")
    if tuner.spec.peer:
        raise ValueError(f"{tuner.method} is PEFT's: save it with save(tuner, path), which calls its save_pretrained")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(path / WEIGHTS_FILE, adapter_state(tuner.model))
    write_json_atomic(path / CONFIG_FILE, {
        "method": tuner.method,
        "config": tuner.config.to_dict(),
        "rank_pattern": rank_pattern(tuner.model),
        "base_model": getattr(tuner.model, "name_or_path", None),
    })
    if tuner.precision_plan is not None:
        tuner.precision_plan.save(path)
    return path


def load_adapters(target: nn.Module | Tuner, path: str | Path) -> Tuner:
    """The saved adapters on `target`: a fresh base model (the saved method is applied to it first, its base stored
    by the saved precision plan) or a Tuner of the same method; returns the Tuner."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: {path} is not a folder written by adaq_lora.save_adapters")
    saved = json.loads(config_file.read_text())
    if isinstance(target, Tuner):
        if target.method != saved["method"]:
            raise ValueError(f"{path} holds {saved['method']!r} adapters but the tuner is {target.method!r}")
        tuner = target
    else:
        # the base is stored as it was in training: by the saved precision plan, not by one made anew
        plan = PrecisionPlan.load(path) if (path / PLAN_FILE).exists() else None
        tuner = method_spec(saved["method"]).build(target, AdaQConfig.from_dict(saved["config"]), None, plan)
    model = tuner.model
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
        for key, tensor in expected.items():
            if tensor.shape != tensors[key].shape:
                raise ValueError(f"{weights_file}: {key} has shape {tuple(tensors[key].shape)}, the model {tuple(tensor.shape)}")
            tensor.copy_(tensors[key])
    return tuner


def export_peft(tuner: Tuner, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads."""
    _require_tuner(tuner, "export_peft")
    layers = adapter_layers(tuner.model)
    if not layers:
        raise ValueError(f"method {tuner.method!r} has no adapters to export to PEFT")
    config = tuner.config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    targets = sorted({name.rsplit(".", 1)[-1] for name in layers})
    base = base_model_name_or_path or getattr(tuner.model, "name_or_path", None)
    tensors, extra = {}, {}
    if tuner.spec.svd:
        pattern = extra["rank_pattern"] = {}
        for name, layer in layers.items():
            keep = layer.triplet_mask.view(-1).bool()
            pattern[f"{name}.lora_E"] = keep.tolist() + [False] * (config.init_r - layer.r)
            tensors[f"base_model.model.{name}.lora_A"] = layer.lora_A[keep]
            tensors[f"base_model.model.{name}.lora_E"] = layer.lora_E[keep]
            tensors[f"base_model.model.{name}.lora_B"] = layer.lora_B[:, keep]
    else:
        for name, layer in layers.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A
            tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B
    exported = peft_config(tuner.spec.adapter, config, targets, config.orth_reg_weight, base_model_name_or_path=base,
                           **extra)
    exported.save_pretrained(str(path))
    save_tensors_atomic(path / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    return path
