"""The paper's training recipe as a plain loop (Sec. 3; book chapters 6 and 7).

Paged AdamW from bitsandbytes, maximum gradient norm 0.1, batch size 1, a constant learning rate of 3e-4: the
recipe of Sec. 3. The loss is the causal-LM cross-entropy on the answer tokens plus γ Σ_k R(P_k, Q_k) for the
SVD methods (Sec. 2.3), and the rank allocator steps after every optimizer step, before `zero_grad`; when its
final phase fixes the mask it compacts the adapters and the optimizer's state to the kept triplets. Before the first
step (not on resume) SVD adapters with a gradient start are turned to the first micro-batches' gradient
(`adapters/gradient_start.py`), and the optimizer gets the tuner's parameter groups (λ's own learning rate).

The batch order is a function of the seed and the step alone, and a checkpoint holds the trainable tensors, the
optimizer and allocator state and the random generators' states (the CPU's and, on a GPU, every CUDA device's,
which dropout draws from there), so a run killed after a checkpoint and resumed ends with the same adapters as a
run that went straight through. Checkpoints are written atomically: a crash never leaves one half-written. The
model leaves `train()` as it came in: its mode, its gradient checkpointing and `config.use_cache` are put back.

Launched by torchrun (`distributed.py`), each of the N processes trains a DDP replica on its share of every step's
micro-batches; rank 0 alone writes the checkpoints, holding every rank's generator states, and shows progress.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..atomic import torch_save_atomic
from ..config import TrainConfig
from ..data import collate_examples, pad_token_id, tokenize_records
from ..tuners.tuner import Tuner
from .distributed import current_world, gather_objects, refuse_sharded, replicate
from .step import (NonFiniteLoss, StepOutcome, loss_model, make_optimizer, set_gradient_checkpointing,
                   start_from_gradient, training_step)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss per optimizer step (regularizer included)
    lm_losses: list[float] = field(default_factory=list)  # its cross-entropy alone, comparable across methods
    budgets: list[int | None] = field(default_factory=list)  # rank budget in force after each step
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step
    tokens: int = 0  # non-padding tokens seen
    start_seconds: float = 0.0  # the adapters' gradient-aligned start before the first step (gradient_start.py)

    @property
    def train_seconds(self) -> float:
        return self.start_seconds + sum(self.step_seconds)

    @property
    def median_step_seconds(self) -> float:
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else float("nan")


def micro_batch_order(n_examples: int, batch_size: int, seed: int, micro_step: int) -> list[int]:
    """The example indices of micro-batch `micro_step`: each epoch a fresh seeded shuffle, a function of the step."""
    per_epoch = max(1, n_examples // batch_size)
    epoch, position = divmod(micro_step, per_epoch)
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[position * batch_size : (position + 1) * batch_size]


def _trainable_state(tuner: Tuner) -> dict[str, torch.Tensor]:
    state = {name: p.detach().clone() for name, p in tuner.model.named_parameters() if p.requires_grad}
    state.update({name: b.clone() for name, b in tuner.model.named_buffers() if name.endswith("triplet_mask")})
    return state


def _generator_states() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(path: Path, tuner: Tuner, optimizer, step: int, result: TrainResult) -> None:
    """Rank 0 writes; the generators' states are every rank's (gathered), as each rank draws its own dropout."""
    generators = gather_objects(_generator_states())
    if not current_world().main:
        return
    path.mkdir(parents=True, exist_ok=True)
    payload = {"step": step, "trainable": _trainable_state(tuner), "optimizer": optimizer.state_dict(),
               "tuner": tuner.state_dict(), "rng_by_rank": generators, "result": result.__dict__}
    torch_save_atomic(path / CHECKPOINT_FILE, payload)


def load_checkpoint(path: Path, tuner: Tuner, optimizer) -> tuple[int, TrainResult]:
    payload = torch.load(path / CHECKPOINT_FILE, weights_only=False)
    names = {name for name, _ in tuner.model.named_parameters()} | {name for name, _ in tuner.model.named_buffers()}
    missing = sorted(set(payload["trainable"]) - names)
    if missing:
        raise ValueError(f"{path / CHECKPOINT_FILE} does not fit this model/method: no {missing[:3]} here")
    # first: a checkpoint written after rank compaction shrinks the adapters and the optimizer's parameters
    tuner.load_state_dict(payload["tuner"], optimizer)
    current = dict(tuner.model.named_parameters()) | dict(tuner.model.named_buffers())
    with torch.no_grad():
        for name, tensor in payload["trainable"].items():
            current[name].copy_(tensor)
    optimizer.load_state_dict(payload["optimizer"])
    world = current_world()
    if len(payload["rng_by_rank"]) != world.size:
        raise ValueError(f"{path / CHECKPOINT_FILE} was written by a run of {len(payload['rng_by_rank'])} process(es) "
                         f"and this one has {world.size}: the global batch would change mid-run; resume it with "
                         f"torchrun --nproc_per_node={len(payload['rng_by_rank'])}, or start afresh (--force)")
    generators = payload["rng_by_rank"][world.rank]
    torch.set_rng_state(generators["cpu"])
    if generators["cuda"] is not None:
        if not torch.cuda.is_available():
            raise ValueError(f"{path / CHECKPOINT_FILE} was written on a CUDA GPU and torch sees none here; "
                             "resume it on a GPU, or start the run afresh (--force)")
        torch.cuda.set_rng_state_all(generators["cuda"])
    return payload["step"], TrainResult(**payload["result"])


def train(tuner: Tuner, tokenizer, train_records: list[dict], config: TrainConfig,
          checkpoint_dir: str | Path | None = None, *, examples: list[dict] | None = None,
          after_step: Callable[[int, StepOutcome], None] | None = None) -> TrainResult:
    """Fine-tune `tuner.model` on `train_records`; resumes from `checkpoint_dir` when it holds a checkpoint.

    `examples`: the records already tokenized (`data.tokenize_records`) by a run that tokenizes once.
    `after_step(step, outcome)`: called after every optimizer step, e.g. by a chapter recording a statistic of the
    adapters; it only observes (what it changes is not checkpointed).
    """
    if not train_records:
        raise ValueError("no training records: the training split is empty")
    model = tuner.model
    examples = examples if examples is not None else tokenize_records(train_records, tokenizer, config.max_length)
    pad_id = pad_token_id(tokenizer)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"method {tuner.method!r} has nothing to train")
    if config.optimizer == "paged_adamw_8bit" and tuner.allocator is not None and tuner.config.compact_ranks:
        raise ValueError("rank compaction slices the optimizer's state by triplet, which 8-bit states (blocks of 256) "
                         "cannot be: set adapter.compact_ranks=false with optimizer paged_adamw_8bit, or use paged_adamw")
    # rank compaction replaces parameters; the optimizer's groups always list the current ones
    optimizer = make_optimizer(tuner.parameter_groups(), config.optimizer, tuner.config.learning_rate)
    came_in = (model.training, model.is_activation_checkpointing, getattr(model.config, "use_cache", None))
    set_gradient_checkpointing(model, config.gradient_checkpointing)
    resuming = checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_FILE).exists()
    try:
        start_seconds = 0.0 if resuming else _gradient_start(tuner, examples, pad_id, config)
        if current_world().size > 1:  # launched by torchrun: train the replicas together
            refuse_sharded(model)
            tuner.replica = replicate(loss_model(tuner))
        result = _run_steps(tuner, examples, pad_id, optimizer, config, checkpoint_dir, after_step)
        result.start_seconds = result.start_seconds or start_seconds
        return result
    finally:
        tuner.replica = None
        training, checkpointing, use_cache = came_in
        set_gradient_checkpointing(model, checkpointing)
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(training)


def _run_steps(tuner: Tuner, examples: list[dict], pad_id: int, optimizer, config: TrainConfig,
               checkpoint_dir: str | Path | None, after_step=None) -> TrainResult:
    """The loop of `train()`: resume if a checkpoint is there, then one `training_step` per optimizer step."""
    model = tuner.model
    torch.manual_seed(config.seed)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, result = 0, TrainResult()
    if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).exists():
        start, result = load_checkpoint(checkpoint_dir, tuner, optimizer)
    device = next(model.parameters()).device
    model.train()
    world = current_world()
    per_step = config.grad_accum * world.size  # micro-batches per optimizer step, over all ranks
    max_steps = config.max_steps or steps_for(len(examples), 1, config.batch_size, per_step)
    bar = tqdm(total=max_steps, initial=start, desc=tuner.method, disable=not (config.progress and world.main))
    for step in range(start + 1, max_steps + 1):
        began = time.perf_counter()
        # rank r takes its grad_accum consecutive micro-batches of the order one process would accumulate
        positions = [(step - 1) * per_step + world.rank * config.grad_accum + micro for micro in range(config.grad_accum)]
        batches = _micro_batches(examples, positions, pad_id, config, device)
        try:
            outcome = training_step(tuner, batches, optimizer, config.max_grad_norm)
        except NonFiniteLoss as error:
            saved = f"the checkpoint in {checkpoint_dir} stays usable" if checkpoint_dir else "no checkpoint was kept"
            raise FloatingPointError(f"non-finite loss {error.value} at step {step} ({error.method}); {saved}. Lower "
                                     "the learning rate or the orthogonality weight, or check the data.") from None
        step_loss, budget = outcome.loss, outcome.budget
        result.losses.append(outcome.loss)
        result.lm_losses.append(outcome.cross_entropy)
        result.budgets.append(budget)
        result.tokens += outcome.tokens
        result.step_seconds.append(time.perf_counter() - began)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{tuner.config.learning_rate:.1e}",
                        **({"budget": budget} if budget is not None else {}))
        if after_step is not None:
            after_step(step, outcome)
        if checkpoint_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, tuner, optimizer, step, result)
    bar.close()
    return result


def _micro_batches(examples: list[dict], positions: list[int], pad_id: int, config: TrainConfig, device) -> list[dict]:
    """The collated micro-batches at `positions` of the run's order (`micro_batch_order`), on `device`."""
    return [{k: v.to(device) for k, v in collate_examples([examples[i] for i in indices], pad_id).items()}
            for indices in (micro_batch_order(len(examples), config.batch_size, config.seed, position)
                            for position in positions)]


