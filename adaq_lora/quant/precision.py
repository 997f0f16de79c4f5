"""Importance-driven precision for the frozen base (book chapter 6; the paper's Sec. 2.3 idea turned on W0).

The paper claims ADAQ-LoRA saves memory by "allocating resources according to the importance of pre-trained
weights". Masking adapter triplets frees no bytes, and QLoRA already stores the decoder in NF4, so here the
importance ranking is applied where the bytes are: the frozen matrices themselves, the embedding and the output
head included (QLoRA leaves those in 16 bits, and on a small model they are a large share of the weights).

Importance of a matrix W stored at precision p: the loss it costs, to second order,
    ΔL_p(W) ≈ ½ Σ_ij F_ij (W_ij − Q_p(W)_ij)²,   F = E[(∂L/∂W)²]  (the empirical Fisher diagonal),
measured on a few calibration examples, one example per backward pass so that F is a mean of squared
per-example gradients. Without calibration data F ≡ 1 (the plain squared error).

The plan: every matrix starts at the fewest bits it can be stored in (NF2, `adaq_lora.quant.normal_float`); upgrades
(NF2 → NF3 → NF4 → 8-bit → bfloat16) are bought greedily, the largest error reduction per extra byte first, while the
total stays within `budget_bits` per parameter. A matrix's importance is its Fisher-weighted error at that floor.
Then, within each group of matrices of the same shape (whose upgrades cost the same), the chosen precisions are
handed out again in order of importance, so a more important matrix never gets fewer bits than a less important
one of its shape; the bytes do not change. A budget below NF4's 4.13 bits is spent the same way: the matrices
that matter least go down to 3 or 2 bits so that those that matter most can keep 4 or more.

The budget is in bits per weight of the whole base, so what it buys depends on the model. On SmolLM2-135M the
untrained model's held-in cross-entropy (benchmarks/plan_untrained.py) is 2.05 as loaded, 2.17 at 6 bits, 2.38 at
4.5, 2.55 at 4, 3.60 at 3.5, 24 at 3 and 53 at 2.5: a small model has little to spare, and the second-order estimate
is least reliable where the errors are large (at 3.5 bits the tied embedding/head, a fifth of the weights, goes to
NF3: its few calibration examples see few of its 49,152 rows). benchmarks/sweep_budget.py measures what training gives
back, and chapter 6 chooses the ci and cpu profiles' budget from it. The paper profile (ChatGLM2-6B, whose embeddings
are 8.5% of the weights: QLoRA's layout is about 5.1 bits per weight) keeps 4.5 bits with the 4-bit floor, the plan
it had: its plan is data-free (file_plan.py), and nothing here has measured a 6B model below 4 bits.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import write_json_atomic
from ..data import collate_examples
from .blockwise import PRECISIONS, BlockwiseEmbedding, BlockwiseLinear, BlockwiseMatrix, stored_bytes
from .nf4 import BLOCKSIZE
from .quantize import OUTPUT_HEADS, compute_dtype_for, quantize_linear
from .weight_files import matrix_from_files

PLAN_FILE = "precision_plan.json"
CALIBRATION_EXAMPLES = 8  # examples whose squared gradients estimate F; more cost a backward pass each
SAMPLED_WEIGHTS = 2**22  # an unweighted score reads about this many weights of a larger matrix (`score_matrix`)


@dataclass
class PrecisionPlan:
    budget_bits: float  # the budget: average bits per planned parameter, constants included
    precisions: dict[str, str]  # module name → one of blockwise.PRECISIONS ("nf2" … "bf16")
    importance: dict[str, float]  # module name → ½ Σ F (W − Q(W))² at its fewest bits: what the floor would cost
    nbytes: dict[str, int]  # module name → bytes at the chosen precision
    parameters: dict[str, int]  # module name → elements of the matrix
    tied: dict[str, list[str]] = field(default_factory=dict)  # module name → other modules sharing the matrix
    calibrated: bool = True  # False: F ≡ 1, no calibration data was given
    source: str | None = None  # the safetensors folder it was scored from (file_plan.py): where 16-bit matrices are read

    @property
    def bits_per_parameter(self) -> float:
        return 8 * sum(self.nbytes.values()) / sum(self.parameters.values())

    def summary(self) -> str:
        counts = {p: sum(1 for v in self.precisions.values() if v == p) for p in PRECISIONS}
        return (f"{len(self.precisions)} frozen matrices, {sum(self.parameters.values()):,} parameters in "
                f"{sum(self.nbytes.values()) / 2**20:.1f} MB ({self.bits_per_parameter:.2f} bits each, budget "
                f"{self.budget_bits:g}): " + ", ".join(f"{n} {p}" for p, n in counts.items()))

    def save(self, folder: str | Path) -> Path:

        path = Path(folder) / PLAN_FILE
        write_json_atomic(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PrecisionPlan":
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {PLAN_FILE} in {folder}: the adapters there were saved without a precision plan")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def calibration_batches(examples: list[dict], pad_id: int, count: int = CALIBRATION_EXAMPLES) -> list[dict]:
    """The first `count` training examples (`data.tokenize_records`, as the loop trains on them), one per batch."""
    return [collate_examples([example], pad_id) for example in examples[:count]]


def frozen_matrices(model: nn.Module) -> dict[str, list[str]]:
    """Module name → names of the modules that share its weight, for every nn.Linear and nn.Embedding.

    Adapter layers are looked through: their `base_layer` is planned under the adapter's own name.
    """
    owners: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and not isinstance(module, BlockwiseLinear):
            if module.weight.is_floating_point():
                owners[id(module.weight)].append(name.removesuffix(".base_layer"))
    return {names[0]: names[1:] for names in owners.values()}


def fisher_diagonal(model: nn.Module, names: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """F = mean over `batches` of (∂L/∂W)² for each named matrix (one batch should hold one example)."""
    weights = {name: model.get_submodule(name).weight for name in names}
    fisher = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    previous = {name: w.requires_grad for name, w in weights.items()}
    hooks = []
    for name, weight in weights.items():
        weight.requires_grad_(True)

        def accumulate(param, target=fisher[name]):
            target.add_(param.grad.float() ** 2, alpha=1 / len(batches))
            param.grad = None  # keep one gradient alive at a time, not the model's worth

        hooks.append(weight.register_post_accumulate_grad_hook(accumulate))
    was_training = model.training
    model.eval()  # no dropout: F should describe the model as it will be stored
    try:
        device = next(iter(weights.values())).device
        for batch in tqdm(batches, desc="calibration", leave=False):
            model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
        for name, weight in weights.items():
            weight.requires_grad_(previous[name])
            weight.grad = None
        model.train(was_training)
    return fisher


def available_precisions(weight: torch.Tensor, floor: str = "nf2") -> tuple[str, ...]:
    return PRECISIONS[PRECISIONS.index(floor):] if weight.shape[-1] % BLOCKSIZE == 0 else ("bf16",)


def score_matrix(weight: torch.Tensor, weighting: torch.Tensor | None = None,
                 floor: str = "nf2") -> tuple[dict[str, float], dict[str, int]]:
    """For each precision from `floor` up that `weight` can be stored at: ½ Σ F (W − Q_p(W))² (F ≡ 1 without
    `weighting`), and its bytes.

    Without a weighting every row counts alike, so a matrix of more than `SAMPLED_WEIGHTS` weights is scored on
    evenly spaced rows holding about that many and the error scaled to the whole: blocks run along rows, so a
    row's error is what it is in the whole matrix. ChatGLM2-6B's matrices (17 to 266 million weights) are then
    scored on 4 million each, within 1% of the full sum (tests/test_precision.py) and a twentieth of the time. A
    Fisher weighting is concentrated on a few rows (an embedding's calibration tokens): those scores read every row.
    """
    scale = 1.0
    if weighting is None and weight.numel() > SAMPLED_WEIGHTS:
        kept = max(1, SAMPLED_WEIGHTS // weight.shape[1])
        rows = torch.linspace(0, weight.shape[0] - 1, kept, device=weight.device).round().long().unique()
        scale, sample = weight.shape[0] / len(rows), weight[rows]
    else:
        sample = weight
    errors, sizes = {}, {}
    for precision in available_precisions(weight, floor):
        squared_error = (sample.float() - BlockwiseMatrix(sample, precision).rows().float()) ** 2
        weighted = squared_error if weighting is None else weighting * squared_error
        errors[precision] = 0.5 * scale * float(weighted.sum())
        sizes[precision] = stored_bytes(tuple(weight.shape), precision)
    return errors, sizes


def plan_precision(model: nn.Module, budget_bits: float, calibration: list[dict] | None = None,
                   floor: str = "nf2") -> PrecisionPlan:
    """Score every frozen matrix of the full-precision `model` and choose its precision within `budget_bits`, none
    below `floor`."""
    matrices = frozen_matrices(model)
    fisher = fisher_diagonal(model, list(matrices), calibration) if calibration else {}
    scores, shapes = {}, {}
    for name in tqdm(matrices, desc="scoring precisions"):  # kept when done: a cleared bar can leave its first frame on the page
        weight = model.get_submodule(name).weight.detach()  # detached: no autograd graph while scoring
        scores[name], shapes[name] = score_matrix(weight, fisher.pop(name, None), floor), tuple(weight.shape)
    return choose_precisions(scores, shapes, budget_bits, {name: shared for name, shared in matrices.items() if shared},
                             calibrated=bool(calibration), floor=floor)


def choose_precisions(scores: dict[str, tuple[dict[str, float], dict[str, int]]], shapes: dict[str, tuple[int, ...]],
                      budget_bits: float, tied: dict[str, list[str]], calibrated: bool,
                      floor: str = "nf2") -> PrecisionPlan:
    """The greedy plan of the module docstring over matrices already scored (`score_matrix`), by name."""
    errors = {name: errors for name, (errors, _) in scores.items()}
    sizes = {name: sizes for name, (_, sizes) in scores.items()}
    parameters = {name: math.prod(shape) for name, shape in shapes.items()}
    budget = budget_bits * sum(parameters.values()) / 8
    options = {name: [p for p in PRECISIONS[PRECISIONS.index(floor):] if p in sizes[name]] for name in scores}
    levels = {name: 0 for name in scores}
    spent = sum(sizes[name][options[name][0]] for name in scores)
    if spent > budget:
        raise ValueError(f"precision budget {budget_bits:g} bits per parameter is below what the fewest bits "
                         f"everywhere take ({8 * spent / sum(parameters.values()):.2f}: {floor.upper()} where a row's "
                         f"length is a multiple of {BLOCKSIZE}, bfloat16 elsewhere); raise precision_budget_bits to at "
                         "least that")
    while True:
        best, best_ratio = None, -1.0
        for name, level in levels.items():
            if level + 1 < len(options[name]):
                now, nxt = options[name][level], options[name][level + 1]
                cost = sizes[name][nxt] - sizes[name][now]
                ratio = (errors[name][now] - errors[name][nxt]) / cost
                if spent + cost <= budget and ratio > best_ratio:
                    best, best_ratio = name, ratio
        if best is None:
            break
        spent += sizes[best][options[best][levels[best] + 1]] - sizes[best][options[best][levels[best]]]
        levels[best] += 1
    importance = {name: errors[name][options[name][0]] for name in scores}
    precisions = order_by_importance({name: options[name][levels[name]] for name in scores}, importance,
                                     {name: (shapes[name], tuple(options[name])) for name in scores})
    return PrecisionPlan(budget_bits=budget_bits, precisions=precisions, importance=importance,
                         nbytes={name: sizes[name][p] for name, p in precisions.items()}, parameters=parameters,
                         tied=tied, calibrated=calibrated)


def order_by_importance(precisions: dict[str, str], importance: dict[str, float], group_of: dict) -> dict[str, str]:
    """Within each group of interchangeable matrices, give the most bits to the most important ones."""
    groups = defaultdict(list)
    for name in precisions:
        groups[group_of[name]].append(name)
    ordered = {}
    for names in groups.values():
        by_importance = sorted(names, key=lambda n: importance[n], reverse=True)
        by_bits = sorted((precisions[n] for n in names), key=PRECISIONS.index, reverse=True)
        ordered.update(zip(by_importance, by_bits))
    return {name: ordered[name] for name in precisions}


def apply_precision_plan(model: nn.Module, plan: PrecisionPlan, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Store every planned matrix of `model` at its precision, in place; return `model`.

    Decoder linears planned at NF4 become bitsandbytes `Linear4bit`, as in QLoRA; the embedding, the output head
    and every 8-bit or bfloat16 matrix become `Blockwise*` modules (a tied head shares its embedding's storage).
    """
    device = next(model.parameters()).device
    compute_dtype = compute_dtype or compute_dtype_for(device)
    for name, precision in plan.precisions.items():
        host, leaf = _slot(model, name)
        layer = getattr(host, leaf)
        weight = layer.weight
        if getattr(weight, "quant_state", None) is not None:  # loaded in 4 bits (`quantize_on_load`)
            if precision == "nf4":
                continue
            if plan.source is None:
                raise ValueError(f"{name} was loaded in 4 bits but the plan stores it at {precision}, and the plan "
                                 "does not say which files hold its 16-bit weights: plan it with plan_precision_from_files")
            weight = matrix_from_files(plan.source, name, weight.device)  # one 16-bit matrix in memory at a time
        if weight.numel() != plan.parameters[name]:
            raise ValueError(f"the precision plan does not fit this model: {name} has {layer.weight.numel():,} "
                             f"parameters, the plan {plan.parameters[name]:,}; apply it to the model it was made for")
        if isinstance(layer, nn.Linear) and precision == "nf4" and name.rsplit(".", 1)[-1] not in OUTPUT_HEADS:
            setattr(host, leaf, quantize_linear(layer, "nf4", True, compute_dtype))
            continue
        matrix = BlockwiseMatrix(weight, precision)
        for shared in [name, *plan.tied.get(name, [])]:
            shared_host, shared_leaf = _slot(model, shared)
            original = getattr(shared_host, shared_leaf)
            setattr(shared_host, shared_leaf,
                    BlockwiseEmbedding(matrix, original.padding_idx) if isinstance(original, nn.Embedding)
                    else BlockwiseLinear(matrix, original.bias))
    model.is_loaded_in_4bit = True
    return model


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(module holding the matrix's layer, attribute name): an adapter's `base_layer`, or the layer itself."""
    module = model.get_submodule(name)
    if hasattr(module, "base_layer"):
        return module, "base_layer"
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf
