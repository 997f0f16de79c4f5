"""The causal-LM loss without its logits: a fused linear cross-entropy, tiled over the vocabulary (book chapter 6;
Sec. 3's training loss).

    C = (1/n) Σ_t [ log Σ_v exp(z_tv) − z_t,y_t ],   z_t = W h_t,   over the n answer tokens t (labels ≠ −100)

transformers computes C from the whole [tokens × vocabulary] logits and keeps them, their float32 copy and the
log-softmax for backward: at 512 tokens of ChatGLM2's 65,024-word vocabulary that is 400 MiB, more than a 4-bit
model's other activations, and no storage of the weights touches it. Here the head's rows W_j are taken one block
at a time, as cut cross-entropy does (Wijmans et al., 2024):

  pass 1  for each block j: z_j = W_j h for every answer token, a running log-sum-exp per token
          (lse ← logaddexp(lse, logsumexp(z_j))) and the target's logit where it falls in the block; C from those.
  pass 2  for each block j again: p_j = exp(z_j − lse) minus 1 at each target, over n, is ∂C/∂z_j, so
          ∂C/∂h += p_j W_j and, where the head trains, ∂C/∂W_j = p_jᵀ h.

Both passes run in the forward call, so what stays for the backward pass is ∂C/∂h (n × h values, not n × V), which
the backward only scales by the incoming gradient. The logits alive at any instant are one block of at most
`CHUNK_LOGITS`; a head that the precision plan stores in 2 to 8 bits (`quant/blockwise.py`) is decoded twice a
step, one block of rows at a time, however many answer tokens there are. (Tiling over tokens instead decodes the
whole head twice per chunk of tokens: 64 times a step at 512 tokens of ChatGLM2-6B.) Prompt tokens, whose labels
are −100, never reach the head. The head is an `nn.Linear` (frozen, trainable or tied to the embedding) or a
`BlockwiseLinear`; the loss and the gradients equal transformers' own within float tolerance
(tests/test_fused_loss.py). `AdaQConfig.fused_loss` switches it off; generation and evaluation never use it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import IGNORE_INDEX
from ..quant.blockwise import BlockwiseLinear, chunk_rows

CHUNK_LOGITS = 2**20  # logits made at once, answer tokens × head rows ≤ this (4 MiB in float32), in blocks of at
# most a decoding chunk's rows (`blockwise.chunk_rows`): ChatGLM2-6B's 65,024 rows go 576 at a time


def block_rows(tokens: int, vocab: int, hidden: int) -> int:
    """The head rows taken at once for `tokens` answer tokens of width `hidden` (the memory model counts the same)."""
    return max(1, min(vocab, chunk_rows(hidden), CHUNK_LOGITS // tokens))


def head_rows(head: nn.Module, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows start:stop of the head's weight (decoded, for a blockwise head; a view, for a dense one) and its bias."""
    bias = None if head.bias is None else head.bias[start:stop]
    if isinstance(head, BlockwiseLinear):
        return head.matrix.rows(slice(start, stop)), bias
    if isinstance(head, nn.Linear):
        return head.weight[start:stop], bias
    raise TypeError(f"the fused loss reads the output head's rows, and a {type(head).__name__} does not have them "
                    f"as an nn.Linear or BlockwiseLinear does: train with fused_loss=False")


def block_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z_j in float32, made in the activations' dtype first and then upcast, as transformers' loss makes them."""
    logits = hidden @ weight.to(hidden.dtype).T
    return (logits if bias is None else logits + bias.to(logits.dtype)).float()


class _VocabularyTiledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head: nn.Module, targets, weight, bias):
        """`weight`, `bias`: the head's own parameters where they train (autograd hands them their gradients),
        else None."""
        count, vocab = targets.numel(), head.out_features
        rows = block_rows(count, vocab, hidden.shape[1])
        token = torch.arange(count, device=hidden.device)
        with torch.no_grad():
            lse = torch.full((count,), float("-inf"), device=hidden.device)
            target_logit = torch.zeros(count, device=hidden.device)
            for start in range(0, vocab, rows):
                logits = block_logits(hidden, *head_rows(head, start, start + rows))
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
                inside = (targets >= start) & (targets < start + rows)
                target_logit[inside] = logits[token[inside], targets[inside] - start]
            grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
            grad_weight = None if weight is None else torch.zeros_like(weight)
            grad_bias = None if bias is None else torch.zeros_like(bias)
            for start in range(0, vocab, rows):
                block_weight, block_bias = head_rows(head, start, start + rows)
                probabilities = block_logits(hidden, block_weight, block_bias).sub_(lse[:, None]).exp_()
                inside = (targets >= start) & (targets < start + rows)
                probabilities[token[inside], targets[inside] - start] -= 1
                grad_logits = probabilities.div_(count).to(hidden.dtype)
                grad_hidden += (grad_logits @ block_weight.to(hidden.dtype)).float()
                if grad_weight is not None:
                    grad_weight[start:start + rows] = (grad_logits.T @ hidden).to(grad_weight.dtype)
                if grad_bias is not None:
                    grad_bias[start:start + rows] = probabilities.sum(0).to(grad_bias.dtype)
        ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight, grad_bias)
        return (lse - target_logit).sum() / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scaled = [None if grad is None else grad * grad_output.to(grad.dtype)
                  for grad in (grad_hidden, grad_weight, grad_bias)]
        return scaled[0], None, None, scaled[1], scaled[2]


def fused_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss from the final hidden states [batch, seq, h], the output head and the labels
    (shifted here, as transformers shifts them: position t predicts label t + 1), without holding the logits."""
    targets = labels[:, 1:].reshape(-1)
    answer = targets != IGNORE_INDEX
    if not bool(answer.any()):
        raise ValueError("every label is -100: the batch has no answer token to learn from")
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[answer]
    own = dict(head.named_parameters(recurse=False))  # not `head.weight`: a BlockwiseLinear would decode it whole
    trainable = [p if p is not None and p.requires_grad else None for p in (own.get("weight"), own.get("bias"))]
    return _VocabularyTiledCrossEntropy.apply(hidden, head, targets[answer], *trainable)


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
