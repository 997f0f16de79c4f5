"""A tiny random ChatGLM2 checkpoint laid out as the hub has THUDM/chatglm2-6b, built in well under a second.

Its config.json has ChatGLM2-6B's fields (data/chatglm2-6b.json) with the sizes shrunk; its float16 weights use
ChatGLM2's names (fused query_key_value with bias, the rotary inv_freq buffer) over two pytorch_model-*.bin shards
with their index; its tokenizer.model is a small byte-fallback BPE sentencepiece model trained here on English and
Chinese sentences, so any text tokenizes. Its modeling_chatglm.py raises if anything imports it.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import sentencepiece
import torch

from adaq_lora.data import load_records

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
ENGLISH = [
    "Low-rank adapters train a small update beside a frozen base model.",
    "The base weights are stored in four bits and the adapters in bfloat16.",
    "Philosophy asks what a sophomore knows, and a soprano sings it.",
    "An importance score decides which singular values each adapter keeps.",
    "Compute the answer step by step, then write it on the last line.",
    "The test set is twenty percent of the records, chosen with a fixed seed.",
]
NOT_IMPORTABLE = 'raise ImportError("this checkpoint\'s Python must never be imported")\n'


def training_sentences() -> list[str]:
    """English sentences and the first Chinese instructions of both stand-in sets."""
    chinese = [record["instruction"] for name in ("alpaca_zh", "school_math") for record in load_records(name)[:8]]
    return ENGLISH * 2 + chinese


def train_tokenizer_model(vocab_size: int = 480) -> bytes:
    """A BPE sentencepiece model like ChatGLM2's: <unk> 0, <s> 1, </s> 2, byte fallback for unseen characters.

    `sop` is a piece of its own, spelled like ChatGLM2's special token, so tests see that text's pieces keep
    sentencepiece's ids. Identity normalization keeps full-width punctuation (问：) and newlines as written.
    """
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.98, normalization_rule_name="identity",
        remove_extra_whitespaces=False, user_defined_symbols=["sop"], hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


def chatglm2_config(*, num_layers, hidden_size, ffn_hidden_size, num_attention_heads, kv_channels,
                    multi_query_group_num, padded_vocab_size, multi_query_attention=True) -> dict:
    """ChatGLM2-6B's config.json, every field kept, the sizes replaced."""
    config = json.loads((DATA_DIR / "chatglm2-6b.json").read_text())
    config.update(num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
                  num_attention_heads=num_attention_heads, kv_channels=kv_channels,
                  multi_query_group_num=multi_query_group_num, padded_vocab_size=padded_vocab_size,
                  multi_query_attention=multi_query_attention, seq_length=256)
    return config


def chatglm2_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random float16 weights under ChatGLM2's names, norms near 1 so activations stay in range."""
    generator = torch.Generator().manual_seed(seed)
    h, f, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    heads, d = config["num_attention_heads"], config["kv_channels"]
    kv = config["multi_query_group_num"] if config["multi_query_attention"] else heads
    qkv_rows = (heads + 2 * kv) * d

    def normal(*shape, std=None):
        std = 1 / math.sqrt(shape[-1]) if std is None else std
        return (torch.randn(*shape, generator=generator) * std).half()

    def norm():
        return (1 + 0.1 * torch.randn(h, generator=generator)).half()

    rot = d // 2
    weights = {"transformer.embedding.word_embeddings.weight": normal(vocab, h, std=1.0),
               "transformer.rotary_pos_emb.inv_freq": (1 / 10000 ** (torch.arange(0, rot, 2).float() / rot)).half()}
    for i in range(config["num_layers"]):
        layer = f"transformer.encoder.layers.{i}."
        weights |= {
            layer + "input_layernorm.weight": norm(),
            layer + "self_attention.query_key_value.weight": normal(qkv_rows, h),
            layer + "self_attention.query_key_value.bias": normal(qkv_rows, std=0.1),
            layer + "self_attention.dense.weight": normal(h, heads * d),
            layer + "post_attention_layernorm.weight": norm(),
            layer + "mlp.dense_h_to_4h.weight": normal(2 * f, h),
            layer + "mlp.dense_4h_to_h.weight": normal(h, f),
        }
    weights |= {"transformer.encoder.final_layernorm.weight": norm(),
                "transformer.output_layer.weight": normal(vocab, h)}
    return weights


def write_chatglm2_snapshot(folder: str | Path, *, seed: int = 0, num_layers: int = 2, hidden_size: int = 64,
                            ffn_hidden_size: int = 128, num_attention_heads: int = 4, kv_channels: int = 16,
                            multi_query_group_num: int = 2, multi_query_attention: bool = True,
                            padded_vocab_size: int | None = None, tokenizer_model: bytes | None = None) -> Path:
    """Write the checkpoint into `folder`; `padded_vocab_size` defaults to the tokenizer's ids (pieces + 5)
    rounded up to a multiple of 64, which leaves rows with no token, as ChatGLM2-6B's 65024 do."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_model = tokenizer_model or train_tokenizer_model()
    (folder / "tokenizer.model").write_bytes(tokenizer_model)
    pieces = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model).get_piece_size()
    padded_vocab_size = padded_vocab_size or math.ceil((pieces + 5) / 64) * 64
    config = chatglm2_config(num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
                             num_attention_heads=num_attention_heads, kv_channels=kv_channels,
                             multi_query_group_num=multi_query_group_num, padded_vocab_size=padded_vocab_size,
                             multi_query_attention=multi_query_attention)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    weights = chatglm2_weights(config, seed)
    keys = list(weights)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        torch.save({key: weights[key] for key in shard_keys}, folder / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
             "weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
        "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}, indent=2))
    for module in ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py"):
        (folder / module).write_text(NOT_IMPORTABLE)
    return folder


def read_chatglm2_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All the checkpoint's tensors under ChatGLM2's names, as written."""
    weights = {}
    for shard in sorted(Path(folder).glob("pytorch_model-*.bin")):
        weights |= torch.load(shard, weights_only=True)
    return weights
