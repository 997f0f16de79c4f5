"""A decoder's shape read from its configuration: what the memory model needs to know of a model (chapter 8).

Llama-layout models (SmolLM2, Qwen2, Mistral), transformers' GLM and ChatGLM2's own configuration name the same
quantities differently; `ModelShape` reads each, from a transformers config or a plain dict, and says which field a
config lacks. ChatGLM2 runs as transformers' native GLM (`chatglm.py` converts it), so its shape is GLM's layout:
q, k, v and o projections with biases on q, k and v only, and the FFN's gate and up matrices fused in one
`gate_up_proj`. ChatGLM2-6B's own published configuration ships in the repository's data/ folder, so the paper's
model can be predicted without downloading it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..data import DATA_DIR

CHATGLM2_6B_CONFIG = DATA_DIR / "chatglm2-6b.json"
HF_FIELDS = dict(num_layers="num_hidden_layers", hidden_size="hidden_size", intermediate_size="intermediate_size",
                 num_heads="num_attention_heads", num_kv_heads="num_key_value_heads", vocab_size="vocab_size",
                 tied_embeddings="tie_word_embeddings")
FIELDS = {  # our name -> the configuration's name, per kind of configuration
    "transformers": HF_FIELDS,
    "chatglm": dict(num_layers="num_layers", hidden_size="hidden_size", intermediate_size="ffn_hidden_size",
                    num_heads="num_attention_heads", num_kv_heads="multi_query_group_num", head_dim="kv_channels",
                    vocab_size="padded_vocab_size", tied_embeddings="tie_word_embeddings"),
}
ATTENTION_KERNELS = ("sdpa", "flash_attention_2", "eager")


@dataclass
class ModelShape:
    model_type: str  # the configuration's model_type ("llama", "glm", "chatglm", ...)
    layout: str  # "glm" (GLM-4's and ChatGLM2's), or "llama" for every decoder laid out as Llama (SmolLM, Qwen2, Mistral)
    num_layers: int  # decoder layers L
    hidden_size: int  # h
    intermediate_size: int  # f, the FFN width
    num_heads: int  # query heads n_h
    num_kv_heads: int  # key/value heads n_kv (ChatGLM's multi-query groups)
    head_dim: int  # d
    vocab_size: int  # V
    tied_embeddings: bool  # the output head shares the input embedding's weight
    attention_bias: bool  # the attention projections carry biases (ChatGLM2: add_qkv_bias, on q, k and v)
    attention: str  # the attention kernel: sdpa, flash_attention_2 or eager

    @classmethod
    def from_config(cls, config, attention: str | None = None) -> "ModelShape":
        """From a transformers config or a dict with the fields of FIELDS (ChatGLM2's own names for ChatGLM2)."""
        def read(name, default=None):
            return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)

        model_type = read("model_type") or "llama"
        kind = "chatglm" if model_type == "chatglm" else "transformers"
        missing = [name for name in FIELDS[kind].values() if read(name) is None]
        if missing:
            raise ValueError(f"the model config lacks {missing}; a {model_type} config needs "
                             f"{sorted(FIELDS[kind].values())}")
        values = {ours: read(theirs) for ours, theirs in FIELDS[kind].items()}
        if kind == "chatglm" and not read("multi_query_attention", False):
            values["num_kv_heads"] = values["num_heads"]  # ChatGLM2's groups count only with multi-query attention
        values.setdefault("head_dim", read("head_dim") or values["hidden_size"] // values["num_heads"])
        attention = attention or read("_attn_implementation") or read("attn_implementation") or "sdpa"
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention implementation {attention!r} is not modelled; use one of {ATTENTION_KERNELS}")
        attention_bias = bool(read("add_qkv_bias" if kind == "chatglm" else "attention_bias", False))
        layout = "glm" if model_type in ("glm", "chatglm") else "llama"
        return cls(model_type, layout, attention=attention, attention_bias=attention_bias, **values)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by leaf name."""
        h, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        if self.layout == "glm":
            return attention | {"gate_up_proj": (h, 2 * f), "down_proj": (f, h)}
        return attention | {"gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def input_groups(self) -> list[tuple[str, ...]]:
        """The linears of a layer that read the same tensor: attention in, attention out, MLP in, MLP act."""
        if self.layout == "glm":
            return [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_up_proj",), ("down_proj",)]
        return [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)]

    def bias_size(self) -> int:
        """Bias weights per layer: the attention projections' where the config has them."""
        if not self.attention_bias:
            return 0
        biased = ("q_proj", "k_proj", "v_proj") if self.layout == "glm" else ("q_proj", "k_proj", "v_proj", "o_proj")
        return sum(self.linears()[name][1] for name in biased)

    def embedding_parameters(self) -> int:
        """The input embedding, and the output head when it has its own weight."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    def parameter_count(self) -> int:
        per_layer = sum(i * o for i, o in self.linears().values()) + self.bias_size() + 2 * self.hidden_size
        return self.num_layers * per_layer + self.hidden_size + self.embedding_parameters()


def load_chatglm2_6b_config() -> dict:
    """ChatGLM2-6B's published configuration (THUDM's config.json), kept in the repository's data/ folder."""
    if not CHATGLM2_6B_CONFIG.exists():
        raise FileNotFoundError(f"{CHATGLM2_6B_CONFIG} is missing: it ships with the source checkout, not the wheel")
    return json.loads(CHATGLM2_6B_CONFIG.read_text())
