"""Claims of Eq. 1: LoRA starts as the identity update, merges exactly, and trains only its adapters."""
import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear
from torch import nn

from adaq_lora import AdaQConfig, adapter_layers, apply_method, set_merged, trainable_parameters
from adaq_lora.adapters.lora import LoraLinear


def test_delta_w_is_zero_at_start(tiny_llama, token_batch):
    before = tiny_llama(input_ids=token_batch["input_ids"]).logits
    model = apply_method(tiny_llama, "lora", AdaQConfig(r=4))
    for layer in adapter_layers(model).values():
        assert torch.count_nonzero(layer.delta_weight()) == 0
    after = model(input_ids=token_batch["input_ids"]).logits
    assert torch.equal(before, after)


def test_lora_adapts_the_seven_default_llama_matrices_per_layer(tiny_llama):
    model = apply_method(tiny_llama, "lora", AdaQConfig(r=4))
    layers = adapter_layers(model)
    assert len(layers) == 2 * 7
    # r (in + out) per matrix: q,o 64x64; k,v 64->32; gate,up 64->128; down 128->64
    per_block = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
    assert trainable_parameters(model) == 2 * per_block


def test_merge_then_unmerge_restores_w0_and_merged_output_equals_adapter_output(tiny_llama, token_batch):
    model = apply_method(tiny_llama, "lora", AdaQConfig(r=4, lora_dropout=0.0))
    torch.manual_seed(3)
    for layer in adapter_layers(model).values():
        nn.init.normal_(layer.lora_B, std=0.05)
    originals = {n: l.base_layer.weight.clone() for n, l in adapter_layers(model).items()}
    unmerged_logits = model(input_ids=token_batch["input_ids"]).logits
    set_merged(model, True)
    merged_logits = model(input_ids=token_batch["input_ids"]).logits
    assert torch.allclose(merged_logits, unmerged_logits, atol=1e-5)
    set_merged(model, False)
    for name, layer in adapter_layers(model).items():
        assert torch.allclose(layer.base_layer.weight, originals[name], atol=1e-7)


def test_only_adapters_get_gradients_and_the_base_stays_bit_identical(tiny_llama, token_batch):
    model = apply_method(tiny_llama, "lora", AdaQConfig(r=4)).train()
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**token_batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in frozen:
            assert param.grad is None
            assert torch.equal(param, frozen[name]), name
    assert any(torch.count_nonzero(layer.lora_B) > 0 for layer in adapter_layers(model).values())


def test_lora_layer_matches_peft_lora_layer_with_the_same_weights():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    ours = LoraLinear(base, r=4, lora_alpha=8, dropout=0.0, init_std=0.02)
    nn.init.normal_(ours.lora_B, std=0.1)
    peft_layer = PeftLoraLinear(nn.Linear(24, 16), "default", r=4, lora_alpha=8, config=LoraConfig(r=4, lora_alpha=8))
    peft_layer.base_layer.load_state_dict(base.state_dict())
    peft_layer.lora_A["default"].weight.data.copy_(ours.lora_A)
    peft_layer.lora_B["default"].weight.data.copy_(ours.lora_B)
    x = torch.randn(5, 24)
    assert torch.allclose(ours(x), peft_layer(x), atol=1e-6)
    assert ours.scaling == peft_layer.scaling["default"] == 2.0


def test_merging_a_4bit_base_is_refused_with_a_reason(tiny_llama):
    model = apply_method(tiny_llama, "qlora", AdaQConfig(r=4))
    layer = next(iter(adapter_layers(model).values()))
    with pytest.raises(ValueError, match="re-quantizing"):
        layer.merge()
