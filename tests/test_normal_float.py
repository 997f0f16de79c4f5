"""Normal-float codes below 4 bits (normal_float.py) and their blockwise storage, held to the formula."""
import bitsandbytes.functional as bnbf
import pytest
import torch

from adaq_lora.quant.blockwise import BlockwiseMatrix
from adaq_lora.quant.nf4 import BLOCKSIZE
from adaq_lora.quant.normal_float import decode_codes, nf_levels, outer_quantile, pack_codes


def quantile_levels(bits: int) -> torch.Tensor:
    """The k-bit levels again, from torch's own inverse normal CDF in float64: 2^(k-1) positive quantiles evenly
    spaced in probability from δ_k to ½, 2^(k-1) − 1 negative ones, and zero, over the largest."""
    half, delta = 2 ** (bits - 1), outer_quantile(bits)
    positive = torch.special.ndtri(torch.linspace(delta, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(delta, 0.5, half, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).float()


def test_the_four_bit_member_of_the_family_is_qloras_nf4():
    assert outer_quantile(4) == pytest.approx(0.9677083, abs=1e-7)
    torch.testing.assert_close(nf_levels(4), bnbf.get_4bit_type("nf4", device="cpu"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits,delta", [(3, 0.9330357), (2, 0.8541667)])
def test_nf3_and_nf2_levels_are_normal_quantiles_with_zero_exact(bits, delta):
    levels = nf_levels(bits)
    assert outer_quantile(bits) == pytest.approx(delta, abs=1e-7)
    assert levels.numel() == 2 ** bits and (levels[0], levels[-1]) == (-1.0, 1.0) and 0.0 in levels
    torch.testing.assert_close(levels, quantile_levels(bits), rtol=0, atol=1e-6)
    assert torch.all(levels.diff() > 0)


@pytest.mark.parametrize("bits", [2, 3])
def test_packed_codes_take_k_bits_each_and_decode_to_their_levels(bits):
    codes = torch.randint(0, 2 ** bits, (7, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 128 * bits // 8)
    levels = nf_levels(bits)
    assert torch.equal(decode_codes(packed, bits, levels), levels[codes.long()])
    assert torch.equal(decode_codes(packed[2:5], bits, levels), levels[codes[2:5].long()])  # rows decode alone


@pytest.mark.parametrize("precision,bits", [("nf2", 2), ("nf3", 3)])
def test_stored_rows_are_the_nearest_level_times_the_block_scale(precision, bits):
    weight = torch.randn(48, 192, generator=torch.Generator().manual_seed(1)) * 0.05
    matrix = BlockwiseMatrix(weight, precision)
    blocks = weight.view(48, -1, BLOCKSIZE)
    absmax = blocks.abs().amax(dim=-1, keepdim=True)
    levels = quantile_levels(bits)
    nearest = levels[(blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)]
    scales = matrix._row_scales(slice(None)).view(48, -1, 1)
    torch.testing.assert_close(scales, absmax, rtol=0.01, atol=0)  # 8-bit scales, as NF4's double quantization
    torch.testing.assert_close(matrix.rows(), (nearest * scales).view(48, 192), rtol=0, atol=1e-6)


def test_fewer_bits_cost_more_error_and_the_ratio_matches_the_level_spacing():
    weight = torch.randn(256, 512, generator=torch.Generator().manual_seed(2))
    rms = {p: float((BlockwiseMatrix(weight, p).rows() - weight).pow(2).mean().sqrt()) for p in ("nf2", "nf3", "nf4")}
    assert rms["nf2"] > 2 * rms["nf3"] > 4 * rms["nf4"]  # each bit taken away roughly doubles the error
