"""Methods: what each one is (`registry`), how ours and PEFT's are applied (`methods`, `peers`), the `Tuner` the
training loop drives, and saving, loading and export (book chapters 1, 3, 6 and 7).

Importing this package registers every method: the paper's six from `methods`, PEFT's three from `peers`.
"""
from __future__ import annotations

from torch import nn

from ..config import AdaQConfig
from .methods import adapter_layers, apply_method, set_merged, trainable_parameters
from .peers import PeftTuner
from .registry import MethodSpec, method_names, method_spec
from .saving import export_peft, load_adapters, save, save_adapters
from .tuner import Tuner


def prepare(model: nn.Module, method: str, config: AdaQConfig | None = None, *,
            calibration: list[dict] | None = None, precision_plan=None) -> Tuner:
    """Apply `method` (ours or a PEFT peer) to `model` and return the Tuner the training loop drives.

    `calibration` (batches of one example) and `precision_plan` reach the precision plan; only `adaq_lora` uses them.
    """
    return method_spec(method).build(model, config or AdaQConfig(), calibration, precision_plan)


__all__ = ["MethodSpec", "PeftTuner", "Tuner", "adapter_layers", "apply_method", "export_peft", "load_adapters",
           "method_names", "method_spec", "prepare", "save", "save_adapters", "set_merged", "trainable_parameters"]
