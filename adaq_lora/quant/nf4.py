"""NF4, the 4-bit NormalFloat data type, written out to be read (book chapter 4, "Quantization").

ADAQ-LoRA freezes its base model in 4 bits (paper, abstract and Sec. 1: LoRA "with quantization
technology added") and takes the storage format from QLoRA (Dettmers et al. 2023, Sec. 3):

* 4-bit NormalFloat: 16 levels at quantiles of N(0, 1), normalized to [-1, 1];
* block-wise absmax scaling: every 64 consecutive weights share one scale, their largest |w|;
* double quantization: the float32 scales are quantized again, to 8 bits in blocks of 256.

This module is the reference the chapter teaches; `bitsandbytes` is the quantizer the project runs
(`adaq_lora.quant.quantize`), checked against this reference on every CPU (`adaq_lora.quant.kernels`). The tests hold the two equal: the levels, the packed bytes and the
dequantized weights match `bitsandbytes.functional.quantize_4bit` / `dequantize_4bit` exactly
(with double quantization, wherever the 8-bit scale codes agree).
One step cannot match bit for bit on the CPU: bitsandbytes 0.50.2's CPU kernel for 8-bit block-wise
quantization (used on the scales) finds the nearest level through a 65,536-point lookup grid over
[-1, 1], so a scale lying within a grid step of a midpoint between two levels may go to the farther
level; this reference always takes the nearest one.
"""

from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F


NF4_OFFSET = 0.9677083
"""QLoRA's outermost quantile: the largest level sits at the 96.77th percentile of N(0, 1)."""

BLOCKSIZE = 64
"""Weights per scale (QLoRA's block): the package's one home for it, bitsandbytes' calls included."""

SCALE_BLOCKSIZE = 256
"""Double quantization quantizes the per-block scales in blocks of this many."""


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, ascending: QLoRA's `create_normal_map(0.9677083)`.

    Eight positive quantiles and seven negative ones, so that 0 is a level of its own (padding
    and zero weights stay exactly zero), scaled so that the extreme levels are -1 and 1.
    The probabilities are spaced in float32 as QLoRA spaces them, which reproduces bitsandbytes'
    hard-coded table (`bitsandbytes.functional.get_4bit_type("nf4")`) bit for bit.
    """
    normal = NormalDist()
    positive = [normal.inv_cdf(p) for p in torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].tolist()]
    negative = [-normal.inv_cdf(p) for p in torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].tolist()]
    levels = torch.tensor(sorted(negative + [0.0] + positive))
    return levels / levels.max()


def int4_levels() -> torch.Tensor:
    """The 15 levels of symmetric absmax int4, k/7 for k = -7..7: the baseline NF4 is compared to."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def dynamic_levels() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code, used for the double-quantized scales.

    For e = 0..6 it holds +-10^(e-6) times the 2^e midpoints of an even split of [0.1, 1]: a
    decimal exponent with fewer fraction steps near zero, plus the values 0 and 1 (256 in all).
    Equal to `bitsandbytes.functional.create_dynamic_map()`.
    """
    values = [0.0, 1.0]
    for exponent in range(7):
        edges = torch.linspace(0.1, 1, 2**exponent + 1)
        fractions = (edges[:-1] + edges[1:]) / 2
        values += (10.0 ** (exponent - 6) * fractions).tolist()
        values += (-(10.0 ** (exponent - 6)) * fractions).tolist()
    return torch.tensor(sorted(values))


def quantize_blockwise(
    values: torch.Tensor, levels: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `values` (flattened) into blocks, scale each by its absmax, take the nearest level.

    Returns the level indices (uint8, one per value) and the per-block absmax (float32). The last
    block may be short. Ties between two levels go to the lower one.
    """
    flat = values.reshape(-1).float()
    blocks = F.pad(flat, (0, -flat.numel() % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # Multiplying by the reciprocal, as bitsandbytes does, keeps the codes identical bit for bit;
    # an all-zero block keeps absmax 0 and its values land on the level 0.
    normalized = blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)
    midpoints = (levels[:-1] + levels[1:]) / 2
    codes = torch.bucketize(normalized.reshape(-1)[: flat.numel()], midpoints)
    return codes.to(torch.uint8), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """Level times block absmax, flat float32: the inverse of `quantize_blockwise`."""
    scales = absmax.repeat_interleave(blocksize)[: codes.numel()]
    return levels[codes.long()] * scales


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high nibble, as a column (bitsandbytes' layout).

    An odd count is padded with the code of 0, as bitsandbytes pads.
    """
    if codes.numel() % 2:
        zero_code = nf4_levels().abs().argmin().to(torch.uint8)
        codes = torch.cat([codes, zero_code.reshape(1)])
    return ((codes[0::2] << 4) | codes[1::2]).unsqueeze(1)


def unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` 4-bit codes held in `packed`, in order."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)[:count]


@dataclass
class NF4Tensor:
    """A weight in NF4, in the pieces bitsandbytes' `QuantState` holds.

    `absmax` is float32 per block of `blocksize` weights, or, when double quantized, uint8 codes into
    `dynamic_levels()` with `offset` (the mean absmax, subtracted first) and `absmax_scales` (one
    float32 per `SCALE_BLOCKSIZE` scales); the names match `QuantState.offset` and `state2.absmax`.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = BLOCKSIZE
    offset: torch.Tensor | None = None
    absmax_scales: torch.Tensor | None = None

    @property
    def double_quantized(self) -> bool:
        return self.offset is not None

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes and every quantization constant."""
        pieces = [self.packed, self.absmax, self.offset, self.absmax_scales]
        return sum(piece.numel() * piece.element_size() for piece in pieces if piece is not None)


def quantize_nf4(weight: torch.Tensor, blocksize: int = BLOCKSIZE, double_quant: bool = True) -> NF4Tensor:
    """Quantize `weight` to NF4 in blocks of `blocksize`, optionally double-quantizing the scales."""
    codes, absmax = quantize_blockwise(weight, nf4_levels(), blocksize)
    packed = pack_nibbles(codes)
    if not double_quant:
        return NF4Tensor(packed, absmax, weight.shape, weight.dtype, blocksize)
    # The scales are all positive; centring them on their mean lets the signed 8-bit code spend
    # its resolution on how they differ rather than on their common size.
    offset = absmax.mean()
    absmax_codes, absmax_scales = quantize_blockwise(absmax - offset, dynamic_levels(), SCALE_BLOCKSIZE)
    return NF4Tensor(packed, absmax_codes, weight.shape, weight.dtype, blocksize, offset, absmax_scales)


def block_absmax(quantized: NF4Tensor) -> torch.Tensor:
    """The float32 scale of every block, undoing double quantization where it was applied."""
    if not quantized.double_quantized:
        return quantized.absmax
    centred = dequantize_blockwise(
        quantized.absmax, quantized.absmax_scales, dynamic_levels(), SCALE_BLOCKSIZE
    )
    return centred + quantized.offset


def dequantize_nf4(quantized: NF4Tensor) -> torch.Tensor:
    """The weight NF4 stands for: each code's level times its block's scale, in the original dtype."""
    count = quantized.shape.numel()
    codes = unpack_nibbles(quantized.packed, count)
    values = dequantize_blockwise(codes, block_absmax(quantized), nf4_levels(), quantized.blocksize)
    return values.reshape(quantized.shape).to(quantized.dtype)
