"""The LoRA layer of Eq. 1 (book chapter 1): Y = W0 x + (α / r) B A x.

The frozen base layer W0 may be a plain `nn.Linear` (LoRA) or a bitsandbytes 4-bit layer (QLoRA); the adapter
only needs its output. A starts Gaussian and B at zero, so ΔW = B A = 0 and the wrapped model computes exactly
what the base computed before training. Adapters are float32 whatever the base's dtype, as PEFT's
`autocast_adapter_dtype`: Adam on bfloat16 weights loses small updates. Parameter names follow PEFT (`lora_A` is r × in, `lora_B` is out × r)
so that the adapters export to PEFT's format by renaming alone.
"""
from __future__ import annotations

import torch
from torch import nn


class AdapterLayer(nn.Module):
    """What every adapter shares: a frozen `base_layer`, its sizes, input dropout and the scale."""

    def __init__(self, base_layer: nn.Module, lora_alpha: float, rank_for_scale: int, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        for param in base_layer.parameters():
            param.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.scaling = lora_alpha / rank_for_scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in), the update this adapter adds to W0, scale included."""
        raise NotImplementedError

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        adapter_x = self.dropout(x).to(self.lora_B.dtype)
        return result + self.adapter_output(adapter_x).to(result.dtype)

    def _require_float_base(self, action: str) -> nn.Linear:
        # a 4-bit layer stores packed uint8 codes; a blockwise one (blockwise.py) decodes a copy on every read
        if not self.base_layer.weight.is_floating_point() or hasattr(self.base_layer, "matrix"):
            raise ValueError(
                f"cannot {action} into a {type(self.base_layer).__name__}: re-quantizing W0 + ΔW would add a new "
                "quantization error; merge on a full-precision base (method 'lora' or 'adalora'), or export the "
                "adapters and merge on a float copy of the base"
            )
        return self.base_layer

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into W0 so inference costs one matmul, as the frozen model did."""
        if self.merged:
            return
        base = self._require_float_base("merge")
        base.weight += self.delta_weight().to(base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ΔW out of W0 again, so training can go on."""
        if not self.merged:
            return
        base = self._require_float_base("unmerge")
        base.weight -= self.delta_weight().to(base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scaling={self.scaling:g}"


class LoraLinear(AdapterLayer):
    """Eq. 1: W0 x + (α / r) B A x, with A ∈ R^{r×d} Gaussian and B ∈ R^{n×r} zero at the start."""

    def __init__(self, base_layer: nn.Module, r: int, lora_alpha: float, dropout: float, init_std: float):
        super().__init__(base_layer, lora_alpha, r, dropout)
        self.r = r
        self.lora_A = nn.Parameter(torch.randn(r, self.in_features) * init_std)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r))

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.T @ self.lora_B.T) * self.scaling
