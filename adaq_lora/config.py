"""The two configurations: what every method reads, and how the loop trains (book chapters 1, 3, 5, 6 and 7).

`AdaQConfig` gathers the hyper-parameters of the paper's methods: the LoRA rank and scale of Eq. 1, the SVD
adapter's starting and final rank of Eq. 5, the orthogonality weight γ of Eq. 6, the importance EMAs and the
cubic budget schedule of Sec. 2.3 (with the rank compaction of its final phase), the 4-bit storage of the
frozen base, and the learning rate of Sec. 3.
`TrainConfig` holds the loop's recipe of Sec. 3 (batch, accumulation, clipping, the optimizer, checkpoints).
Each is validated when it is built, so a bad value fails before any model is touched. A hyper-parameter has one
home, here: profiles nest the two (`adaq_lora.profiles`), the PEFT peers and the export map them to PEFT's names
in one function (`tuners.peers.peft_config`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

OPTIMIZERS = ("paged_adamw", "paged_adamw_8bit", "adamw")  # bitsandbytes' paged AdamW (the paper's, Sec. 3), its
# 8-bit-state variant (two bytes per adapter weight instead of eight; no rank compaction), or torch's
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
PRECISION_FLOORS = ("nf2", "nf3", "nf4")  # the lowest precisions a plan may start from (of quant.blockwise.PRECISIONS)
SVD_STARTS = {  # named starts of the SVD adapters, (svd_init, lambda_lr_ratio); a method names its own (registry)
    "adalora": ("gaussian", 1.0),  # AdaLoRA's and PEFT's: P, Q ~ N(0, 0.02²), one learning rate; adaq_lora's until 2026-12
    "adaq": ("gradient_std", 64.0),  # chosen by benchmarks/sweep_start.py on held-in training data (chapter 3)
}
SVD_INITS = ("gaussian", "orthonormal", "gradient", "gradient_std")  # P, Q ~ N(0, init_std²) as PEFT's AdaLoRA; an
# orthonormalised Gaussian; the top singular vectors of the first training batches' gradient (gradient_start.py), of
# unit length ("gradient") or of the Gaussian's lengths, σ√out and σ√in ("gradient_std")


@dataclass
class AdaQConfig:
    target_modules: tuple[str, ...] | None = None  # leaf names of the linear layers to adapt; None: the family's default
    r: int = 8  # LoRA rank r of Eq. 1 (lora, qlora)
    lora_alpha: float = 16.0  # α of Eq. 1; the update is scaled by α / r (α / init_r for SVD adapters, as PEFT)
    lora_dropout: float = 0.05  # dropout on the adapter's input only; the frozen path sees x unchanged
    init_r: int = 12  # rank every SVD adapter starts with (Eq. 5)
    target_r: int = 8  # average rank per adapted matrix once the budget has fallen (Sec. 2.3)
    t_init: int = 10  # warm-up steps before the first triplet is masked
    t_final: int = 10  # last steps, with the mask fixed and the rank pattern recorded
    delta_t: int = 1  # steps between two re-maskings (ΔT)
    beta1: float = 0.85  # EMA coefficient of the sensitivity |θ · ∂L/∂θ|
    beta2: float = 0.85  # EMA coefficient of its uncertainty
    orth_reg_weight: float = 1e-3  # γ of Eq. 6: the paper gives no value; with the sum over ~200 matrices this starts near the LM loss
    total_steps: int = 100  # optimizer steps of the whole run; the budget schedule is laid out over them
    learning_rate: float = 3e-4  # the paper's constant learning rate (Sec. 3)
    quant_type: str = "nf4"  # 4-bit storage of the frozen base: "nf4" (the paper's) or "fp4"
    double_quant: bool = True  # quantize the block absmax values again (QLoRA's double quantization)
    precision_budget_bits: float | None = 4.5  # adaq_lora: mean bits per frozen weight, embedding and head included; None:
    # QLoRA's layout. 4.5: the fewest bits benchmarks/sweep_budget.py's rule accepts with ΔW = 0 at the start (chapter 6);
    # the ci and cpu profiles take its choice over both starts, 3.5 bits with loftq_init
    precision_floor: str = "nf2"  # adaq_lora: the fewest bits the plan may give a matrix; "nf4" is the plan before NF3/NF2
    compute_dtype: str = "auto"  # dtype of the 4-bit layers' matmuls: auto = float32 on CPU, bfloat16 on GPU
    init_std: float = 0.02  # std of the Gaussian start of A (Eq. 1) and of P, Q (Eq. 5), as PEFT's AdaLoRA
    svd_init: str | None = None  # start of P, Q (λ = 0 in all): one of SVD_INITS; None: the method's own (registry)
    lambda_lr_ratio: float | None = None  # λ's learning rate over P's and Q's (a parameter group); None: the method's own
    gradient_start_batches: int = 4  # svd_init "gradient"/"gradient_std": first micro-batches whose summed gradient is used
    loftq_init: bool = False  # adaq_lora: start ΔW at the best rank-init_r fit of the quantization error W − W0 (LoftQ, loftq.py)
    compact_ranks: bool = True  # in the final phase, shrink SVD adapters to their kept triplets and free the importance EMAs
    fused_loss: bool = True  # ours: the loss from the hidden states a chunk of tokens at a time, the logits never whole
    importance_dtype: str = "bfloat16"  # storage of the importance EMAs (updated in float32): bfloat16, or float32 as PEFT
    importance_per: str = "element"  # EMAs of P's and Q's sensitivity per "element" (AdaLoRA, PEFT) or per "triplet"
    extra: dict = field(default_factory=dict)  # free-form notes stored with the adapters (e.g. the model id)

    def __post_init__(self):
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = (self.target_modules,)
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules:
                raise ValueError("target_modules is empty: name at least one linear layer, or pass None for the default")
        for name in ("r", "init_r", "target_r", "total_steps", "delta_t"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.importance_per not in ("element", "triplet"):
            raise ValueError(f"importance_per must be 'element' or 'triplet', got {self.importance_per!r}")
        if self.importance_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"importance_dtype must be 'bfloat16' or 'float32', got {self.importance_dtype!r}")
        if self.init_r < self.target_r:
            raise ValueError(
                f"init_r={self.init_r} < target_r={self.target_r}: the budget can only fall; "
                f"set init_r >= target_r (e.g. init_r={self.target_r + 4})"
            )
        for name in ("t_init", "t_final"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.t_init + self.t_final >= self.total_steps:
            raise ValueError(
                f"t_init + t_final = {self.t_init} + {self.t_final} >= total_steps = {self.total_steps}: "
                "no step is left for the budget to fall; lower t_init/t_final or raise total_steps"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"orth_reg_weight (γ) must be >= 0, got {self.orth_reg_weight}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.svd_init is not None and self.svd_init not in SVD_INITS:
            raise ValueError(f"svd_init must be one of {SVD_INITS}, or None for the method's own; got {self.svd_init!r}")
        if self.lambda_lr_ratio is not None and not self.lambda_lr_ratio > 0:
            raise ValueError(f"lambda_lr_ratio must be > 0 (1: λ at the base learning rate), got {self.lambda_lr_ratio!r}")
        if not isinstance(self.gradient_start_batches, int) or self.gradient_start_batches <= 0:
            raise ValueError(f"gradient_start_batches must be a positive integer, got {self.gradient_start_batches!r}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if self.precision_budget_bits is not None and not 2.25 <= self.precision_budget_bits <= 16:
            raise ValueError(f"precision_budget_bits must be between 2.25 (about NF2 everywhere, 2.13 bits with its "
                             f"scales) and 16 (bfloat16 everywhere), or None for QLoRA's layout; "
                             f"got {self.precision_budget_bits!r}")
        if self.precision_floor not in PRECISION_FLOORS:
            raise ValueError(f"precision_floor must be one of {PRECISION_FLOORS}, got {self.precision_floor!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")

    def with_start(self, name: str) -> "AdaQConfig":
        """This config with the start fields it leaves at None taken from SVD_STARTS[name]."""
        init, ratio = SVD_STARTS[name]
        return replace(self, svd_init=init if self.svd_init is None else self.svd_init,
                       lambda_lr_ratio=ratio if self.lambda_lr_ratio is None else self.lambda_lr_ratio)

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["target_modules"] is not None:
            data["target_modules"] = list(data["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AdaQConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdaQConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainConfig:
    max_steps: int | None = None  # optimizer steps of the run; None: one pass over the training records
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
            if name == "max_steps" and self.max_steps is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
