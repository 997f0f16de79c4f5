"""Normal-float codes of 2 and 3 bits: NF4's construction with fewer levels (book chapter 6, "Below four bits").

The paper's title promises memory saved by quantizing unimportant weights harder. NF4 (`adaq_lora.quant.nf4`) is
QLoRA's 4-bit floor; below it the same recipe gives a k-bit code:

* 2^k levels at quantiles of N(0, 1): 2^(k-1) positive ones and 2^(k-1) − 1 negative ones, so that 0 is a level
  of its own, scaled so that the extreme levels are −1 and 1;
* the outermost quantile sits at the probability δ_k = ½[(1 − 1/(2(2^k − 1))) + (1 − 1/(2·2^k))], the mean of
  the outermost of 2^k − 1 and of 2^k equal slices' midpoints. For k = 4 that is QLoRA's 0.9677083, and the
  levels are NF4's; k = 3 gives 0.9330 and 8 levels, k = 2 gives 0.8542 and 4 levels (−1, 0, 0.44, 1 for NF2:
  an asymmetric code, as NF4 is);
* block-wise absmax scaling in blocks of 64 and double quantization of the scales, exactly as NF4.

Codes are packed densely: 8 codes of k bits fill k bytes, so a matrix holds k bits a weight plus its scales
(8/64 bits for the 8-bit scale codes, and one float32 per 256 of those): NF3 is 3.13 bits a weight, NF2 2.13.
A row whose length is a multiple of 64 packs into whole bytes, so any row can be decoded alone, as the blockwise
storage of chapter 6 needs (`adaq_lora.quant.blockwise`). bitsandbytes has no code below 4 bits; `hqq` does, with
zero points and an optimised fit per group, which is a different format. This one is written here because the book
derives it, and the tests hold it to the formula above.
"""
from __future__ import annotations

from statistics import NormalDist

import torch
import torch.nn.functional as F

NF_BITS = (2, 3)  # the widths this module adds below NF4
CODES_PER_GROUP = 8  # 8 codes of k bits fill exactly k bytes


def outer_quantile(bits: int) -> float:
    """δ_k: the probability of the outermost level, midway between the outer midpoints of 2^k − 1 and 2^k slices."""
    levels = 2 ** bits
    return 0.5 * ((1 - 1 / (2 * (levels - 1))) + (1 - 1 / (2 * levels)))


def nf_levels(bits: int) -> torch.Tensor:
    """The 2^k levels of the k-bit normal-float code, ascending, from −1 to 1 with 0 among them."""
    if bits not in (*NF_BITS, 4):
        raise ValueError(f"normal-float codes here have 2, 3 or 4 bits, not {bits}")
    normal, half = NormalDist(), 2 ** (bits - 1)
    offset = outer_quantile(bits)
    positive = [normal.inv_cdf(p) for p in torch.linspace(offset, 0.5, half + 1)[:-1].tolist()]
    negative = [-normal.inv_cdf(p) for p in torch.linspace(offset, 0.5, half)[:-1].tolist()]
    levels = torch.tensor(sorted(negative + [0.0] + positive))
    return levels / levels.max()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of `bits` bits (uint8, their count a multiple of 8) → `bits` bytes per 8 codes, the first code lowest.

    The last dimension is packed, so a (rows, columns) array packs row by row into (rows, columns · bits / 8).
    """
    if codes.shape[-1] % CODES_PER_GROUP:
        raise ValueError(f"pack_codes needs a multiple of {CODES_PER_GROUP} codes along the last dimension, "
                         f"got {codes.shape[-1]}")
    groups = codes.to(torch.int32).view(*codes.shape[:-1], -1, CODES_PER_GROUP)
    shifts = torch.arange(CODES_PER_GROUP, dtype=torch.int32, device=codes.device) * bits
    word = (groups << shifts).sum(dim=-1, dtype=torch.int32)  # 8·k ≤ 24 bits: fits an int32
    packed = torch.stack([(word >> (8 * byte)) & 0xFF for byte in range(bits)], dim=-1)
    return packed.to(torch.uint8).view(*codes.shape[:-1], -1)


def decode_codes(packed: torch.Tensor, bits: int, levels: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_codes`, straight to levels: (…, n · bits / 8) bytes → (…, n) values of `levels`.

    Each 8-code group is read as two words of 4 codes (4·k bits), and each word is looked up whole in a table of
    its 4 levels (16 or 4,096 rows): one lookup per 4 weights instead of a shift and a mask per weight.
    """
    groups = packed.view(*packed.shape[:-1], -1, bits).to(torch.int32)
    word = sum(groups[..., byte] << (8 * byte) for byte in range(bits))
    quads = torch.stack([word & (2 ** (4 * bits) - 1), word >> (4 * bits)], dim=-1)
    every_word = torch.arange(2 ** (4 * bits), device=packed.device).unsqueeze(-1)
    shifts = torch.arange(4, device=packed.device) * bits
    table = levels[(every_word >> shifts) & (2 ** bits - 1)]  # row w: the 4 levels word w stands for
    return F.embedding(quads, table).view(*packed.shape[:-1], -1)
