"""A quantization-aware start for the SVD adapters (book chapter 6; LoftQ, Li et al. 2023, one alternating step).

Storing W in 4 bits leaves an error R = W − dequant(quant(W)) that plain QLoRA-style training has to learn back
before it can learn the task. LoftQ starts the adapter by undoing it: ΔW is set to the best rank-r approximation
of R (Eckart–Young), so the model starts at W0_quant + ΔW, closer to W than W0_quant alone. Eq. 5 is already an
SVD, so the start is exact: P = U[:, :r], λ = S[:r] / scaling, Q = Vh[:r]. P and Q come out orthonormal, so the
orthogonality penalty of Eq. 6 starts at zero. LoftQ alternates quantize/SVD several times; one step keeps the
stored W0 the one the quantizer made, so the frozen base is the same with or without this start.
"""
from __future__ import annotations

import torch
from torch import nn

from ..quant.quantize import dequantized_weight
from .svd_adapter import SVDLinear


@torch.no_grad()
def loftq_start_layer(layer: SVDLinear, original_weight: torch.Tensor) -> None:
    """Set `layer`'s P, λ, Q so that its ΔW is the best rank-r approximation of W − dequant(W0_quant)."""
    if tuple(original_weight.shape) != (layer.out_features, layer.in_features):
        raise ValueError(f"original weight {tuple(original_weight.shape)} does not fit a layer of shape "
                         f"{(layer.out_features, layer.in_features)}")
    stored = dequantized_weight(layer.base_layer).float()
    residual = original_weight.to(stored.device, torch.float32) - stored
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    rank = min(layer.r, s.numel())  # a matrix thinner than r has fewer triplets; the rest keep λ = 0
    layer.lora_E.zero_()
    layer.lora_B[:, :rank] = u[:, :rank]
    layer.lora_E[:rank, 0] = s[:rank] / layer.scaling
    layer.lora_A[:rank] = vh[:rank]


def loftq_start(model: nn.Module, original_weights: dict[str, torch.Tensor]) -> None:
    """Give every SVD adapter named in `original_weights` (adapter name → W before quantization) the LoftQ start.

    Memory: `apply_method` fills `original_weights` with references to the target layers' own weights taken
    before quantization, not copies, so the peak is the full-precision model the caller already held plus its
    quantized copy. The dict is emptied as the layers are started, so each original is freed once its adapter
    has its start; on top of that, one layer's float32 residual and SVD factors (about 3 × out × in floats) are
    alive at a time.
    """
    layers = {name: module for name, module in model.named_modules() if isinstance(module, SVDLinear)}
    unknown = sorted(set(original_weights) - set(layers))
    if unknown:
        raise ValueError(f"no SVD adapter named {unknown}; apply method 'adaq_lora' before the LoftQ start")
    while original_weights:
        name, weight = original_weights.popitem()
        loftq_start_layer(layers[name], weight)
