"""Run profiles: how much one experiment does, from a CI smoke run to the paper's recipe (book preface, chapter 8).

A profile is a small JSON file in `adaq_lora/profiles/` (`ci`, `cpu`, `paper`) that names every setting of one
cell of the paper's grid: the run's own (the model, the data subsets taken after the 80/20 split of Sec. 3, the
epochs, generation, the budget schedule as fractions of the run's steps so that it scales with the run), and, nested
as in the code, an `adapter` section that is an `AdaQConfig` (ranks of Eqs. 1 and 5, γ of Eq. 6, the importance
EMAs and the precision budget) and a `train` section that is a `TrainConfig` (batch, clipping, the paged AdamW of
Sec. 3). The fields a run sets itself (the steps, the seed) are not a profile's. Every field can be overridden,
e.g. from the command line as `--set train_size=100`, `--set adapter.target_r=6` or, since no name is in two
sections, `--set target_r=6`; the text is read as the field's type, and an unknown key is refused with the valid ones.
"""
from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources

from .config import AdaQConfig, TrainConfig

PROFILE_NAMES = ("ci", "cpu", "paper")
DEVICES = ("cpu", "cuda")
NULL_WORDS = ("null", "none")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
SECTIONS = {"adapter": AdaQConfig, "train": TrainConfig}  # a profile's nested sections, as the code nests them
SET_BY_THE_RUN = {"adapter": ("t_init", "t_final", "total_steps", "extra"),  # from the fractions and the run's size
                  "train": ("max_steps", "seed", "progress")}  # from the epochs, --seed, --quiet


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
    t_init_fraction: float  # share of the run's steps before the first triplet is masked (AdaQConfig.t_init)
    t_final_fraction: float  # share of the run's steps at the end with the mask fixed (AdaQConfig.t_final)
    max_new_tokens: int  # greedy tokens generated per test answer
    eval_batch_size: int  # test prompts generated together
    bootstrap_resamples: int  # resamples of the test set for the 95% intervals
    adapter: AdaQConfig  # the methods' hyper-parameters, less the schedule's steps
    train: TrainConfig  # the loop's recipe, less the run's steps and seed

    def __post_init__(self):
        for field in fields(self):
            if field.name not in SECTIONS:
                object.__setattr__(self, field.name, _checked(type(self), field.name, getattr(self, field.name)))
        for name in ("max_new_tokens", "eval_batch_size", "bootstrap_resamples", "train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"profile field {name} must be positive, got {value}")
        if not self.epochs > 0:
            raise ValueError(f"profile field epochs must be > 0, got {self.epochs}")
        for name in ("t_init_fraction", "t_final_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"profile field {name} must lie in [0, 1), got {getattr(self, name)}")
        if self.t_init_fraction + self.t_final_fraction >= 1:
            raise ValueError(f"t_init_fraction + t_final_fraction = {self.t_init_fraction + self.t_final_fraction} "
                             ">= 1 leaves no step for the rank budget to fall")
        if self.device not in DEVICES:
            raise ValueError(f"profile field device={self.device!r} is not valid; valid: {', '.join(DEVICES)}")

    @property
    def base_dtype(self):
        """The torch dtype the base model is loaded in: the adapter section's compute dtype ("auto": float32 on the
        CPU, bfloat16 on CUDA, as `quant.quantize.compute_dtype_for` picks for the 4-bit layers)."""
        import torch

        if self.adapter.compute_dtype == "auto":
            return torch.bfloat16 if self.device == "cuda" else torch.float32
        return getattr(torch, self.adapter.compute_dtype)

    def multiplies_in_float32(self) -> bool:
        """Whether this profile's bfloat16 products run in float32 here: a bfloat16 base on a CPU without bfloat16
        units, where torch's own bfloat16 kernels are over ten times slower (training/float32_products.py)."""
        return self.device == "cpu" and self.adapter.compute_dtype == "bfloat16" and not has_bfloat16_units()

    def dataset(self, table_key: str) -> str:
        """The profile's data set that is the paper's set with `table_key` ("school_math" or "alpaca"; see
        `data.PAPER_DATASETS`): its stand-in, its hub id or a file named for it."""
        from .data import paper_dataset  # data imports torch; a profile is read before a run needs it

        found = [name for name in self.datasets if getattr(paper_dataset(name), "key", None) == table_key]
        if not found:
            raise ValueError(f"profile {self.name!r} has no data set matching {table_key!r}; its data sets: "
                             f"{', '.join(self.datasets)}")
        return found[0]

    def to_dict(self) -> dict:
        """The profile as its JSON file nests it, with its name; the sections without the fields a run sets."""
        data = {field.name: getattr(self, field.name) for field in fields(self) if field.name not in SECTIONS}
        data["datasets"] = list(self.datasets)
        for section in SECTIONS:
            values = asdict(getattr(self, section))
            data[section] = {key: list(value) if isinstance(value, tuple) else value
                             for key, value in values.items() if key not in SET_BY_THE_RUN[section]}
        return data


def has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX tiles)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks of the CPU flags
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_description() -> str:
    """This CPU as a result names it: torch's kernel level ("AVX2", "AVX512"), and whether it has bfloat16 units."""
    import torch

    return f"{torch.backends.cpu.get_cpu_capability()}, {'with' if has_bfloat16_units() else 'no'} bfloat16 units"


def section_keys(section: str) -> list[str]:
    """The fields of a section that a profile names: the dataclass's, less those the run sets."""
    return [field.name for field in fields(SECTIONS[section]) if field.name not in SET_BY_THE_RUN[section]]


def run_keys() -> list[str]:
    return [field.name for field in fields(Profile) if field.name not in SECTIONS and field.name != "name"]


def overridable_keys() -> list[str]:
    """Every key `--set` takes, dotted: the run's own fields, then `adapter.…` and `train.…`."""
    return run_keys() + [f"{section}.{key}" for section in SECTIONS for key in section_keys(section)]


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    """The profile `name` (one of PROFILE_NAMES) with `overrides` applied: values, or texts to read as the field's type."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
    where = f"profiles/{name}.json"
    data = json.loads(resources.files(__package__).joinpath("profiles", f"{name}.json").read_text(encoding="utf-8"))
    _require_keys(data, run_keys() + list(SECTIONS), where)
    sections = {}
    for section, cls in SECTIONS.items():
        values = data[section]
        if not isinstance(values, dict):
            raise ValueError(f"{where}: {section} must be an object of {cls.__name__} fields, got {values!r}")
        _require_keys(values, section_keys(section), f"{where}, section {section}")
        sections[section] = cls(**{key: _checked(cls, key, value, f"{section}.") for key, value in values.items()})
    run = {key: data[key] for key in run_keys()}
    return apply_overrides(Profile(name=name, **run, **sections), overrides or {})


def apply_overrides(profile: Profile, overrides: dict) -> Profile:
    """A copy of `profile` with each key of `overrides` replaced; string values are parsed as the field's type.

    A key is a run field (`train_size`), a dotted section field (`adapter.target_r`) or a section field's bare name.
    """
    unknown = sorted(key for key in overrides if _resolve_key(key) is None)
    if unknown:
        raise ValueError(f"unknown profile key(s) {unknown}; valid keys: {', '.join(overridable_keys())}")
    run_changes, section_changes = {}, {section: {} for section in SECTIONS}
    for key, value in overrides.items():
        section, name = _resolve_key(key)
        owner = Profile if section is None else SECTIONS[section]
        hint = typing.get_type_hints(owner)[name]
        value = parse_value(key, value, hint) if isinstance(value, str) else value
        value = _checked(owner, name, value, "" if section is None else f"{section}.")
        (run_changes if section is None else section_changes[section])[name] = value
    changed = {section: replace(getattr(profile, section), **values) for section, values in section_changes.items()
               if values}
    return replace(profile, **run_changes, **changed)


def _resolve_key(key: str) -> tuple[str | None, str] | None:
    """(section or None, field) that an override key names; None if it names none."""
    section, dot, name = key.rpartition(".")
    if dot and section in SECTIONS and name in section_keys(section):
        return section, name
    if not dot:
        if key in run_keys():
            return None, key
        owners = [section for section in SECTIONS if key in section_keys(section)]
        if owners:
            return owners[0], key
    return None


def _require_keys(data: dict, expected: list[str], where: str) -> None:
    if set(data) != set(expected):
        raise ValueError(f"{where}: missing {sorted(set(expected) - set(data))}, unknown "
                         f"{sorted(set(data) - set(expected))}; a profile names every field")


def _checked(owner: type, name: str, value, prefix: str = ""):
    """`value` as field `name` of `owner` takes it (a JSON list as a tuple, an integer as a float), or a ValueError."""
    hint = typing.get_type_hints(owner)[name]
    if tuple[str, ...] in _options(hint):
        value = tuple(value) if isinstance(value, list) else value
    if float in _options(hint) and _is_int(value):
        value = float(value)
    if not _has_type(value, hint):
        raise ValueError(f"profile field {prefix}{name} must be {_type_name(hint)}, got {value!r}")
    return value


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
