"""Shared fixtures: tiny random models that run in milliseconds, and offline hub access."""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adaq_lora.quant.kernels import import_bitsandbytes

# Tests compare against bitsandbytes as the package runs it: with this CPU's faulty kernels routed (kernels.py).
import_bitsandbytes()

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """The module in scripts/<name>.py (the scripts are not a package), freshly executed."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_llama(seed: int = 0, vocab_size: int = TINY_LLAMA["vocab_size"]) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab_size})).eval()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default model's real tokenizer (chat template included), without its weights."""
    from transformers import AutoTokenizer

    from adaq_lora.models import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def token_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


@pytest.fixture(scope="session")
def chatglm2_snapshot(tmp_path_factory):
    """A tiny random ChatGLM2 checkpoint in the hub's layout (tests/chatglm2_snapshot.py); tests must not change it."""
    from chatglm2_snapshot import write_chatglm2_snapshot

    return write_chatglm2_snapshot(tmp_path_factory.mktemp("chatglm2") / "chatglm2-tiny")
