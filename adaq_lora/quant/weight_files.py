"""A model's safetensors files, read a tensor at a time (the precision plan of a model loaded in 4 bits, chapter 6):
which files hold the weights, and one matrix read alone, so that a 16-bit model is never in memory whole."""
from __future__ import annotations

from pathlib import Path

import torch


def weight_files(folder: str | Path) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}: the precision plan of a model loaded in 4 bits "
                                "is scored from its safetensors files (ChatGLM2 snapshots are converted to them)")
    return files


def matrix_from_files(folder: str | Path, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """The 16-bit weight of the matrix `name` (a module name of the plan), read alone from the safetensors files."""
    from safetensors import safe_open

    for file in weight_files(folder):
        with safe_open(file, framework="pt", device=str(device)) as tensors:
            if f"{name}.weight" in tensors.keys():
                return tensors.get_tensor(f"{name}.weight")
    raise KeyError(f"no tensor {name}.weight in the safetensors files of {folder}: the precision plan was scored from "
                   "other files than the model was loaded from")
