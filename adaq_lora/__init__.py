"""ADAQ-LoRA: fine-tuning a causal LM with low-rank adapters on a 4-bit base and an importance-driven rank budget.

The package the book teaches; each module names the paper's equation or section it implements.
"""
from importlib.metadata import PackageNotFoundError, version

from .config import METHODS, AdaQConfig
from .methods import adapter_layers, apply_method, set_merged, trainable_parameters
from .models import load_model
from .rank_allocator import RankAllocator
from .saving import export_peft, load_adapters, save_adapters
from .svd_adapter import orthogonal_regularizer

try:
    __version__ = version("adaq-lora")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "METHODS", "AdaQConfig", "RankAllocator", "adapter_layers", "apply_method", "export_peft", "load_adapters",
    "load_model", "orthogonal_regularizer", "save_adapters", "set_merged", "trainable_parameters",
]
