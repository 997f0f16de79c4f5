"""Quantizing a model's frozen base with bitsandbytes, on a tiny random Llama."""

import sys

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
from torch import nn

from adaq_lora.quant.quantize import (
    compute_dtype_for,
    dequantized_weight,
    quantize_model,
    storage_report,
)
from conftest import make_tiny_llama

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in DECODER_LINEARS
    }


def test_every_decoder_linear_becomes_linear4bit_and_head_and_embeddings_are_untouched(tiny_llama):
    head, embeddings = tiny_llama.lm_head, tiny_llama.model.embed_tokens
    model = quantize_model(tiny_llama)
    layers = decoder_linears(model)
    assert len(layers) == 2 * len(DECODER_LINEARS)
    assert all(isinstance(layer, bnb.nn.Linear4bit) for layer in layers.values())
    assert model.lm_head is head and type(head) is nn.Linear and head.weight.dtype == torch.float32
    assert model.model.embed_tokens is embeddings and embeddings.weight.dtype == torch.float32
    assert model.is_loaded_in_4bit


def test_the_output_head_stays_in_full_precision_as_qlora_leaves_it():
    model = nn.Module()
    model.model = nn.Module()
    model.model.o_proj = nn.Linear(64, 64)
    model.lm_head = nn.Linear(64, 128)
    quantize_model(model)
    assert isinstance(model.model.o_proj, bnb.nn.Linear4bit)
    assert type(model.lm_head) is nn.Linear


def test_quantized_weight_is_packed_uint8_of_half_the_elements_with_nf4_double_quant_state(tiny_llama):
    float_weight = tiny_llama.model.layers[0].mlp.up_proj.weight
    model = quantize_model(tiny_llama)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.uint8 and weight.numel() == float_weight.numel() // 2
    assert not weight.requires_grad
    state = weight.quant_state
    assert state.quant_type == "nf4" and state.blocksize == 64 and state.nested
    assert state.shape == float_weight.shape and state.absmax.dtype == torch.uint8


def test_fp4_without_double_quant_keeps_float32_scales(tiny_llama):
    model = quantize_model(tiny_llama, quant_type="fp4", double_quant=False)
    state = model.model.layers[0].self_attn.q_proj.weight.quant_state
    assert state.quant_type == "fp4" and not state.nested and state.absmax.dtype == torch.float32


def test_quantized_model_computes_the_float_model_with_dequantized_weights(tiny_llama, token_batch):
    model = quantize_model(tiny_llama)
    restored = make_tiny_llama()
    for name, layer in decoder_linears(model).items():
        restored.get_submodule(name).weight.data = dequantized_weight(layer)
    ids = token_batch["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, restored(ids).logits, rtol=1e-5, atol=1e-5)


def test_quantized_logits_are_within_ten_percent_of_the_float_model(tiny_llama, token_batch):
    """Measured relative error (Frobenius) 0.090. The random init draws every weight from
    N(0, 0.02^2), for which NF4's error is ~9% of the mean weight magnitude; over the 14 quantized
    layers it neither grows nor averages away much, and the float head passes it on unchanged."""
    model = quantize_model(make_tiny_llama())
    ids = token_batch["input_ids"]
    with torch.no_grad():
        expected, actual = tiny_llama(ids).logits, model(ids).logits
    relative_error = ((actual - expected).norm() / expected.norm()).item()
    assert 0.05 < relative_error < 0.1


def test_gradient_flows_through_frozen_4bit_layers_to_the_input(tiny_llama, token_batch):
    model = quantize_model(tiny_llama).train()
    model.requires_grad_(False)
    embeddings = model.get_input_embeddings()(token_batch["input_ids"]).detach().requires_grad_()
    model(inputs_embeds=embeddings, labels=token_batch["labels"]).loss.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.parameters())


