"""Claims about the fused linear cross-entropy (training/fused_loss.py): the same loss and the same gradients as
transformers' own, for a frozen, tied, trainable or 4/8-bit-stored head, with the prompt masked and in bfloat16 —
and the [tokens × vocabulary] logits are never held, so the step's activations shrink."""
import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from adaq_lora import AdaQConfig, prepare
from adaq_lora.measure.memory import measure_training_memory
from adaq_lora.quant.blockwise import BlockwiseLinear
from adaq_lora.training import make_optimizer, training_step
from adaq_lora.training import fused_loss
from adaq_lora.training.fused_loss import FusedLossModel
from conftest import TINY_LLAMA

CONFIG = AdaQConfig(r=4, init_r=4, target_r=2, init_std=0.1, lora_dropout=0.0, precision_budget_bits=5.0)


def batch(vocab: int = TINY_LLAMA["vocab_size"], seq: int = 24, prompt: int = 9, rows: int = 2) -> dict:
    ids = torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(7))
    labels = ids.clone()
    labels[:, :prompt] = -100  # the prompt is not learnt
    labels[-1, -3:] = -100  # nor a right-padded tail
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def model(tied: bool = False, dtype=torch.float32, vocab: int = TINY_LLAMA["vocab_size"]) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab}, tie_word_embeddings=tied)).to(dtype)


def loss_and_gradients(tuner, fused: bool, data: dict):
    """One backward of the loss, transformers' or fused, from a tuner with non-zero adapters (B, λ off zero)."""
    with torch.no_grad():
        for p in tuner.model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    tuner.model.zero_grad(set_to_none=True)
    loss = FusedLossModel(tuner.model)(**data) if fused else tuner.model(**data).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in tuner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method, tied", [("lora", False), ("qlora", True), ("adaq_lora", True), ("adaq_lora", False),
                                          ("full", True), ("adalora", False)])
@pytest.mark.parametrize("logits_at_once", [fused_loss.CHUNK_LOGITS, 30 * 37])  # one block; blocks of 37 rows
def test_the_fused_loss_and_its_gradients_equal_transformers_own(method, tied, logits_at_once, monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", logits_at_once)  # 30 answer tokens: 128 rows in 37+37+37+17
    tuner = prepare(model(tied), method, CONFIG)
    twin = copy.deepcopy(tuner)
    expected_loss, expected = loss_and_gradients(tuner, fused=False, data=batch())
    loss, got = loss_and_gradients(twin, fused=True, data=batch())
    assert loss == pytest.approx(float(expected_loss), rel=1e-6)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-7), name
    if method == "adaq_lora":  # the head the precision plan stores: decoded a block of rows at a time
        assert isinstance(tuner.model.get_output_embeddings(), BlockwiseLinear)


def test_a_trainable_head_with_a_bias_gets_the_gradients_of_the_whole_logits(monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 10 * 23)  # 10 tokens: blocks of 23 rows, the last one short
    torch.manual_seed(0)
    head, hidden = nn.Linear(16, 100), torch.randn(2, 6, 16, requires_grad=True)
    labels = torch.randint(0, 100, (2, 6))
    labels[0, :2] = -100
    twin = copy.deepcopy(head)
    loss = fused_loss.fused_cross_entropy(hidden, head, labels)
    expected = F.cross_entropy(twin(hidden)[:, :-1].reshape(-1, 100), labels[:, 1:].reshape(-1))
    got = torch.autograd.grad(loss, [hidden, head.weight, head.bias])
    wanted = torch.autograd.grad(expected, [hidden, twin.weight, twin.bias])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    for mine, theirs in zip(got, wanted):
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-7)


def test_a_blockwise_head_is_decoded_twice_a_step_whatever_the_number_of_answer_tokens(monkeypatch):
    tuner = prepare(model(vocab=1024), "adaq_lora", CONFIG)
    head = tuner.model.get_output_embeddings()
    assert isinstance(head, BlockwiseLinear)
    decoded, rows = [], head.matrix.rows
    monkeypatch.setattr(head.matrix, "rows", lambda index=None: decoded.append(index) or rows(index))
    data = batch(vocab=1024, seq=24, prompt=2)
    answer_tokens = int((data["labels"][:, 1:] != -100).sum())  # 41 of the 46 shifted positions
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", answer_tokens * 64)  # blocks of 64 rows
    FusedLossModel(tuner.model)(**data).backward()
    assert len(decoded) == 2 * 1024 // 64  # two passes of 16 blocks: the head's rows twice, not once per token chunk
    assert sum(index.stop - index.start for index in decoded) == 2 * 1024


def test_in_bfloat16_the_fused_loss_follows_transformers_within_bfloat16_rounding():
    tuner = prepare(model(dtype=torch.bfloat16), "lora", replace(CONFIG, compute_dtype="bfloat16"))
    twin = copy.deepcopy(tuner)
    expected_loss, expected = loss_and_gradients(tuner, fused=False, data=batch())
    loss, got = loss_and_gradients(twin, fused=True, data=batch())
    assert loss == pytest.approx(float(expected_loss), rel=1e-2)
    for name in expected:
        relative = float((got[name].float() - expected[name].float()).norm() / expected[name].float().norm())
        assert relative < 0.02, (name, relative)


def test_a_step_accumulating_two_micro_batches_moves_the_adapters_alike_with_either_loss():
    data = batch()
    halves = [{key: value[i:i + 1] for key, value in data.items()} for i in (0, 1)]
    moved = []
    for fused in (False, True):
        tuner = prepare(model(), "adaq_lora", replace(CONFIG, fused_loss=fused, total_steps=30))
        optimizer = make_optimizer([p for p in tuner.model.parameters() if p.requires_grad], "adamw", 1e-2)
        outcome = training_step(tuner, halves, optimizer, max_grad_norm=0.1)
        moved.append((outcome.cross_entropy, {n: p.detach().clone() for n, p in tuner.model.named_parameters()
                                              if p.requires_grad}))
    assert moved[1][0] == pytest.approx(moved[0][0], rel=1e-6)
    for name, tensor in moved[0][1].items():
        assert torch.allclose(moved[1][1][name], tensor, atol=1e-6), name


def test_a_batch_without_an_answer_token_is_refused():
    data = batch()
    data["labels"][:] = -100
    with pytest.raises(ValueError, match="no answer token"):
        FusedLossModel(model())(**data)


def test_the_logits_are_never_held_so_the_step_s_activations_shrink(monkeypatch):
    vocab = 8192  # a vocabulary large beside the hidden width, as a real model's is
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 16 * vocab)  # chunks of 16 tokens, as SmolLM2 gets 21
    measured = {}
    for fused in (False, True):
        tuner = prepare(model(vocab=vocab), "qlora", replace(CONFIG, fused_loss=fused))
        measured[fused] = measure_training_memory(tuner, batch(vocab, seq=64, prompt=8, rows=1))
    logits_mb = 64 * vocab * 4 / 2**20  # one float32 copy of the logits: 2 MiB; transformers holds about three
    assert measured[False].activations_mb - measured[True].activations_mb > 1.5 * logits_mb  # 3.95 MiB here
    assert measured[True].activations_mb < 0.4 * measured[False].activations_mb  # 2.54 against 6.49 MiB
