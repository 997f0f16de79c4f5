"""The causal-LM loss without its logits: a fused linear cross-entropy (book chapter 6; Sec. 3's training loss).

    C = (1/n) Σ_t −log softmax(W h_t)[y_t]   over the n answer tokens t (labels ≠ −100), h_t the final hidden state

transformers computes C from the whole [tokens × vocabulary] logits and keeps them, their float32 copy and the
log-softmax for backward: at 128 tokens of SmolLM2's 49,152-word vocabulary that is most of a 4-bit model's
activations, and no storage of the weights touches it. Here the head runs on a chunk of answer tokens at a time,
and each chunk's gradient with respect to its hidden states (and to the head's weight, where it trains) is taken at
once, in the forward pass: what stays for backward is ∂C/∂h, n × h values, not n × V. The backward pass only
scales it by the incoming gradient. Prompt tokens, whose labels are −100, never reach the head at all.

The head is whatever module the model has: a frozen or trainable `nn.Linear`, one tied to the embedding, or one the
precision plan stores in 8 or 4 bits (`quant/blockwise.py`); each chunk goes through its own forward and backward.
The loss and the gradients equal transformers' own within float tolerance (tests/test_fused_loss.py).
`AdaQConfig.fused_loss` switches it off; generation and evaluation never use it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE_INDEX

CHUNK_LOGITS = 2**20  # logits made at once: tokens per chunk × vocabulary ≤ this (4 MiB in float32; SmolLM2: 21
# tokens a chunk, ChatGLM2: 16). The step's loss tensors are about three of these instead of three [tokens × V].


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head: nn.Module, targets, *trainable):
        chunk = max(1, CHUNK_LOGITS // (getattr(head, "out_features", None) or head.weight.shape[0]))
        count = targets.numel()
        grad_hidden = torch.empty_like(hidden)
        grad_trainable = [torch.zeros_like(p) for p in trainable]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.enable_grad():
            for start in range(0, count, chunk):
                piece = hidden[start:start + chunk].detach().requires_grad_()
                logits = head(piece).float()  # as transformers' loss upcasts them
                loss = F.cross_entropy(logits, targets[start:start + chunk], reduction="sum") / count
                grads = torch.autograd.grad(loss, [piece, *trainable])
                grad_hidden[start:start + chunk] = grads[0]
                for accumulated, grad in zip(grad_trainable, grads[1:]):
                    accumulated += grad
                total += loss.detach()
        ctx.save_for_backward(grad_hidden, *grad_trainable)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, *grad_trainable = ctx.saved_tensors
        scale = grad_output.to(grad_hidden.dtype)
        return grad_hidden * scale, None, None, *(grad * grad_output.to(grad.dtype) for grad in grad_trainable)


def fused_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss from the final hidden states [batch, seq, h], the output head and the labels
    (shifted here, as transformers shifts them: position t predicts label t + 1), without holding the logits."""
    targets = labels[:, 1:].reshape(-1)
    answer = targets != IGNORE_INDEX
    if not bool(answer.any()):
        raise ValueError("every label is -100: the batch has no answer token to learn from")
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[answer]
    trainable = [p for p in head.parameters() if p.requires_grad]
    return _FusedLinearCrossEntropy.apply(hidden, head, targets[answer], *trainable)


class FusedLossModel(nn.Module):
    """A causal LM whose forward returns the training loss alone, by `fused_cross_entropy`.

    It holds the model as a submodule, so DistributedDataParallel can wrap it as it would the model itself.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, attention_mask=None, **kwargs) -> torch.Tensor:
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return fused_cross_entropy(hidden, self.model.get_output_embeddings(), labels)
