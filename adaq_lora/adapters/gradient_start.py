"""A gradient-aligned start for the SVD adapters (book chapter 3; after LoRA-GA, Wang et al. 2024).

Eq. 5 starts with Λ = 0, so ΔW = 0 whatever P and Q are, and the first steps move λ alone: ∂L/∂λ_i = s · P_iᵀ G Q_iᵀ,
where G = ∂L/∂W is the weight's gradient and s the adapter's scale. With P and Q Gaussian that is G seen along a
random rank-one direction, a small fraction of what G holds. If instead P and Q hold the top singular vectors of G
(P = −U[:, :r], Q = Vh[:r], λ = 0), ΔW is still zero, and ∂L/∂λ_i = −s σ_i: every triplet starts on one of the
steepest rank-one directions of the loss, and λ_i grows along it from the first step. Each column of P and row of
Q keeps the length it had, so the start can be unit ("gradient") or at PEFT's Gaussian scale ("gradient_std").

G is the gradient summed over the run's first training micro-batches (`AdaQConfig.gradient_start_batches`), taken
with the model as it trains (dropout, gradient checkpointing, the fused loss). It is never held whole: every adapted
matrix keeps a sketch of it, k = r + OVERSAMPLE columns wide, built in SKETCH_PASSES passes over the same batches (the
randomized SVD of Halko, Martinsson and Tropp 2011, with one power iteration): Y = G Ω with Ω Gaussian, then
Z = Gᵀ orth(Y), then Y' = G V with V = orth(Z); G ≈ Y' Vᵀ, and the SVD of the thin Y' = U S Wᵀ gives G's top
singular triplets, U and V W. A pass reads each layer's input x and the gradient δ of its output (G = Σ_t δ_t x_tᵀ,
so G M = δᵀ(x M) and Gᵀ M = xᵀ(δ M)) in the backward pass of an identity function put on the layer's output, so
checkpointing, which recomputes the forward, does not count a batch twice. Only λ requires a gradient meanwhile, so
no gradient of P or Q is ever allocated and the start's memory stays below a training step's. Under torchrun the
sketches are summed over the processes, so every rank starts from the same P and Q.
"""
from __future__ import annotations

import torch
from torch import nn

from .svd_adapter import SVDLinear

OVERSAMPLE = 8  # extra sketch columns beyond the rank: the range finder's accuracy margin (Halko et al., Sec. 4.2)
SKETCH_PASSES = 3  # G Ω, Gᵀ orth(·), G orth(·): one power iteration, for gradients whose spectrum decays slowly


class _Sketch:
    """One matrix's running product of G (or Gᵀ) with its current probe, pass by pass."""

    def __init__(self, layer: SVDLinear, seed: int):
        self.layer = layer
        width = min(layer.r + OVERSAMPLE, layer.in_features, layer.out_features)
        generator = torch.Generator().manual_seed(seed)  # the same Ω on every rank
        self.probe = torch.randn(layer.in_features, width, generator=generator).to(layer.lora_A.device)
        self.from_right = True  # this pass sums G · probe (out × k); otherwise Gᵀ · probe (in × k)
        self.total = torch.zeros(layer.out_features, width, device=layer.lora_A.device)

    def add(self, delta: torch.Tensor, x: torch.Tensor) -> None:
        delta = delta.reshape(-1, self.layer.out_features).float()
        x = x.reshape(-1, self.layer.in_features).float()
        self.total += delta.T @ (x @ self.probe) if self.from_right else x.T @ (delta @ self.probe)

    def next_pass(self) -> None:
        self.probe = torch.linalg.qr(self.total).Q  # an orthonormal basis of what this pass found
        self.from_right = not self.from_right
        self.total = torch.zeros(self.layer.out_features if self.from_right else self.layer.in_features,
                                 self.probe.shape[1], device=self.probe.device)

    @torch.no_grad()
    def start_layer(self) -> None:
        """From G V (the last pass, V orthonormal): P = −U[:, :r], Q = (V W)ᵀ[:r], each column and row keeping the
        length it had (1 from an orthonormal start), λ = 0. ΔW stays zero and ∂L/∂λ_i = −s σ_i ‖P_i‖ ‖Q_i‖."""
        u, _, wh = torch.linalg.svd(self.total, full_matrices=False)
        rows = wh @ self.probe.T  # the right singular vectors as rows, (V W)ᵀ
        rank = min(self.layer.r, u.shape[1])  # a matrix thinner than r keeps its first start beyond that
        p, q = self.layer.lora_B, self.layer.lora_A
        p[:, :rank] = (-u[:, :rank] * p[:, :rank].norm(dim=0)).to(p.dtype)
        q[:rank] = (rows[:rank] * q[:rank].norm(dim=1, keepdim=True)).to(q.dtype)
        self.layer.lora_E.zero_()


class _ReadGradient(torch.autograd.Function):
    """The identity on a layer's output whose backward hands δ and the layer's input x to the layer's sketch."""

    @staticmethod
    def forward(ctx, output, layer_input, sketch):
        ctx.save_for_backward(layer_input)
        ctx.sketch = sketch
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        (layer_input,) = ctx.saved_tensors
        ctx.sketch.add(grad_output, layer_input)
        return grad_output, None, None


def gradient_start(layers: dict[str, SVDLinear], batches: list[dict], loss_of, sum_over_ranks=None) -> None:
    """Give every layer of `layers` the gradient-aligned start from the gradient of `loss_of(batch)` summed over
    `batches` (this process's share of the run's first micro-batches; `sum_over_ranks(tensor)` sums in place over
    the processes under torchrun)."""
    if not batches:
        raise ValueError("the gradient start needs at least one training micro-batch")
    sketches = {name: _Sketch(layer, seed=index) for index, (name, layer) in enumerate(sorted(layers.items()))}
    hooks = [layer.register_forward_hook(lambda module, args, output, sketch=sketches[name]:
                                         _ReadGradient.apply(output, args[0].detach(), sketch))
             for name, layer in layers.items()]
    trainable = [(p, p.requires_grad) for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    try:
        for p, _ in trainable:  # λ alone keeps a gradient: the backward pass reaches every layer through it
            p.requires_grad_(False)
        for sketch_pass in range(SKETCH_PASSES):
            for batch in batches:
                loss_of(batch).backward()
            for sketch in sketches.values():
                if sum_over_ranks is not None:
                    sum_over_ranks(sketch.total)
                sketch.next_pass() if sketch_pass < SKETCH_PASSES - 1 else sketch.start_layer()
    finally:
        for hook in hooks:
            hook.remove()
        for p, requires_grad in trainable:
            p.requires_grad_(requires_grad)
        for layer in layers.values():
            layer.lora_E.grad = None
