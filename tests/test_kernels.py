"""The 4-bit base computes with the weight its codes stand for, on every CPU, in training and in inference.

bitsandbytes 0.50.2 takes other CPU kernels where the CPU has AVX-512 (adaq_lora.quant.kernels). These tests hold on
any CPU: the layers are compared with the NF4 reference as the process runs them, and the routing itself is
exercised by making the probe see a faulty kernel, so the fallback runs on a CPU without AVX-512 as well.
"""
import bitsandbytes as bnb
import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn

from adaq_lora.quant import kernels
from adaq_lora.quant.blockwise import BlockwiseEmbedding, BlockwiseLinear, BlockwiseMatrix
from adaq_lora.adapters.lora import LoraLinear
from adaq_lora.quant.quantize import dequantized_weight, quantize_linear
from adaq_lora.adapters.svd_adapter import SVDLinear

WIDTHS = (96, 160)  # odd multiples of 32: the widths AVX-512's native dequantize_4bit gets wrong


def weight(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)) * 0.02


def reference_weight(layer: bnb.nn.Linear4bit) -> torch.Tensor:
    return kernels.reference_dequantize(layer.weight.data, layer.weight.quant_state)


def outputs_in_both_modes(layer: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's output in training mode (input needing grad) and in eval mode under no_grad, as generation runs."""
    train = layer.train()(inputs.clone().requires_grad_()).detach()
    with torch.no_grad():
        evaluation = layer.eval()(inputs)
    with torch.inference_mode():
        inference = layer(inputs)
    return {"train": train, "eval": evaluation, "inference_mode": inference}


def assert_computes(layer: nn.Module, expected_weight: torch.Tensor, inputs: torch.Tensor) -> None:
    expected = inputs @ expected_weight.T
    for mode, output in outputs_in_both_modes(layer, inputs).items():
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{mode}: {m}")


@pytest.mark.parametrize("width", WIDTHS)
def test_linear4bit_computes_the_reference_weight_in_training_and_in_inference(width):
    layer = quantize_linear(nn.Linear(width, 48, bias=False), "nf4", True, torch.float32)
    inputs = torch.randn(5, width)
    assert_computes(layer, reference_weight(layer), inputs)
    assert torch.equal(dequantized_weight(layer), reference_weight(layer))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("adapter", [LoraLinear, SVDLinear])
def test_our_adapters_on_a_4bit_base_compute_the_reference_weight_at_the_start(width, adapter):
    """ΔW is zero at the start (B = 0 for LoRA, λ = 0 for the SVD form), so the output is the base's alone."""
    base = quantize_linear(nn.Linear(width, 48, bias=False), "nf4", True, torch.float32)
    torch.manual_seed(0)
    layer = adapter(base, 4, 8.0, 0.0, 0.02)
    assert_computes(layer, reference_weight(base), torch.randn(5, width))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("peft_config", [LoraConfig(r=4, target_modules=["proj"], init_lora_weights=True),
                                         AdaLoraConfig(init_r=4, target_r=2, target_modules=["proj"], total_step=10)])
def test_peft_4bit_layers_compute_the_reference_weight_at_the_start(width, peft_config):
    model = nn.Sequential()
    model.add_module("proj", quantize_linear(nn.Linear(width, 48, bias=False), "nf4", True, torch.float32))
    model.is_loaded_in_4bit = True
    expected = reference_weight(model.proj)
    torch.manual_seed(0)
    layer = get_peft_model(model, peft_config).base_model.model.proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert_computes(layer, expected, torch.randn(5, width))


@pytest.mark.parametrize("width", (128, 192))  # blockwise rows must be whole blocks of 64: 96 is refused below
def test_blockwise_nf4_linear_and_embedding_compute_the_reference_weight(width):
    functional = bnb.functional
    dense = weight(80, width)
    packed, state = functional.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
    expected = kernels.reference_dequantize(packed, state)
    matrix = BlockwiseMatrix(dense, "nf4")
    assert_computes(BlockwiseLinear(matrix), expected, torch.randn(5, width))
    tokens = torch.tensor([[3, 79, 3, 0]])
    torch.testing.assert_close(BlockwiseEmbedding(matrix)(tokens), expected[tokens], rtol=0, atol=0)


def test_a_blockwise_nf4_matrix_whose_rows_are_not_whole_blocks_is_refused_by_shape():
    with pytest.raises(ValueError, match=r"multiple of 64.*\(80, 96\).*bf16"):
        BlockwiseMatrix(weight(80, 96), "nf4")


def test_the_probe_finds_no_faulty_kernel_once_the_routes_are_in_place():
    report = kernels.kernel_report()
    assert kernels.probe_kernels(kernels.import_bitsandbytes()) == kernels.KernelReport((), False)
    assert report.describe().startswith("bitsandbytes")


def test_width_classes_are_the_ones_the_probe_tries():
    assert {kernels.width_class(w) for w in kernels.WIDTH_CLASSES.values()} == set(kernels.WIDTH_CLASSES)
    assert [kernels.width_class(w) for w in (32, 64, 96, 576, 100, 1)] == [
        "odd multiple of 32", "multiple of 64", "odd multiple of 32", "multiple of 64", "not a multiple of 32",
        "not a multiple of 32"]


@pytest.fixture
def bare_bitsandbytes():
    """bitsandbytes without the process's routes; they are put back afterwards."""
    report = kernels.kernel_report()
    kernels._routes.remove()
    yield kernels._raw_bitsandbytes()
    kernels._routes = kernels.KernelRoutes(report)


@pytest.fixture
def avx512_like_dequantize(bare_bitsandbytes):
    """A CPU kernel for dequantize_4bit with AVX-512's fault: for an odd multiple of 32 as last dimension, blocks
    from the third on take another block's scale. Registered over the native kernel, removed afterwards."""
    def faulty(packed, absmax, blocksize, quant_type, shape, dtype):
        absmax = absmax.clone()
        if kernels.width_class(shape[-1]) == "odd multiple of 32":
            absmax[2:] = absmax[2:].roll(1)
        return kernels._decode(packed, absmax, kernels.four_bit_levels(quant_type), blocksize, shape, dtype)

    library = torch.library.Library("bitsandbytes", "IMPL")
    library.impl("dequantize_4bit", faulty, "CPU")
    yield bare_bitsandbytes
    library._destroy()


def round_trip_error(rows: int, width: int) -> float:
    functional = kernels._raw_bitsandbytes().functional
    dense = torch.randn(rows, width, generator=torch.Generator().manual_seed(1))
    packed, state = functional.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
    return (functional.dequantize_4bit(packed, state) - dense).abs().mean().item()


def test_a_faulty_dequantize_is_found_by_the_probe_and_routed_through_a_correct_path(avx512_like_dequantize):
    """NF4's mean |error| on N(0, 1) is ~0.073 (measured); the fault doubles it. Routed, 128 × 96 goes through the
    faulty kernel as rows of one block each and 3 × 96 (288 weights, not whole blocks of 64 rows) by the reference."""
    report = kernels.probe_kernels(avx512_like_dequantize)
    assert report.faulty_dequantize_widths == ("odd multiple of 32",)
    assert round_trip_error(128, 96) > 0.1
    routes = kernels.KernelRoutes(report)
    try:
        assert kernels.probe_kernels(avx512_like_dequantize).faulty_dequantize_widths == ()
        for rows, width in ((128, 96), (3, 96), (128, 160), (128, 128)):
            assert 0.06 < round_trip_error(rows, width) < 0.08, (rows, width)
        layer = quantize_linear(nn.Linear(96, 48, bias=False), "nf4", True, torch.float32)
        assert_computes(layer, reference_weight(layer), torch.randn(5, 96))
    finally:
        routes.remove()
    assert round_trip_error(128, 96) > 0.1  # removing the routes restores the kernel as it was


def test_a_faulty_inference_repacking_is_found_by_the_probe_and_switched_off(bare_bitsandbytes, monkeypatch):
    """As on an AVX-512-BF16 CPU: eval-mode Linear4bit repacks its weight first, and the repacking fails."""
    def failing_repack(*args, **kwargs):
        raise RuntimeError("shape '[64, 1]' is invalid for input of size 96")

    monkeypatch.setattr(bare_bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bare_bitsandbytes.nn.modules, "_convert_weight_packed_for_cpu", failing_repack)
    report = kernels.probe_kernels(bare_bitsandbytes)
    assert report.faulty_inference_repacking
    routes = kernels.KernelRoutes(report)
    try:
        layer = quantize_linear(nn.Linear(96, 48, bias=False), "nf4", True, torch.float32)
        assert not layer.support_avx512bf16_for_cpu
        assert_computes(layer, reference_weight(layer), torch.randn(5, 96))
        assert not kernels.probe_kernels(bare_bitsandbytes).faulty_inference_repacking
    finally:
        routes.remove()
    assert bare_bitsandbytes.nn.modules.has_avx512bf16() is True  # the switch is bitsandbytes' own again


def test_the_report_says_what_was_found_and_done():
    both = kernels.KernelReport(("odd multiple of 32",), True).describe()
    assert "dequantize_4bit is wrong for last dimensions that are odd multiple of 32" in both
    assert "repacking" in both and "switched off" in both
    assert "match the NF4 reference" in kernels.KernelReport((), False).describe()
