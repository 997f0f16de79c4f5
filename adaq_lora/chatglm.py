"""ChatGLM2 checkpoints as transformers' native GLM, without their remote code (paper Sec. 3: ChatGLM2-6B).

The paper's base model is ChatGLM2-6B. Its hub checkpoint brings its own modelling Python (`trust_remote_code`),
which no longer runs under transformers 5. Transformers' `GlmForCausalLM` (GLM-4's) is the same network: RMSNorm
before attention and FFN, multi-query attention with biases on q, k and v only, rotary embeddings on the first
half of each head's dimensions in interleaved pairs, and a SwiGLU FFN whose gate and up matrices are one fused
matrix. Only the names differ, and one matrix is split:

    transformer.embedding.word_embeddings          -> model.embed_tokens
    transformer.encoder.layers.{i}.input_layernorm -> model.layers.{i}.input_layernorm
      self_attention.query_key_value (weight, bias) -> self_attn.q_proj, k_proj, v_proj  (split by rows)
      self_attention.dense                          -> self_attn.o_proj
      post_attention_layernorm                      -> post_attention_layernorm
      mlp.dense_h_to_4h                             -> mlp.gate_up_proj  (both chunk it gate first, then up)
      mlp.dense_4h_to_h                             -> mlp.down_proj
    transformer.encoder.final_layernorm            -> model.norm
    transformer.output_layer                       -> lm_head

The conversion only renames and slices, keeping each tensor's dtype (float16 stays float16), so the converted
model computes what ChatGLM2's own code computes. `converted_snapshot` runs it once per checkpoint into the cache;
the snapshot's Python files are never downloaded, imported or run.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import staged_folder
from .cache import cache_dir
from .chatglm_tokenizer import ChatGLM2Tokenizer

SNAPSHOT_FILES = ["*.json", "*.bin", "*.safetensors", "tokenizer.model"]  # never *.py: that code is not run here
WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")  # safetensors first: read without unpickling
TOP_LEVEL_KEYS = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
LAYER_KEYS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
LAYER_KEY = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
FUSED_QKV = re.compile(r"self_attention\.query_key_value\.(weight|bias)")
DROPPED_KEYS = {"transformer.rotary_pos_emb.inv_freq"}  # a buffer: GLM recomputes it from rope_parameters
# ChatGLM2's switches for which GLM has one setting only; a checkpoint with another value is another network.
GLM_SETTINGS = {"rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False,
                "apply_residual_connection_post_layernorm": False}


def is_chatglm_snapshot(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "chatglm"


def is_chatglm(source: str | Path) -> bool:
    """Whether `source` is a ChatGLM2 checkpoint: a local folder's config.json says so, else the hub's."""
    if Path(source).is_dir():
        return is_chatglm_snapshot(source)
    from huggingface_hub import hf_hub_download

    try:
        config = Path(hf_hub_download(str(source), "config.json"))
    except (OSError, ValueError):  # offline, unknown or not an id: loading it says what is wrong
        return False
    return is_chatglm_snapshot(config.parent)


def is_converted_snapshot(folder: str | Path) -> bool:
    """A folder `converted_snapshot` wrote: GLM weights with ChatGLM2's tokenizer, as its tokenizer config says."""
    config = Path(folder) / "tokenizer_config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == ChatGLM2Tokenizer.__name__


def glm_config(chatglm: dict, where: str | Path = "config.json"):
    """The `GlmConfig` of the network a ChatGLM2 `config.json` (read into `chatglm`) describes."""
    from transformers import GlmConfig

    def field(name):
        if name not in chatglm:
            raise ValueError(f"{where} lacks {name!r}, which every ChatGLM2 config.json has; "
                             "re-download the checkpoint's config.json")
        return chatglm[name]

    for name, value in GLM_SETTINGS.items():
        if chatglm.get(name, value) != value:
            raise ValueError(f"{where} sets {name}={chatglm[name]!r}; GLM has only {name}={value!r}, so this "
                             "checkpoint cannot be loaded as GLM")
    heads = field("num_attention_heads")
    return GlmConfig(
        architectures=["GlmForCausalLM"],
        vocab_size=field("padded_vocab_size"),  # the embedding's rows, more than the tokenizer's ids
        hidden_size=field("hidden_size"),
        intermediate_size=field("ffn_hidden_size"),
        num_hidden_layers=field("num_layers"),
        num_attention_heads=heads,
        num_key_value_heads=field("multi_query_group_num") if field("multi_query_attention") else heads,
        head_dim=field("kv_channels"),
        rms_norm_eps=field("layernorm_epsilon"),
        attention_bias=field("add_qkv_bias"),
        max_position_embeddings=field("seq_length"),
        # ChatGLM2 rotates the first kv_channels/2 dims of a head with base 10000; later ChatGLMs scale the base
        # by rope_ratio.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * chatglm.get("rope_ratio", 1),
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=False,
        pad_token_id=field("pad_token_id"),
        eos_token_id=field("eos_token_id"),
        dtype=field("torch_dtype"),
    )