def test_dequantized_weight_equals_bitsandbytes_and_is_within_nf4_error_of_the_float_weight(tiny_llama):
    """NF4 on N(0, 0.02^2) weights: measured mean |error| / mean |weight| 0.093 for this layer."""
    float_weight = tiny_llama.model.layers[0].self_attn.q_proj.weight.detach().clone()
    layer = quantize_model(tiny_llama).model.layers[0].self_attn.q_proj
    restored = dequantized_weight(layer)
    assert torch.equal(restored, bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state))
    assert restored.shape == float_weight.shape and restored.dtype == torch.float32
    relative_error = ((restored - float_weight).abs().mean() / float_weight.abs().mean()).item()
    assert 0.08 < relative_error < 0.1


def test_dequantized_weight_reads_bitsandbytes_avx512_bf16_cpu_layout_without_changing_the_layer(tiny_llama):
    """Linear4bit repacks itself on its first CPU inference when the CPU has AVX512-BF16; the repacked
    scales are bfloat16, so the weight read back differs by at most bfloat16 rounding of the scale."""
    layer = quantize_model(tiny_llama).model.layers[0].mlp.gate_proj
    before = dequantized_weight(layer)
    layer.weight.data, layer.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    repacked = layer.weight.data.clone()
    torch.testing.assert_close(dequantized_weight(layer), before, rtol=2**-8, atol=0)
    assert layer.weight.quant_state.packing_format_for_cpu
    assert torch.equal(layer.weight.data, repacked)


def test_dequantized_weight_of_a_float_linear_is_its_weight_and_other_modules_are_refused():
    linear = nn.Linear(8, 4)
    assert torch.equal(dequantized_weight(linear), linear.weight)
    with pytest.raises(TypeError, match="Linear"):
        dequantized_weight(nn.Embedding(4, 8))


def test_adapter_layers_and_their_base_layers_are_left_alone(tiny_llama):
    model = quantize_model(get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj"])))
    attention = model.base_model.model.model.layers[0].self_attn
    assert type(attention.q_proj.base_layer) is nn.Linear
    assert type(attention.q_proj.lora_A["default"]) is nn.Linear
    assert isinstance(attention.k_proj, bnb.nn.Linear4bit)


def test_peft_builds_its_4bit_lora_layers_on_a_quantized_model(tiny_llama):
    model = get_peft_model(quantize_model(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    attention = model.base_model.model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, LoraLinear4bit)
    assert isinstance(attention.q_proj.base_layer, bnb.nn.Linear4bit)


def test_meta_weights_are_refused_before_any_layer_is_replaced():
    with torch.device("meta"):
        model = make_tiny_llama()
    with pytest.raises(ValueError, match="meta device"):
        quantize_model(model)
    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def test_missing_bitsandbytes_is_reported_with_the_install_command(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install bitsandbytes==0\.50\.2"):
        quantize_model(tiny_llama)


def test_storage_report_counts_codes_scales_and_level_tables():
    """One 256x1024 layer: codes n/2, uint8 scales n/64, 16 float32 second-level scales, the float32
    offset, the 16-entry NF4 table and the 256-entry 8-bit table, both float32: 4.16 bits a weight."""
    model = quantize_model(nn.Sequential(nn.Linear(1024, 256)))
    count = 256 * 1024
    report = storage_report(model)
    assert report.quantized_parameters == count
    assert report.quantized_bytes == count // 2 + count // 64 + 4 * 16 + 4 + 4 * 16 + 4 * 256
    assert report.bits_per_quantized_parameter == pytest.approx(4.16, abs=0.005)
    assert (report.other_parameters, report.other_bytes) == (256, 4 * 256)
    assert report.total_bytes == report.quantized_bytes + 4 * 256


def test_storage_report_of_a_float_model_counts_four_bytes_a_parameter(tiny_llama):
    report = storage_report(tiny_llama)
    parameters = sum(parameter.numel() for parameter in tiny_llama.parameters())
    assert (report.quantized_parameters, report.quantized_bytes) == (0, 0)
    assert (report.other_parameters, report.other_bytes) == (parameters, 4 * parameters)


def test_compute_dtype_is_bfloat16_on_cuda_and_float32_elsewhere():
    assert compute_dtype_for("cpu") == torch.float32
    assert compute_dtype_for("cuda") == torch.bfloat16
    assert compute_dtype_for(torch.device("cuda", 0)) == torch.bfloat16
