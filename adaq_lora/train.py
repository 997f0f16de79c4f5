"""The paper's training recipe as a plain loop (Sec. 3; book chapters 6 and 7).

Paged AdamW from bitsandbytes, maximum gradient norm 0.1, batch size 1, a constant learning rate of 3e-4: the
recipe of Sec. 3. The loss is the causal-LM cross-entropy on the answer tokens plus γ Σ_k R(P_k, Q_k) for the
SVD methods (Sec. 2.3), and the rank allocator steps after every optimizer step, before `zero_grad`; when its
final phase fixes the mask it compacts the adapters and the optimizer's state to the kept triplets.

The batch order is a function of the seed and the step alone, and a checkpoint holds the trainable tensors, the
optimizer and allocator state and the random generator's state, so a run killed after a checkpoint and resumed
ends with the same adapters as a run that went straight through. Checkpoints are written atomically: a crash
never leaves one half-written.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import build_example, collate_examples
from .tuning import Tuner

OPTIMIZERS = ("paged_adamw", "adamw")
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    max_steps: int  # optimizer steps of the run (the CLI derives it from epochs × training examples)
    batch_size: int = 1  # examples per micro-batch; the paper's is 1
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 128  # tokens per example, prompt + answer, truncated from the end
    max_grad_norm: float = 0.1  # the paper's gradient clipping
    optimizer: str = "paged_adamw"  # "paged_adamw" (bitsandbytes, the paper's) or "adamw" (torch)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    checkpoint_every: int = 0  # write a resumable checkpoint every N steps; 0 for none
    seed: int = 0  # batch order and dropout
    progress: bool = True  # show a progress bar with loss, learning rate and budget

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss per optimizer step (regularizer included)
    lm_losses: list[float] = field(default_factory=list)  # its cross-entropy alone, comparable across methods
    budgets: list[int | None] = field(default_factory=list)  # rank budget in force after each step
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step
    tokens: int = 0  # non-padding tokens seen

    @property
    def train_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def median_step_seconds(self) -> float:
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else float("nan")


def make_optimizer(params, name: str, learning_rate: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    from .kernels import import_bitsandbytes

    return import_bitsandbytes().optim.PagedAdamW(params, lr=learning_rate, weight_decay=0.0)


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def training_loss(tuner: Tuner, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """L = C + γ Σ_k R(P_k, Q_k) on one micro-batch (Sec. 2.3), and C alone.

    Eq. 6's term is built before the forward pass: autograd then runs its backward last, so the adapters'
    gradients do not sit beside the logits' at the start of backward (the step's memory peak).
    """
    regularizer = tuner.regularizer()
    cross_entropy = tuner.model(**batch).loss
    return (cross_entropy if regularizer is None else cross_entropy + regularizer), cross_entropy


def finish_step(tuner: Tuner, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> int | None:
    """Clip, take the optimizer step, let the allocator read the gradients, clear them; return the budget in force."""
    torch.nn.utils.clip_grad_norm_(optimized_parameters(optimizer), max_grad_norm)
    optimizer.step()
    budget = tuner.after_optimizer_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return budget


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


def save_checkpoint(path: Path, tuner: Tuner, optimizer, step: int, result: TrainResult) -> None:
    path.mkdir(parents=True, exist_ok=True)
    payload = {"step": step, "trainable": _trainable_state(tuner), "optimizer": optimizer.state_dict(),
               "tuner": tuner.state_dict(), "rng": torch.get_rng_state(), "result": result.__dict__}
    handle, staging = tempfile.mkstemp(dir=path, prefix=f".{CHECKPOINT_FILE}.")
    os.close(handle)
    torch.save(payload, staging)
    os.replace(staging, path / CHECKPOINT_FILE)


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
    torch.set_rng_state(payload["rng"])
    return payload["step"], TrainResult(**payload["result"])


def train(tuner: Tuner, tokenizer, train_records: list[dict], config: TrainConfig,
          checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Fine-tune `tuner.model` on `train_records`; resumes from `checkpoint_dir` when it holds a checkpoint."""
    if not train_records:
        raise ValueError("no training records: the training split is empty")
    model = tuner.model
    examples = [build_example(record, tokenizer, config.max_length) for record in train_records]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {tuner.method!r} has nothing to train")
    optimizer = make_optimizer(params, config.optimizer, tuner.config.learning_rate)
    del params  # rank compaction replaces parameters; the optimizer's groups always list the current ones
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    torch.manual_seed(config.seed)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, result = 0, TrainResult()
    if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).exists():
        start, result = load_checkpoint(checkpoint_dir, tuner, optimizer)
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(total=config.max_steps, initial=start, desc=tuner.method, disable=not config.progress)
    for step in range(start + 1, config.max_steps + 1):
        began = time.perf_counter()
        step_loss = step_cross_entropy = 0.0
        for micro in range(config.grad_accum):
            indices = micro_batch_order(len(examples), config.batch_size, config.seed,
                                        (step - 1) * config.grad_accum + micro)
            batch = {k: v.to(device) for k, v in collate_examples([examples[i] for i in indices], pad_id).items()}
            loss, cross_entropy = training_loss(tuner, batch)
            if not torch.isfinite(loss):
                saved = f"the checkpoint in {checkpoint_dir} stays usable" if checkpoint_dir else "no checkpoint was kept"
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at step {step} ({tuner.method}); {saved}. "
                    "Lower the learning rate or the orthogonality weight, or check the data."
                )
            (loss / config.grad_accum).backward()
            step_loss += loss.item() / config.grad_accum
            step_cross_entropy += cross_entropy.item() / config.grad_accum
            result.tokens += int(batch["attention_mask"].sum())
        budget = finish_step(tuner, optimizer, config.max_grad_norm)
        result.losses.append(step_loss)
        result.lm_losses.append(step_cross_entropy)
        result.budgets.append(budget)
        result.step_seconds.append(time.perf_counter() - began)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{tuner.config.learning_rate:.1e}",
                        **({"budget": budget} if budget is not None else {}))
        if checkpoint_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, tuner, optimizer, step, result)
    bar.close()
    model.eval()
    return result


def steps_for(n_examples: int, epochs: float, batch_size: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps that cover `epochs` passes over `n_examples` (at least one)."""
    return max(1, math.ceil(epochs * n_examples / (batch_size * grad_accum)))