def split_query_key_value(fused: torch.Tensor, chatglm: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v rows of ChatGLM2's fused `query_key_value` weight or bias."""
    heads, head_dim = chatglm["num_attention_heads"], chatglm["kv_channels"]
    if chatglm["multi_query_attention"]:  # all query heads, then the key groups, then the value groups
        groups = chatglm["multi_query_group_num"]
        parts = fused.split([heads * head_dim, groups * head_dim, groups * head_dim])
    else:  # one head after another, each its q, k and v rows
        per_head = fused.reshape(heads, 3, head_dim, *fused.shape[1:])
        parts = [per_head[:, i].reshape(heads * head_dim, *fused.shape[1:]) for i in range(3)]
    return tuple(part.clone() for part in parts)  # own storage each: safetensors refuses tensors sharing memory


def convert_state_dict(tensors: dict[str, torch.Tensor], chatglm: dict) -> dict[str, torch.Tensor]:
    """One shard's tensors under GLM's names, each exactly the source tensor or a slice of it."""
    converted = {}
    for key, tensor in tensors.items():
        layer = LAYER_KEY.fullmatch(key)
        if key in TOP_LEVEL_KEYS:
            converted[TOP_LEVEL_KEYS[key]] = tensor
        elif layer and layer[2] in LAYER_KEYS:
            converted[f"model.layers.{layer[1]}.{LAYER_KEYS[layer[2]]}"] = tensor
        elif layer and (qkv := FUSED_QKV.fullmatch(layer[2])):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), split_query_key_value(tensor, chatglm)):
                converted[f"model.layers.{layer[1]}.self_attn.{name}.{qkv[1]}"] = part
        elif key not in DROPPED_KEYS:
            raise ValueError(f"unknown ChatGLM2 weight {key!r}: it has no place in GLM (a p-tuning prefix or "
                             "another architecture?); convert only a plain ChatGLM2 checkpoint")
    return converted


def converted_snapshot(source: str | Path) -> Path:
    """The cached GLM folder of ChatGLM2 checkpoint `source` (a local folder or a hub id), converted once.

    The folder loads with `AutoModelForCausalLM.from_pretrained` (it is a `GlmForCausalLM` folder) and
    `ChatGLM2Tokenizer.from_pretrained`. Its name carries a hash of the source's config.json and its files' names
    and sizes, so a changed checkpoint is converted again.
    """
    folder = _snapshot_folder(source)
    config_file = folder / "config.json"
    chatglm = json.loads(config_file.read_text(encoding="utf-8"))
    shards = _weight_files(folder)
    tokenizer_model = folder / "tokenizer.model"
    if not tokenizer_model.is_file():
        raise FileNotFoundError(f"{tokenizer_model} is missing: a ChatGLM2 checkpoint ships its sentencepiece "
                                "model beside the weights; download the whole snapshot again")
    name = Path(source).resolve().name  # a folder's name, or a hub id's last part (its snapshot is named by a commit)
    target = cache_dir() / f"{name}-glm-{_snapshot_key(config_file, [*shards, tokenizer_model])}"
    if (target / "config.json").is_file():
        return target
    config = glm_config(chatglm, config_file)
    with staged_folder(target) as staging:
        written = _write_shards(shards, chatglm, staging, name)
        _check_complete(config, written, folder)
        ChatGLM2Tokenizer(tokenizer_model).save_pretrained(staging)
        config.save_pretrained(staging)
    return target


def _snapshot_folder(source: str | Path) -> Path:
    """A local folder as it is; a hub id downloaded without its Python, once its config.json says ChatGLM2."""
    if Path(source).is_dir():
        if is_chatglm_snapshot(source):
            return Path(source)
    else:
        from huggingface_hub import hf_hub_download, snapshot_download

        if is_chatglm_snapshot(Path(hf_hub_download(str(source), "config.json")).parent):
            return Path(snapshot_download(str(source), allow_patterns=SNAPSHOT_FILES))
    raise ValueError(f"{source}: its config.json does not say model_type 'chatglm', so it is no ChatGLM2 "
                     "checkpoint; load it with load_model() directly")


def _weight_files(folder: Path) -> list[Path]:
    for pattern in WEIGHT_PATTERNS:
        if files := sorted(folder.glob(pattern)):
            return files
    raise FileNotFoundError(f"{folder} holds no weights ({' or '.join(WEIGHT_PATTERNS)}); download the "
                            "checkpoint's weight shards into it")


def _snapshot_key(config_file: Path, files: list[Path]) -> str:
    digest = hashlib.sha256(config_file.read_bytes())
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    # mmap: a 6B shard is read as it is written out, not first copied into memory
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _write_shards(shards: list[Path], chatglm: dict, folder: Path, name: str) -> dict[str, str]:
    """Each source shard converted into one safetensors shard; returns the weight map (GLM key -> file)."""
    from safetensors.torch import save_file

    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)])
    weight_map, total_size = {}, 0
    for shard, file in zip(tqdm(shards, desc=f"converting {name} to GLM", unit="shard"), files):
        try:
            tensors = convert_state_dict(_read_shard(shard), chatglm)
        except ValueError as error:
            raise ValueError(f"{shard}: {error}") from None
        save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, folder / file,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total_size += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return weight_map


def _check_complete(config, written: dict[str, str], source: Path) -> None:
    """Every weight GLM has must have come from the shards: transformers would fill a missing one at random."""
    from transformers import GlmForCausalLM

    with torch.device("meta"):
        expected = set(GlmForCausalLM(config).state_dict())
    if missing := sorted(expected - set(written)):
        raise ValueError(f"the weight shards in {source} lack {len(missing)} of GLM's weights (first: "
                         f"{missing[0]!r}); a shard is missing or truncated: download the checkpoint again")