def _gradient_start(tuner: Tuner, examples: list[dict], pad_id: int, config: TrainConfig) -> float:
    """Turn the SVD adapters to the first micro-batches' gradient if the method starts so; returns its seconds.

    The run's first `gradient_start_batches` micro-batches, as its first steps will see them (split over the ranks
    under torchrun), with the model in training mode and the loss the steps use (C alone, without Eq. 6's term).
    A LoftQ start (`loftq_init`) has set P, λ and Q from the quantization error already and is kept: the two starts
    combine as LoftQ's P, λ, Q with the gradient start's learning rate for λ.
    """
    if tuner.allocator is None or not tuner.config.svd_init.startswith("gradient") or tuner.config.loftq_init:
        return 0.0
    began = time.perf_counter()
    world = current_world()
    positions = list(range(world.rank, tuner.config.gradient_start_batches, world.size))
    batches = _micro_batches(examples, positions, pad_id, config, next(tuner.model.parameters()).device)
    came_in = tuner.model.training
    tuner.model.train()
    try:
        start_from_gradient(tuner, batches)
    finally:
        tuner.model.train(came_in)
    return time.perf_counter() - began


def steps_for(n_examples: int, epochs: float, batch_size: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps that cover `epochs` passes over `n_examples` (at least one)."""
    return max(1, math.ceil(epochs * n_examples / (batch_size * grad_accum)))
