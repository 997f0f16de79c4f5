"""The methods, one table of what each one is (the rows of the paper's Tables 1-2 and their peers; chapter 7).

Every method, ours and the PEFT peers alike, registers one `MethodSpec` here (as PEFT's tuners call
`register_peft_method`): `tuners.methods` registers the paper's six, `tuners.peers` PEFT's three. Code that needs to
know what a method does asks its spec (`method_spec("qlora").quantized`) instead of testing names against lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import SVD_STARTS

ADAPTER_KINDS = (None, "lora", "svd")  # none; B A of Eq. 1; P Λ Q of Eq. 5


@dataclass(frozen=True)
class MethodSpec:
    name: str  # as the command line, the profiles and result.json spell it
    label: str  # what follows the model's name in the tables' Method column, e.g. "+QLoRA" (the paper's own rows)
    adapter: str | None  # "lora" (B A, Eq. 1), "svd" (P Λ Q with a rank budget, Eqs. 5-7) or None
    quantized: bool  # the frozen base is stored in 4 bits (NF4 with double quantization)
    build: Callable  # (model, config, calibration, precision_plan) -> Tuner
    precision_plan: bool = False  # the frozen base by the importance-driven precision plan (quant/precision.py)
    trains_base: bool = False  # every weight of the base trains (full fine-tuning)
    peer: bool = False  # PEFT's implementation run through our loop, for comparison
    svd_start: str | None = None  # SVD adapters: the named start (config.SVD_STARTS) a config's None fields take

    def __post_init__(self):
        if self.adapter not in ADAPTER_KINDS:
            raise ValueError(f"method {self.name!r}: adapter must be one of {ADAPTER_KINDS}, got {self.adapter!r}")
        if self.svd_start is not None and self.svd_start not in SVD_STARTS:
            raise ValueError(f"method {self.name!r}: svd_start must be one of {sorted(SVD_STARTS)}, got {self.svd_start!r}")

    @property
    def trains(self) -> bool:
        """False for `base`, the untrained model of the paper's first rows."""
        return self.adapter is not None or self.trains_base

    @property
    def svd(self) -> bool:
        return self.adapter == "svd"


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is registered already")
    _METHODS[spec.name] = spec
    return spec


def method_names(*, peers: bool = True) -> tuple[str, ...]:
    """Every registered method in the order of registration: the paper's first, then the peers."""
    return tuple(name for name, spec in _METHODS.items() if peers or not spec.peer)


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`, or a ValueError that lists the valid methods."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[name]
