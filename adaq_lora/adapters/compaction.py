"""Rank compaction: the final phase's memory saving (book chapter 6; paper Sec. 2.3, final phase).

Masking a triplet frees no byte: its column of P, its λ, its row of Q, their gradients, their two Adam moments
and their two importance EMAs all stay allocated at init_r. Once the final phase fixes the mask the hidden
triplets can never come back, so we shrink every SVD adapter to its kept triplets, slice the optimizer's state
the same way and drop the EMAs (the allocator never reads them again). The scale α / init_r is unchanged and a
masked triplet contributed nothing, so the model's outputs do not change.

Two things do change, so a compacted run and a masked one do not train exactly alike. Eq. 6's orthogonality term
now covers the kept triplets only, where a masked run's term also pulls the kept columns towards orthogonality with
the hidden ones (γ = 0 removes that). And a masked λ still receives its straight-through gradient
(svd_adapter.py), which counts in the norm that clipping to 0.1 scales every gradient by; once compacted it is
gone, so wherever the clip binds the kept parameters take slightly larger steps than in the masked run.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .svd_adapter import SVDLinear

Take = Callable[[torch.Tensor], torch.Tensor]
Move = tuple[nn.Parameter, nn.Parameter, Take]  # (old parameter, its compacted successor, how to slice alike)


def _slicers(keep: torch.Tensor) -> dict[str, Take]:
    """How each tensor of a triplet-shaped parameter keeps its triplets: Q and λ by row, P by column."""
    rows: Take = lambda t: t[keep.to(t.device)]
    return {"lora_A": rows, "lora_E": rows, "lora_B": lambda t: t[:, keep.to(t.device)]}


@torch.no_grad()
def compact_layer(layer: SVDLinear, keep: torch.Tensor) -> list[Move]:
    """Replace P, λ, Q by new parameters holding the triplets where `keep` is true."""
    if layer.merged:
        raise ValueError("unmerge the adapter before compacting it: W0 holds the ΔW of all its triplets")
    keep = keep.reshape(-1).bool()
    if keep.numel() != layer.r:
        raise ValueError(f"keep has {keep.numel()} entries, the layer {layer.r} triplets")
    moves = []
    for name, take in _slicers(keep).items():
        old = getattr(layer, name)
        new = nn.Parameter(take(old.detach()), requires_grad=old.requires_grad)
        if old.grad is not None:  # compaction may sit anywhere between backward() and zero_grad()
            new.grad = take(old.grad)
        setattr(layer, name, new)
        moves.append((old, new, take))
    layer.r = int(keep.sum())
    layer.triplet_mask = torch.ones(layer.r, 1, dtype=layer.triplet_mask.dtype, device=layer.triplet_mask.device)
    return moves


def _moved_value(optimizer: torch.optim.Optimizer, value, old: nn.Parameter, new: nn.Parameter, take: Take):
    if not (torch.is_tensor(value) and value.shape == old.shape):
        return value  # step counters and other per-parameter scalars carry over as they are
    if not getattr(value, "is_paged", False):
        return take(value)
    # bitsandbytes keeps a paged buffer (CUDA managed memory, parameters of 1e5+ elements) in a list it
    # prefetches from; the new one must come from the same allocator and the old one leave that list. bitsandbytes
    # has no call that returns managed memory, so only the non-paged states give their bytes back. The optimizer's
    # kernels write managed memory asynchronously: wait for them before reading it.
    torch.cuda.synchronize()
    kept = take(value)
    buffer = optimizer.get_state_buffer(new, dtype=value.dtype)
    buffer.copy_(kept)
    optimizer.page_mng.paged_tensors = [t for t in optimizer.page_mng.paged_tensors if t is not value]
    return buffer


def move_optimizer_state(optimizer: torch.optim.Optimizer, moves: list[Move]) -> None:
    """Put each new parameter where the old one was in `optimizer.param_groups`, with its state sliced alike.

    torch's AdamW keeps `exp_avg`/`exp_avg_sq` (and `max_exp_avg_sq`), bitsandbytes' 32-bit optimizers
    `state1`/`state2`: all of the parameter's shape. The step counter is shared by every element and carries over.
    """
    positions = {id(p): (group, i) for group in optimizer.param_groups for i, p in enumerate(group["params"])}
    for old, new, take in moves:
        if id(old) not in positions:
            continue  # a parameter this optimizer does not train
        group, index = positions[id(old)]
        group["params"][index] = new
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {key: _moved_value(optimizer, value, old, new, take) for key, value in state.items()}


def refuse_unmovable_state(optimizer: torch.optim.Optimizer | None) -> None:
    """Raise before anything is replaced if `optimizer`'s state cannot be sliced by triplet (a half-moved
    optimizer would go on updating parameters the model no longer holds)."""
    if optimizer is not None and any("absmax1" in state for state in optimizer.state.values()):
        raise ValueError("8-bit optimizer states are quantized in blocks of 256 values and cannot be sliced by "
                         "triplet: use a 32-bit optimizer or AdaQConfig(compact_ranks=False)")


def kept_triplets(layers: dict[str, SVDLinear]) -> dict[str, torch.Tensor]:
    """Each layer's current mask as a boolean vector: the triplets compaction keeps."""
    return {name: layer.triplet_mask.view(-1).bool() for name, layer in layers.items()}


def leading_triplets(layers: dict[str, SVDLinear], ranks: dict[str, int]) -> dict[str, torch.Tensor]:
    """The first ranks[name] triplets of each layer: shapes for a compacted state that is copied in next."""
    return {name: torch.arange(layer.r, device=layer.triplet_mask.device) < ranks[name]
            for name, layer in layers.items() if name in ranks}


def compact_layers(layers: dict[str, SVDLinear], keeps: dict[str, torch.Tensor],
                   optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Compact layers[name] to keeps[name] for every name in `keeps`; the optimizer's state follows."""
    refuse_unmovable_state(optimizer)
    moves = [move for name, keep in keeps.items() for move in compact_layer(layers[name], keep)]
    if optimizer is not None:
        move_optimizer_state(optimizer, moves)
    return {name: layers[name].r for name in keeps}


def compact_to_masks(layers: dict[str, SVDLinear], optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Shrink each of `layers` (`svd_layers` of a model) to its unmasked triplets; returns the rank each one keeps."""
    return compact_layers(layers, kept_triplets(layers), optimizer)
