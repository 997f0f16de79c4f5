"""ADAQ-LoRA: fine-tuning a causal LM with low-rank adapters on a 4-bit base and an importance-driven rank budget.

The package the book teaches; each module names the paper's equation or section it implements. The public entry
points, in the order of the pipeline the book walks through:

model → `load_model`; configuration → `AdaQConfig`, `TrainConfig`; quantized base and adapters → `prepare`
(or `apply_method`, the same on the model alone); rank budget → `RankAllocator`, `orthogonal_regularizer`;
training → `training_step`, `train`; evaluation → `generate_answers`, `score`; saving → `save_adapters`,
`load_adapters`, `export_peft`; the paper's grid → `run_experiment`, `build_tables`.
"""
from importlib.metadata import PackageNotFoundError, version

from .models import load_model
from .config import AdaQConfig, TrainConfig
from .tuners import (Tuner, adapter_layers, apply_method, export_peft, load_adapters, method_names, prepare,
                     save_adapters, set_merged, trainable_parameters)
from .adapters import RankAllocator, orthogonal_regularizer
from .training import train, training_step
from .scoring import generate_answers, score
from .grid import build_tables, run_experiment

try:
    __version__ = version("adaq-lora")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "load_model", "AdaQConfig", "TrainConfig", "prepare", "apply_method", "Tuner", "method_names", "adapter_layers",
    "trainable_parameters", "set_merged", "RankAllocator", "orthogonal_regularizer", "training_step", "train",
    "generate_answers", "score", "save_adapters", "load_adapters", "export_peft", "run_experiment", "build_tables",
]
