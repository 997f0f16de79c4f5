"""Claims about ChatGLM2 (the paper's model, Sec. 3) loaded as transformers' GLM: the converted model computes
what ChatGLM2's own formulation computes, the conversion is exact, cached, re-done when the checkpoint changes,
atomic and never runs the checkpoint's Python, and the tokenizer is ChatGLM2's."""
import fnmatch
import json
import math
import shutil
import sys

import pytest
import sentencepiece
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GlmForCausalLM

from adaq_lora import chatglm
from adaq_lora.chatglm import converted_snapshot, glm_config
from adaq_lora.chatglm_tokenizer import ChatGLM2Tokenizer
from adaq_lora.data import build_prompt, encode_prompt
from adaq_lora.models import default_target_modules, load_model
from chatglm2_snapshot import read_chatglm2_weights, write_chatglm2_snapshot

GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
RECORD = {"instruction": "判断下面的数是奇数还是偶数。", "input": "7968", "output": "7968是偶数。"}


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """Conversions go to a fresh folder, never the user's cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("ADAQ_LORA_CACHE", str(folder))
    return folder


@pytest.fixture
def tokenizer(chatglm2_snapshot):
    return ChatGLM2Tokenizer(chatglm2_snapshot / "tokenizer.model")


@pytest.fixture
def sp(chatglm2_snapshot):
    return sentencepiece.SentencePieceProcessor(model_file=str(chatglm2_snapshot / "tokenizer.model"))


def chatglm2_logits(weights, config, input_ids, attention_mask=None, position_ids=None):
    """ChatGLM2's forward pass, written from its description over its own weight names, in float32."""
    w = {key: value.float() for key, value in weights.items()}
    heads, head_dim = config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"] if config["multi_query_attention"] else heads
    batch, length = input_ids.shape
    rot = head_dim // 2  # ChatGLM2 rotates the first half of each head's dimensions, in interleaved pairs
    theta = 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    positions = torch.arange(length).expand(batch, -1) if position_ids is None else position_ids
    angles = positions[:, None, :, None].float() * theta  # (batch, 1, length, rot / 2)
    cos, sin = angles.cos(), angles.sin()

    def rotary(x):
        pairs = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
        first, second = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=-1).flatten(-2)
        return torch.cat([turned, x[..., rot:]], dim=-1)

    def rms_norm(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["layernorm_epsilon"])

    allowed = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, -1, -1)
    if attention_mask is not None:
        real = attention_mask.bool()
        allowed = (allowed & real[:, None, :]) | ~real[:, :, None]  # ChatGLM2 lets a padding query see all keys
    hidden = w["transformer.embedding.word_embeddings.weight"][input_ids]
    for i in range(config["num_layers"]):
        layer = f"transformer.encoder.layers.{i}."
        x = rms_norm(hidden, w[layer + "input_layernorm.weight"])
        fused = layer + "self_attention.query_key_value."
        qkv = x @ w[fused + "weight"].T + w[fused + "bias"]
        if config["multi_query_attention"]:
            q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
            q, k, v = (t.view(batch, length, -1, head_dim).transpose(1, 2) for t in (q, k, v))
        else:
            q, k, v = qkv.view(batch, length, heads, 3 * head_dim).transpose(1, 2).split(head_dim, dim=-1)
        q, k = rotary(q), rotary(k)
        k, v = (t.repeat_interleave(heads // groups, dim=1) for t in (k, v))  # each group serves adjacent heads
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        attention = (scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v).transpose(1, 2)
        hidden = hidden + attention.reshape(batch, length, -1) @ w[layer + "self_attention.dense.weight"].T
        x = rms_norm(hidden, w[layer + "post_attention_layernorm.weight"])
        gate, up = (x @ w[layer + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        hidden = hidden + (F.silu(gate) * up) @ w[layer + "mlp.dense_4h_to_h.weight"].T
    hidden = rms_norm(hidden, w["transformer.encoder.final_layernorm.weight"])
    return hidden @ w["transformer.output_layer.weight"].T


def chatglm2_greedy(weights, config, input_ids, attention_mask, steps):
    """ChatGLM2's chat loop: positions count from each row's first real token, one argmax token a step."""
    ids, mask = input_ids, attention_mask
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_id = chatglm2_logits(weights, config, ids, mask, positions)[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, next_id], dim=1), torch.cat([mask, torch.ones_like(next_id)], dim=1)
    return ids


def source(folder):
    return read_chatglm2_weights(folder), json.loads((folder / "config.json").read_text())


def glm_float32(cache, snapshot):
    return AutoModelForCausalLM.from_pretrained(converted_snapshot(snapshot), dtype=torch.float32).eval()


def random_ids(config, batch, length, seed=0):
    return torch.randint(0, config["padded_vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("multi_query", [True, False], ids=["multi-query", "one-kv-per-head"])
def test_the_converted_models_logits_equal_chatglm2s_own_formulation(cache, tmp_path, chatglm2_snapshot, multi_query):
    snapshot = (chatglm2_snapshot if multi_query else
                write_chatglm2_snapshot(tmp_path / "mha", multi_query_attention=False))
    weights, config = source(snapshot)
    model = glm_float32(cache, snapshot)
    assert isinstance(model, GlmForCausalLM) and model.config.num_key_value_heads == (2 if multi_query else 4)
    input_ids = random_ids(config, 2, 11)
    with torch.no_grad():
        difference = (model(input_ids).logits - chatglm2_logits(weights, config, input_ids)).abs().max().item()
    print(f"float32 max |GLM - ChatGLM2| logits, {'multi-query' if multi_query else 'one kv per head'}: "
          f"{difference:.2e}")
    assert difference <= 1e-5


def test_left_padding_changes_no_real_tokens_logits_whichever_way_positions_are_counted(cache, chatglm2_snapshot):
    # ChatGLM2's forward, like GLM's, counts positions over the padded row unless given position_ids; ChatGLM2's
    # tokenizer gives position_ids counted from the first real token, as GLM's generate derives them from the
    # attention mask. Rotary embeddings see only offsets between real tokens, so both give the same logits.
    weights, config = source(chatglm2_snapshot)
    model = glm_float32(cache, chatglm2_snapshot)
    input_ids = random_ids(config, 2, 9, seed=1)
    mask = torch.ones_like(input_ids)
    mask[0, :3] = 0
    input_ids[0, :3] = 0  # ChatGLM2 pads with <unk>, id 0
    real = mask.bool()
    with torch.no_grad():
        alone = model(input_ids[:1, 3:]).logits[0]
        for positions in (None, (mask.cumsum(-1) - 1).clamp(min=0)):
            glm = model(input_ids, attention_mask=mask, position_ids=positions).logits
            reference = chatglm2_logits(weights, config, input_ids, mask, positions)
            difference = (glm - reference)[real].abs().max().item()
            counted = "over the padded row" if positions is None else "from the first real token"
            print(f"left padding, positions {counted}: float32 max |GLM - ChatGLM2| = {difference:.2e}")
            assert difference <= 1e-5
            assert (glm[0, 3:] - alone).abs().max().item() <= 1e-5  # the padded row reads as the row alone


def test_greedy_generation_matches_chatglm2s_argmax_loop(cache, chatglm2_snapshot):
    weights, config = source(chatglm2_snapshot)
    model = glm_float32(cache, chatglm2_snapshot)
    model.generation_config.eos_token_id = None  # a random model may emit </s>; run all the steps
    input_ids = random_ids(config, 2, 7, seed=2)
    mask = torch.ones_like(input_ids)
    mask[1, :2] = 0
    input_ids[1, :2] = 0
    with torch.no_grad():
        generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(generated, chatglm2_greedy(weights, config, input_ids, mask, steps=5))


def test_every_converted_tensor_is_the_source_or_its_slice_bit_for_bit_in_float16(cache, chatglm2_snapshot):
    weights, config = source(chatglm2_snapshot)
    folder = converted_snapshot(chatglm2_snapshot)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    converted = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(folder / shard, "pt") as file:
            converted |= {key: file.get_tensor(key) for key in file.keys()}
    with torch.device("meta"):
        assert set(converted) == set(GlmForCausalLM(glm_config(config)).state_dict())
    assert {tensor.dtype for tensor in converted.values()} == {torch.float16}
    renamed = {"model.embed_tokens.weight": "transformer.embedding.word_embeddings.weight",
               "model.norm.weight": "transformer.encoder.final_layernorm.weight",
               "lm_head.weight": "transformer.output_layer.weight"}
    for glm, chatglm2 in renamed.items():
        assert torch.equal(converted[glm], weights[chatglm2])
    for i in range(config["num_layers"]):
        glm, chatglm2 = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for end in ("weight", "bias"):
            fused = torch.cat([converted[f"{glm}self_attn.{name}_proj.{end}"] for name in "qkv"])
            assert torch.equal(fused, weights[f"{chatglm2}self_attention.query_key_value.{end}"])
        assert converted[f"{glm}self_attn.q_proj.weight"].shape == (4 * 16, 64)
        assert converted[f"{glm}self_attn.k_proj.weight"].shape == (2 * 16, 64)
        for glm_name, chatglm2_name in (("self_attn.o_proj", "self_attention.dense"),
                                        ("mlp.gate_up_proj", "mlp.dense_h_to_4h"),
                                        ("mlp.down_proj", "mlp.dense_4h_to_h")):
            assert torch.equal(converted[f"{glm}{glm_name}.weight"], weights[f"{chatglm2}{chatglm2_name}.weight"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "glm"
    assert (folder / "tokenizer.model").read_bytes() == (chatglm2_snapshot / "tokenizer.model").read_bytes()


def test_the_conversion_is_cached_and_done_again_when_the_checkpoint_changes(cache, tmp_path, chatglm2_snapshot):
    snapshot = shutil.copytree(chatglm2_snapshot, tmp_path / "chatglm2-copy")
    first = converted_snapshot(snapshot)
    written = {path.name: path.stat().st_mtime_ns for path in first.iterdir()}
    assert converted_snapshot(snapshot) == first
    assert {path.name: path.stat().st_mtime_ns for path in first.iterdir()} == written  # nothing rewritten

    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "layernorm_epsilon": 1e-6}))
    second = converted_snapshot(snapshot)
    assert second != first and json.loads((second / "config.json").read_text())["rms_norm_eps"] == 1e-6

    weights = read_chatglm2_weights(snapshot)  # the same weights in one shard: other files, converted again
    for shard in snapshot.glob("pytorch_model*"):
        shard.unlink()
    torch.save(weights, snapshot / "pytorch_model.bin")
    third = converted_snapshot(snapshot)
    assert third not in (first, second) and (third / "model.safetensors").is_file()
    assert sorted(path.name for path in cache.iterdir()) == sorted(path.name for path in (first, second, third))


def test_the_checkpoints_python_is_never_imported_nor_copied(cache, chatglm2_snapshot):
    model, tokenizer = load_model(str(chatglm2_snapshot))
    assert not [name for name in sys.modules if "modeling_chatglm" in name or name.startswith("transformers_modules")]
    assert not list(converted_snapshot(chatglm2_snapshot).glob("*.py"))


def test_a_hub_id_fetches_its_config_first_then_the_snapshot_without_python(cache, tmp_path, monkeypatch,
                                                                            chatglm2_snapshot):
    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename):
        calls.append(("file", repo_id, filename))
        return str(chatglm2_snapshot / filename)

    def snapshot_download(repo_id, allow_patterns):
        calls.append(("snapshot", repo_id, tuple(allow_patterns)))
        local = tmp_path / "hub" / "snapshots" / "0123abc"
        local.mkdir(parents=True)
        for file in chatglm2_snapshot.iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy(file, local / file.name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    folder = converted_snapshot("THUDM/chatglm2-6b")
    assert calls[0] == ("file", "THUDM/chatglm2-6b", "config.json")
    assert calls[1][:2] == ("snapshot", "THUDM/chatglm2-6b")
    assert not any(fnmatch.fnmatch("modeling_chatglm.py", pattern) for pattern in calls[1][2])
    assert folder.name.startswith("chatglm2-6b-glm-") and not list((tmp_path / "hub").rglob("*.py"))


def test_the_conversion_is_atomic(cache, monkeypatch, chatglm2_snapshot):
    converted_snapshot(chatglm2_snapshot)
    assert [path.name for path in cache.iterdir()] == [converted_snapshot(chatglm2_snapshot).name]  # no staging
    shutil.rmtree(cache)
    convert = chatglm.convert_state_dict
    shards_seen = []

    def fail_on_the_second_shard(tensors, config):
        shards_seen.append(1)
        if len(shards_seen) == 2:
            raise RuntimeError("disk full")
        return convert(tensors, config)

    monkeypatch.setattr(chatglm, "convert_state_dict", fail_on_the_second_shard)
    with pytest.raises(RuntimeError, match="disk full"):
        converted_snapshot(chatglm2_snapshot)
    assert list(cache.iterdir()) == []  # neither the target nor a half-written staging folder


def test_the_tokenizer_prefixes_gmask_sop_and_otherwise_is_sentencepiece(tokenizer, sp):
    pieces = sp.get_piece_size()
    assert tokenizer.vocab_size == pieces + 5
    assert [tokenizer.special_ids[t] for t in ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")] == list(
        range(pieces, pieces + 5))
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token, tokenizer.pad_token_id) == ("</s>", 2,
                                                                                                         "<unk>", 0)
    text = "Low-rank adapters 训练 </s> [gMASK] sop"
    assert tokenizer(text)["input_ids"] == [pieces + 1, pieces + 3] + sp.encode(text)
    assert tokenizer.get_special_tokens_mask(sp.encode(text)) == [1, 1] + [0] * len(sp.encode(text))
    # "sop" is a piece of this vocabulary: inside "philosophy" it keeps sentencepiece's id, not the special one
    assert tokenizer("philosophy", add_special_tokens=False)["input_ids"] == sp.encode("philosophy")
    assert sp.piece_to_id("sop") in sp.encode("philosophy") and pieces + 3 not in sp.encode("philosophy")


def test_the_tokenizer_pads_on_the_left_and_decodes_only_real_tokens(tokenizer, sp, chatglm2_snapshot):
    batch = tokenizer(["a", "bb"], padding=True)
    width = len(batch["input_ids"][1])
    short = 2 + len(sp.encode("a"))
    assert batch["input_ids"][0] == [0] * (width - short) + tokenizer.prefix_ids + sp.encode("a")
    assert batch["attention_mask"][0] == [0] * (width - short) + [1] * short
    padded_vocab_size = json.loads((chatglm2_snapshot / "config.json").read_text())["padded_vocab_size"]
    ids = tokenizer("问：7968是偶数。")["input_ids"] + [padded_vocab_size - 1, tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "问：7968是偶数。"
    assert tokenizer.decode(ids) == "[gMASK]sop问：7968是偶数。</s>"


def test_the_chat_template_is_chatglm2s_prompt_and_encode_prompt_adds_the_prefix(tokenizer, sp):
    single = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                           add_generation_prompt=True)
    assert single == "[Round 1]\n\n问：你好\n\n答："
    turns = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1"},
             {"role": "user", "content": "q2"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == (
        "[Round 1]\n\n问：q1\n\n答：r1\n\n[Round 2]\n\n问：q2\n\n答：")
    prompt = build_prompt(RECORD, tokenizer)
    assert prompt == "[Round 1]\n\n问：判断下面的数是奇数还是偶数。\n7968\n\n答："
    assert encode_prompt(RECORD, tokenizer) == tokenizer.prefix_ids + sp.encode(prompt)


def test_the_tokenizer_saves_and_loads_back_the_same(tokenizer, tmp_path, chatglm2_snapshot):
    tokenizer.save_pretrained(tmp_path)
    loaded = ChatGLM2Tokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == (chatglm2_snapshot / "tokenizer.model").read_bytes()
    assert loaded(["a", "philosophy 答："], padding=True) == tokenizer(["a", "philosophy 答："], padding=True)
    assert loaded.chat_template == tokenizer.chat_template and loaded.padding_side == "left"


def test_load_model_gives_glm_with_chatglm2s_tokenizer_from_a_checkpoint_or_its_conversion(cache, chatglm2_snapshot):
    model, tokenizer = load_model(str(chatglm2_snapshot))
    assert isinstance(model, GlmForCausalLM) and isinstance(tokenizer, ChatGLM2Tokenizer)
    assert default_target_modules(model) == GLM_TARGETS
    again, tokenizer_again = load_model(str(converted_snapshot(chatglm2_snapshot)))
    assert isinstance(again, GlmForCausalLM) and isinstance(tokenizer_again, ChatGLM2Tokenizer)


def test_a_checkpoint_without_tokenizer_model_or_with_an_unknown_weight_is_refused_by_file(cache, tmp_path,
                                                                                          chatglm2_snapshot):
    no_tokenizer = shutil.copytree(chatglm2_snapshot, tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"no-tokenizer/tokenizer\.model is missing"):
        load_model(str(no_tokenizer))
    extra = shutil.copytree(chatglm2_snapshot, tmp_path / "extra")
    shard = extra / "pytorch_model-00002-of-00002.bin"
    torch.save({**torch.load(shard, weights_only=True), "transformer.prefix_encoder.embedding.weight": torch.zeros(2)},
               shard)
    with pytest.raises(ValueError, match=r"pytorch_model-00002-of-00002\.bin: unknown ChatGLM2 weight "
                                         r"'transformer\.prefix_encoder\.embedding\.weight'"):
        converted_snapshot(extra)
    truncated = shutil.copytree(chatglm2_snapshot, tmp_path / "truncated")
    (truncated / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ValueError, match=r"weight shards in .*truncated lack \d+ of GLM's weights"):
        converted_snapshot(truncated)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(chatglm2_snapshot / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match="no-weights holds no weights"):
        converted_snapshot(no_weights)
    config = json.loads((chatglm2_snapshot / "config.json").read_text())
    with pytest.raises(ValueError, match=r"config\.json lacks 'kv_channels'"):
        glm_config({k: v for k, v in config.items() if k != "kv_channels"}, chatglm2_snapshot / "config.json")
    assert list(cache.iterdir()) == []


def test_a_4bit_nf4_base_loads_on_the_cpu_and_gives_finite_logits(cache, chatglm2_snapshot):
    import bitsandbytes as bnb

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model, tokenizer = load_model(str(chatglm2_snapshot), quantization_config=quantization, dtype=torch.bfloat16)
    quantized = {name.rsplit(".", 1)[-1] for name, module in model.model.layers.named_modules()
                 if isinstance(module, bnb.nn.Linear4bit)}
    assert quantized == set(GLM_TARGETS)
    with torch.no_grad():
        logits = model(**tokenizer(["问：7968是偶数吗？", "a"], padding=True, return_tensors="pt")).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
