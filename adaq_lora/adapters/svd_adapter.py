"""The SVD-form adapter of Eq. 5 (book chapter 3): W x = W0 x + P Λ Q x.

P ∈ R^{out×r} and Q ∈ R^{r×in} play the singular vectors and Λ = diag(λ) the singular values. λ starts at zero,
so ΔW = 0 at the start (Sec. 2.2) whatever P and Q are. The paper draws them "random Gaussian" and leaves the scale
open; `init` chooses: "gaussian", N(0, init_std²) as PEFT's AdaLoRA; "orthonormal", a Gaussian orthonormalised
(columns of P, rows of Q); "gradient" and "gradient_std", orthonormal or Gaussian until `gradient_start.py` turns each
column of P and row of Q, keeping its length, to the top singular vectors of the first training batches' gradient
(`train()` does, before the first step). Each triplet G_i = (P[:, i], λ_i, Q[i, :]) has a mask
entry: a masked triplet contributes nothing to the output, but its singular vectors are not deleted. At each
masking its λ_i is set to zero, as AdaLoRA's reference code and PEFT's `mask_to_budget` do, so a triplet that comes
back starts from ΔW ≈ 0 instead of jumping by (α/r)·λ_i·P_i Q_i, the instability Sec. 2.2 says masking avoids. While
hidden, λ_i still receives the gradient it would have if it were active (a straight-through mask), so its importance
keeps being measured and the triplet can come back when it scores well again; its singular vectors get no gradient
from the cost C (only Eq. 6's pull, when γ > 0) and stay nearly as they were. This is the paper's argument for
masking over pruning A and B of plain LoRA.

Names follow PEFT's AdaLoRA for export: `lora_B` is P, `lora_E` is λ (r × 1), `lora_A` is Q. The scale is
α / init_r, PEFT's `scaling / ranknum`, fixed while the mask changes.
"""
from __future__ import annotations

import torch
from torch import nn

from .lora import AdapterLayer


class SVDLinear(AdapterLayer):
    """Eq. 5 with a per-triplet mask: ΔW = (α / r) · P · diag(λ ⊙ m) · Q."""

    def __init__(self, base_layer: nn.Module, r: int, lora_alpha: float, dropout: float, init_std: float,
                 init: str = "gaussian"):
        super().__init__(base_layer, lora_alpha, r, dropout)
        self.r = r
        self.lora_A = nn.Parameter(torch.randn(r, self.in_features) * init_std)  # Q
        self.lora_E = nn.Parameter(torch.zeros(r, 1))  # λ, one singular value per row
        self.lora_B = nn.Parameter(torch.randn(self.out_features, r) * init_std)  # P
        if init in ("orthonormal", "gradient"):  # "gradient" until its batches are seen; "gradient_std" stays Gaussian
            with torch.no_grad():
                nn.init.orthogonal_(self.lora_A)  # orthonormal rows (QR of a Gaussian)
                nn.init.orthogonal_(self.lora_B)  # orthonormal columns
        self.register_buffer("triplet_mask", torch.ones(r, 1))

    @property
    def active_rank(self) -> int:
        return int(self.triplet_mask.sum().item())

    def masked_singular_values(self) -> torch.Tensor:
        """λ ⊙ m in value; in gradient, ∂L/∂λ reaches masked entries too (straight-through)."""
        lam = self.lora_E
        hidden = lam - lam.detach()  # zero in value, identity in gradient
        return lam * self.triplet_mask + hidden * (1 - self.triplet_mask)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ (self.lora_A * (self.lora_E * self.triplet_mask))) * self.scaling

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ (self.lora_A * self.masked_singular_values()).T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def set_mask(self, keep: torch.Tensor) -> None:
        """Show the triplets where `keep` is true, hide the others and zero their λ (AdaLoRA's masking); a merged
        layer cannot change its ΔW."""
        if self.merged:
            raise ValueError("unmerge the adapter before changing its mask: W0 holds the old ΔW")
        keep = keep.reshape(self.r, 1).to(self.triplet_mask.device)
        self.triplet_mask.copy_(keep.to(self.triplet_mask.dtype))
        self.lora_E.masked_fill_(~keep.bool(), 0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"


def orthogonality_penalty(layer: SVDLinear) -> torch.Tensor:
    """Eq. 6 for one matrix: R(P, Q) = ||PᵀP − I||²_F + ||Q Qᵀ − I||²_F.

    The paper squares the Frobenius norms and sums over matrices; PEFT's AdaLoRA takes the mean of the
    unsquared norms. We follow the paper; the weight γ absorbs the difference in scale.
    """
    eye = torch.eye(layer.r, device=layer.lora_A.device, dtype=layer.lora_A.dtype)
    p_term = layer.lora_B.T @ layer.lora_B - eye
    q_term = layer.lora_A @ layer.lora_A.T - eye
    return (p_term**2).sum() + (q_term**2).sum()


def svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, SVDLinear)}


def orthogonal_regularizer(model: nn.Module) -> torch.Tensor:
    """Σ_k R(P_k, Q_k) over every SVD adapter of the model (the sum in L = C + γ Σ_k R, Sec. 2.3)."""
    penalties = [orthogonality_penalty(layer) for layer in svd_layers(model).values()]
    if not penalties:
        raise ValueError("the model has no SVD adapters: apply method 'adalora' or 'adaq_lora' first")
    return torch.stack(penalties).sum()
