"""Data parallelism over N processes with torch.distributed, launched by torchrun (Sec. 3's recipe, scaled out).

    torchrun --nproc_per_node=8 -m adaq_lora.cli run --method adaq_lora --dataset ... --profile paper --out DIR

torchrun starts N processes and tells each its RANK, LOCAL_RANK and WORLD_SIZE; `join_world` opens the process
group (NCCL with one GPU per process, gloo on the CPU) and `replicate` wraps the model in PyTorch's
DistributedDataParallel, which all-reduces (averages) the gradients during the backward pass. An optimizer step
then sees N × batch_size × grad_accum examples: the loop hands rank r its share of the order a single process
with grad_accum × N would follow, so N processes train as one process accumulating N times as many micro-batches.

Why the rank budget of Sec. 2.3 stays the same on every rank: the allocator scores triplets from |w · ∂L/∂w|
after the optimizer step, when every rank holds the same averaged gradients and the same weights, and it steps on
the same step count everywhere, so scores, EMAs and masks agree (tie-breaking by index is deterministic). DDP must
not broadcast buffers (the masks are buffers) or a divergence would be papered over: `check_masks_agree` compares a
hash of every rank's masks after each allocator step and names the step where they differ. Rank compaction
replaces the adapters' parameters, which DDP's buckets still hold, so the loop rebuilds the wrapper after it.

Sharded data parallelism (FSDP, DeepSpeed ZeRO-3) shards parameters and gradients, so each rank's allocator would
threshold its own shard; it is refused. The tensors it would need are small, but that route is not built here.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

SHARDED_LAUNCHERS = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")  # what accelerate sets for FSDP / ZeRO


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process's index among all processes
    size: int = 1  # the number of processes (GPUs), WORLD_SIZE
    local_rank: int = 0  # its index on this node: the GPU it drives

    @property
    def main(self) -> bool:
        """The one process that writes results, checkpoints, predictions and adapters."""
        return self.rank == 0


def current_world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def join_world(device: str) -> World:
    """Open the process group torchrun describes (none when WORLD_SIZE is 1 or unset); return this process's place."""
    for variable in SHARDED_LAUNCHERS:
        if os.environ.get(variable, "").lower() in ("1", "true"):
            raise ValueError(f"{variable} is set: sharded data parallelism (FSDP, DeepSpeed ZeRO-3) shards the "
                             "gradients the rank allocator scores, so each rank would mask from its own shard. Launch "
                             "with torchrun instead: DistributedDataParallel is the supported route")
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size == 1 or dist.is_initialized():
        return current_world()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return current_world()


def leave_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse_sharded(model: nn.Module) -> None:
    """A model already wrapped by FSDP is refused for the reason in the module docstring."""
    if any(type(module).__name__ in ("FullyShardedDataParallel", "FSDPModule") for module in model.modules()):
        raise ValueError("the model is sharded (FSDP): the rank allocator needs every rank's full gradients; "
                         "train it with DistributedDataParallel (torchrun) instead")


def replicate(model: nn.Module) -> nn.Module:
    """`model` wrapped in DistributedDataParallel; the masks are buffers, and each rank keeps its own."""
    device = next(model.parameters()).device
    with warnings.catch_warnings():  # torch suggests forward_sync_buffers, which would still sync them at init
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   broadcast_buffers=False)


def accumulating(replica: nn.Module | None, last: bool):
    """No gradient all-reduce until the last micro-batch of a step (DDP's `no_sync`)."""
    return replica.no_sync() if replica is not None and not last else nullcontext()


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each value averaged over the processes (the same list in one process)."""
    world = current_world()
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / world.size).tolist()


def sum_over_ranks(value: int) -> int:
    if current_world().size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor)
    return int(tensor.item())


def sum_tensor_over_ranks(tensor: torch.Tensor) -> None:
    """Replace `tensor` by its sum over the processes, in place."""
    if current_world().size > 1:
        dist.all_reduce(tensor)


def mask_digest(model: nn.Module) -> int:
    """A 63-bit hash of every triplet mask of `model`, in module order."""
    digest = hashlib.sha256()
    for name, buffer in model.named_buffers():
        if name.endswith("triplet_mask"):
            digest.update(name.encode())
            digest.update(buffer.detach().to("cpu", torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def check_masks_agree(model: nn.Module, step: int) -> None:
    """Raise, naming `step`, if the ranks' triplet masks differ (a cheap all-gather of one hash each)."""
    if current_world().size == 1:
        return
    digests = gather_objects(mask_digest(model))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks' triplet masks differ after step {step} (hashes by rank: {digests}): the "
                           "replicas would train different adapters. Were the gradients all-reduced before the "
                           "allocator read them (the model trained through DistributedDataParallel)?")


def gather_objects(item) -> list:
    """`item` from every rank, in rank order (one-element list in one process)."""
    if current_world().size == 1:
        return [item]
    gathered = [None] * current_world().size
    dist.all_gather_object(gathered, item)
    return gathered


def barrier() -> None:
    if current_world().size > 1:
        dist.barrier()
