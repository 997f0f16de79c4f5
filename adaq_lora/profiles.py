"""Run profiles: how much one experiment does, from a CI smoke run to the paper's recipe (book preface, chapter 8).

A profile is a small JSON file in `adaq_lora/profiles/` (`ci`, `cpu`, `paper`) that names every setting of one
cell of the paper's grid: the model, the data subsets taken after the 80/20 split of Sec. 3, the training recipe
of Sec. 3 (epochs, batch 1, learning rate 3e-4, gradient clipping 0.1, paged AdamW), the adapters' ranks of
Eqs. 1 and 5 and the budget schedule of Sec. 2.3, given as fractions of the run's steps so that it scales with
the run. Every field can be overridden, e.g. from the command line as `--set train_size=100`; the text is read
as the field's type, and an unknown key is refused with the list of valid ones.
"""
from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources

from .config import COMPUTE_DTYPES
from .train import OPTIMIZERS

PROFILE_NAMES = ("ci", "cpu", "paper")
DEVICES = ("cpu", "cuda")
NULL_WORDS = ("null", "none")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


@dataclass(frozen=True)
class Profile:
    name: str  # which profile this is, or was derived from by overrides
    description: str  # one line: who the profile is for
    model: str | None  # hub id or local folder of the base model; None: the embedded SmolLM2-135M-Instruct
    datasets: tuple[str, ...]  # the grid's data sets: Table 1's (Alpaca_Chinese) first, then Table 2's (School_math)
    device: str  # "cpu", or "cuda" (refused at once where no CUDA GPU is present)
    quantize_on_load: bool  # 4-bit methods load the model through a BitsAndBytesConfig (a 6B model needs it)
    train_size: int | None  # training records kept from the 80% split, in split order; None: all
    test_size: int | None  # test records kept from the 20% split; None: all
    epochs: float  # passes over the training subset; the run's optimizer steps follow from it
    max_length: int  # tokens per training example, prompt + answer, cut from the end
    max_new_tokens: int  # greedy tokens generated per test answer
    eval_batch_size: int  # test prompts generated together
    batch_size: int  # examples per micro-batch (the paper: 1)
    grad_accum: int  # micro-batches per optimizer step
    learning_rate: float  # constant learning rate (the paper: 3e-4)
    max_grad_norm: float  # gradient clipping (the paper: 0.1)
    optimizer: str  # "paged_adamw" (the paper's) or "adamw"
    gradient_checkpointing: bool  # recompute activations in the backward pass: less memory, more time
    r: int  # LoRA rank of Eq. 1
    lora_alpha: float  # α of Eq. 1
    lora_dropout: float  # dropout on the adapters' input
    init_r: int  # starting rank of every SVD adapter (Eq. 5)
    target_r: int  # average rank per matrix once the budget has fallen (Sec. 2.3)
    t_init_fraction: float  # share of the run's steps before the first triplet is masked
    t_final_fraction: float  # share of the run's steps at the end with the mask fixed
    delta_t: int  # steps between two re-maskings
    orth_reg_weight: float  # γ of Eq. 6
    precision_budget_bits: float | None  # adaq_lora: mean bits per frozen weight under the precision plan; None: QLoRA's layout
    compute_dtype: str  # dtype of the 4-bit layers' matmuls (and of a model loaded for the GPU)
    checkpoint_every: int  # steps between resumable checkpoints; 0 for none
    bootstrap_resamples: int  # resamples of the test set for the 95% intervals

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in fields(self):
            value = getattr(self, field.name)
            if hints[field.name] == tuple[str, ...] and isinstance(value, list):
                value = tuple(value)
            if float in _options(hints[field.name]) and _is_int(value):
                value = float(value)
            if not _has_type(value, hints[field.name]):
                raise ValueError(f"profile field {field.name} must be {_type_name(hints[field.name])}, got {value!r}")
            object.__setattr__(self, field.name, value)
        for name in ("max_length", "max_new_tokens", "eval_batch_size", "batch_size", "grad_accum", "r",
                     "init_r", "target_r", "delta_t", "bootstrap_resamples", "train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"profile field {name} must be positive, got {value}")
        for name in ("epochs", "learning_rate", "max_grad_norm", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"profile field {name} must be > 0, got {getattr(self, name)}")
        for name in ("t_init_fraction", "t_final_fraction", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"profile field {name} must lie in [0, 1), got {getattr(self, name)}")
        if self.t_init_fraction + self.t_final_fraction >= 1:
            raise ValueError(f"t_init_fraction + t_final_fraction = {self.t_init_fraction + self.t_final_fraction} "
                             ">= 1 leaves no step for the rank budget to fall")
        if self.checkpoint_every < 0 or self.orth_reg_weight < 0:
            raise ValueError("checkpoint_every and orth_reg_weight must be >= 0, got "
                             f"{self.checkpoint_every} and {self.orth_reg_weight}")
        for name, valid in (("device", DEVICES), ("optimizer", OPTIMIZERS), ("compute_dtype", COMPUTE_DTYPES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"profile field {name}={getattr(self, name)!r} is not valid; valid: {', '.join(valid)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["datasets"] = list(data["datasets"])
        return data


def field_names() -> list[str]:
    return [field.name for field in fields(Profile)]


def overridable_keys() -> list[str]:
    return [name for name in field_names() if name != "name"]


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    """The profile `name` (one of PROFILE_NAMES) with `overrides` applied: values, or texts to read as the field's type."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
    data = json.loads(resources.files(__package__).joinpath("profiles", f"{name}.json").read_text(encoding="utf-8"))
    expected = set(overridable_keys())
    if set(data) != expected:
        raise ValueError(f"profiles/{name}.json: missing {sorted(expected - set(data))}, "
                         f"unknown {sorted(set(data) - expected)}; a profile names every field")
    return apply_overrides(Profile(name=name, **data), overrides or {})


def apply_overrides(profile: Profile, overrides: dict) -> Profile:
    """A copy of `profile` with each key of `overrides` replaced; string values are parsed as the field's type."""
    valid = overridable_keys()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown profile key(s) {unknown}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(Profile)
    parsed = {key: parse_value(key, value, hints[key]) if isinstance(value, str) else value
              for key, value in overrides.items()}
    return replace(profile, **parsed)


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """`["key=value", ...]` (the CLI's `--set` arguments) as a dict of texts."""
    pairs = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set {assignment!r} is not key=value; valid keys: {', '.join(overridable_keys())}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_value(key: str, text: str, hint) -> object:
    """`text` read as a value of type `hint`: null/none for None, true/false for booleans, commas for lists."""
    options = _options(hint)
    if type(None) in options and text.lower() in NULL_WORDS:
        return None
    target = next(option for option in options if option is not type(None))
    try:
        if target is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.lower() in TRUE_WORDS
        if target == tuple[str, ...]:
            return tuple(item.strip() for item in text.split(",") if item.strip())
        return target(text)
    except ValueError:
        raise ValueError(f"--set {key}={text!r}: expected {_type_name(hint)}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _options(hint) -> tuple:
    """The types a field accepts: both sides of `X | None`, else the hint itself."""
    return (hint,) if typing.get_origin(hint) is tuple else (typing.get_args(hint) or (hint,))


def _has_type(value, hint) -> bool:
    def matches(option) -> bool:
        if option is type(None):
            return value is None
        if option is int:
            return _is_int(value)
        if typing.get_origin(option) is tuple:
            return isinstance(value, tuple) and all(isinstance(item, str) for item in value)
        return isinstance(value, option)

    return any(matches(option) for option in _options(hint))


def _type_name(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a text", type(None): "null",
             tuple[str, ...]: "a comma-separated list of names"}
    return " or ".join(names[option] for option in _options(hint))
