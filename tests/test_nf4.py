"""The readable NF4 reference against bitsandbytes, the quantizer the project runs."""

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from adaq_lora.quant.nf4 import (
    NF4Tensor,
    SCALE_BLOCKSIZE,
    dequantize_nf4,
    dynamic_levels,
    nf4_levels,
    quantize_nf4,
)
from adaq_lora.quant.quantize import quantization_error

# bitsandbytes 0.50.2's CPU kernel for 8-bit block-wise quantization looks the nearest level up on a
# grid of 65,536 points spanning [-1, 1]; values are rounded to the nearest grid point first.
GRID_STEP = 2 / 65535


def normal_weight(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def bnb_quantize(weight: torch.Tensor, double_quant: bool):
    return bnb_functional.quantize_4bit(
        weight, blocksize=64, quant_type="nf4", compress_statistics=double_quant
    )


def test_levels_equal_bitsandbytes_table_bit_for_bit():
    assert torch.equal(nf4_levels(), bnb_functional.get_4bit_type("nf4", device="cpu"))


def test_levels_are_eight_positive_seven_negative_and_an_exact_zero_in_minus_one_to_one():
    levels = nf4_levels()
    assert levels.shape == (16,)
    assert torch.all(levels[1:] > levels[:-1])
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7 and (levels == 0).sum() == 1
    assert levels[0] == -1 and levels[-1] == 1


def test_dynamic_levels_equal_bitsandbytes_dynamic_map():
    assert torch.equal(dynamic_levels(), bnb_functional.create_dynamic_map())


@pytest.mark.parametrize("shape", [(128, 96), (10, 30), (7, 33)])
def test_packed_codes_and_absmax_equal_bitsandbytes_byte_for_byte(shape):
    """Includes sizes that are not a multiple of 64 (a short last block) and an odd size (a pad nibble)."""
    weight = normal_weight(*shape)
    packed, state = bnb_quantize(weight, double_quant=False)
    reference = quantize_nf4(weight, double_quant=False)
    assert reference.packed.dtype == torch.uint8
    assert torch.equal(reference.packed, packed)
    assert torch.equal(reference.absmax, state.absmax)


def test_odd_size_is_padded_with_the_code_of_zero_in_the_low_nibble():
    packed = quantize_nf4(normal_weight(7, 33), double_quant=False).packed
    assert packed.shape == ((7 * 33 + 1) // 2, 1)
    assert nf4_levels()[int(packed[-1, 0]) & 0x0F] == 0


@pytest.mark.parametrize("shape", [(128, 96), (10, 30)])
def test_dequantized_weight_equals_bitsandbytes_bit_for_bit(shape):
    weight = normal_weight(*shape)
    packed, state = bnb_quantize(weight, double_quant=False)
    reference = dequantize_nf4(quantize_nf4(weight, double_quant=False))
    assert reference.shape == weight.shape and reference.dtype == weight.dtype
    assert torch.equal(reference, bnb_functional.dequantize_4bit(packed, state))


def test_all_zero_block_stays_zero_like_bitsandbytes():
    weight = normal_weight(4, 64)
    weight[1] = 0
    packed, state = bnb_quantize(weight, double_quant=False)
    reference = quantize_nf4(weight, double_quant=False)
    assert reference.absmax[1] == 0
    assert torch.equal(reference.packed, packed)
    assert torch.all(dequantize_nf4(reference)[1] == 0)


def test_double_quant_offset_and_second_level_scales_equal_bitsandbytes():
    weight = normal_weight(512, 512)
    packed, state = bnb_quantize(weight, double_quant=True)
    reference = quantize_nf4(weight, double_quant=True)
    assert torch.equal(reference.packed, packed)
    assert torch.equal(reference.offset, state.offset)
    assert torch.equal(reference.absmax_scales, state.state2.absmax)
    assert state.state2.blocksize == SCALE_BLOCKSIZE
    assert torch.equal(dynamic_levels(), state.state2.code)


def test_double_quant_scale_codes_are_nearest_and_differ_from_bitsandbytes_cpu_only_within_its_grid_step():
    """bitsandbytes' CPU kernel picks the level nearest to the value rounded onto its 65,536-point grid,
    so near a midpoint it may take a level up to one grid step farther than the nearest. Measured:
    4 of 4,096 scale codes differ for this weight."""
    weight = normal_weight(512, 512)
    _, state = bnb_quantize(weight, double_quant=True)
    reference = quantize_nf4(weight, double_quant=True)
    absmax = quantize_nf4(weight, double_quant=False).absmax
    centred = (absmax - reference.offset).view(-1, SCALE_BLOCKSIZE)
    normalized = (centred * (1.0 / reference.absmax_scales[:, None])).flatten()
    levels = dynamic_levels()
    reference_distance = (normalized - levels[reference.absmax.long()]).abs()
    bnb_distance = (normalized - levels[state.absmax.long()]).abs()
    assert torch.all((normalized[:, None] - levels).abs().min(dim=1).values == reference_distance)
    differ = reference.absmax != state.absmax
    assert 0 < differ.sum() <= 0.005 * differ.numel()
    assert torch.all(bnb_distance[differ] <= reference_distance[differ] + GRID_STEP)


def test_dequantized_double_quant_weight_equals_bitsandbytes_from_the_same_codes():
    weight = normal_weight(128, 96)
    packed, state = bnb_quantize(weight, double_quant=True)
    from_bnb_pieces = NF4Tensor(
        packed, state.absmax, weight.shape, weight.dtype, 64, state.offset, state.state2.absmax
    )
    assert torch.equal(dequantize_nf4(from_bnb_pieces), bnb_functional.dequantize_4bit(packed, state))


def test_dequantized_double_quant_weight_equals_bitsandbytes_in_every_block_whose_scale_code_agrees():
    weight = normal_weight(512, 512)
    packed, state = bnb_quantize(weight, double_quant=True)
    reference = quantize_nf4(weight, double_quant=True)
    agree = reference.absmax == state.absmax
    ours = dequantize_nf4(reference).view(-1, 64)
    theirs = bnb_functional.dequantize_4bit(packed, state).view(-1, 64)
    assert torch.equal(ours[agree], theirs[agree])


def test_storage_is_4_127_bits_per_weight_with_double_quant():
    """Codes n/2 bytes, one 8-bit scale per 64 weights, one float32 per 256 scales, one float32 offset."""
    weight = normal_weight(256, 1024)
    count = weight.numel()
    quantized = quantize_nf4(weight, double_quant=True)
    assert quantized.nbytes == count // 2 + count // 64 + 4 * count // (64 * 256) + 4
    assert 8 * quantized.nbytes / count == pytest.approx(4.1271, abs=1e-4)
    assert quantize_nf4(weight, double_quant=False).nbytes == count // 2 + 4 * count // 64


def test_on_normal_weights_nf4_error_is_below_int4_and_fp4():
    """Measured mean squared errors for N(0, 1) weights: NF4 0.0085, int4 0.0116, FP4 0.0149."""
    weight = normal_weight(512, 512)
    mse = {name: quantization_error(weight, name).pow(2).mean().item() for name in ("nf4", "int4", "fp4")}
    assert mse["nf4"] == pytest.approx(0.0085, abs=3e-4)
    assert mse["nf4"] < mse["int4"] < mse["fp4"]


def test_nf4_error_is_about_nine_percent_of_the_mean_weight_magnitude():
    weight = normal_weight(512, 512)
    error = quantization_error(weight, "nf4")
    assert error.shape == weight.shape
    assert (error.abs().mean() / weight.abs().mean()).item() == pytest.approx(0.0913, abs=2e-3)


def test_nf4_error_helper_agrees_with_the_full_round_trip():
    weight = normal_weight(64, 64)
    round_trip = dequantize_nf4(quantize_nf4(weight, double_quant=False))
    assert torch.equal(quantization_error(weight, "nf4"), round_trip - weight)


def test_unknown_data_type_is_refused():
    with pytest.raises(ValueError, match="nf4"):
        quantization_error(normal_weight(64), "int8")
