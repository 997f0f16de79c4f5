"""Frozen matrices stored at a chosen precision, read back a block of rows at a time (book chapter 6).

QLoRA stores the decoder's linear layers in NF4 and leaves the embedding and the output head in 16 bits. On a
small model those two are a large share of the weights (SmolLM2-135M: 28 M of its 135 M parameters, tied), so a
memory saving beyond QLoRA's has to reach them. `adaq_lora.quant.precision` decides, matrix by matrix, how many bits
each frozen matrix gets; this module holds the result:

- `BlockwiseMatrix` keeps one matrix as NF4 codes (bitsandbytes' `quantize_4bit`, with double quantization),
  as 3- or 2-bit normal-float codes (`adaq_lora.quant.normal_float`, scales double quantized as NF4's), as 8-bit
  blockwise codes (bitsandbytes' `quantize_blockwise`, its dynamic 8-bit map) or as bfloat16. Blocks
  of 64 values run along rows, so when a row's length is a multiple of 64 any set of rows can be decoded
  without decoding the rest: codes and scales of row i sit at fixed offsets.
- `BlockwiseEmbedding` looks tokens up by decoding just their rows.
- `BlockwiseLinear` computes x Wᵀ one block of output rows at a time, forward and backward, and keeps no
  decoded weight for the backward pass: it decodes the rows again. The decoded copy alive at any instant is
  one chunk of rows holding about `CHUNK_ELEMENTS` weights, not the whole matrix, which for the output head
  (49,152 × 576 floats = 108 MB) is what keeps the saving at the peak of a step. The chunk is counted in weights,
  not rows: 4,096 rows of ChatGLM2-6B's 13,696-wide down projection would be 214 MB in float32. Nor does it keep
  its input: ∂L/∂x = ∂L/∂y · W needs W alone (the weight is frozen), as bitsandbytes' 4-bit matmul keeps none.
- NF3 and NF2 rows are unpacked `DECODE_ELEMENTS` weights at a time into the chunk's one output tensor, so the
  unpacking's integer words and unscaled levels stay an eighth of a chunk; every value is the one a whole decode
  gives, bit for bit.
A tied embedding and head share one `BlockwiseMatrix`, so the matrix is stored once, as in the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import import_bitsandbytes
from .nf4 import BLOCKSIZE, SCALE_BLOCKSIZE, quantize_blockwise
from .normal_float import decode_codes, nf_levels, pack_codes

PRECISION_BITS = {"nf2": 2, "nf3": 3, "nf4": 4, "int8": 8, "bf16": 16}  # each precision's bits per weight, codes only
PRECISIONS = tuple(PRECISION_BITS)  # from the fewest bits to the most
NORMAL_FLOAT_BELOW_4 = {"nf2": 2, "nf3": 3}  # the codes `normal_float` packs; NF4 is bitsandbytes'
CHUNK_ELEMENTS = 4096 * 576  # weights decoded at once (9 MB in float32): the default model's 4,096 rows of 576
DECODE_ELEMENTS = CHUNK_ELEMENTS // 8  # NF3/NF2 weights unpacked at once within a chunk (their temporaries' size)


def stored_bytes(shape: tuple[int, int], precision: str) -> int:
    """The bytes `BlockwiseMatrix(weight, precision).nbytes` holds for a matrix of `shape`, without quantizing it:
    the codes, and per block of 64 a scale (1 byte double quantized, plus a float32 per 256 blocks and the offset;
    a float32 for 8-bit codes)."""
    count = shape[0] * shape[1]
    if precision == "bf16":
        return 2 * count
    blocks = -(-count // BLOCKSIZE)
    if precision == "int8":
        return count + 4 * blocks
    return count * PRECISION_BITS[precision] // 8 + blocks + 4 * -(-blocks // SCALE_BLOCKSIZE) + 4


class BlockwiseMatrix(nn.Module):
    """One frozen matrix (rows × columns) at precision `precision`; `rows(index)` decodes some of its rows."""

    def __init__(self, weight: torch.Tensor, precision: str):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype if weight.is_floating_point() else torch.float32
        weight = weight.detach()
        if precision == "bf16":
            self.register_buffer("codes", weight.to(torch.bfloat16).clone())
            return
        if weight.shape[1] % BLOCKSIZE:
            raise ValueError(f"a {precision} matrix needs rows whose length is a multiple of {BLOCKSIZE} so that "
                             f"its rows can be decoded alone; this one is {tuple(weight.shape)}: store it as bf16")
        functional = import_bitsandbytes().functional
        if precision == "nf4":
            codes, state = functional.quantize_4bit(weight.float(), blocksize=BLOCKSIZE, quant_type="nf4",
                                                    compress_statistics=True)
            self.register_buffer("codes", codes.view(self.shape[0], -1))
            self.register_buffer("absmax_codes", state.absmax)
            self.register_buffer("absmax_offset", state.offset)
            self.register_buffer("absmax_scales", state.state2.absmax)
            self.register_buffer("absmax_table", state.state2.code)
            self.register_buffer("table", state.code)
        elif precision in NORMAL_FLOAT_BELOW_4:
            bits = NORMAL_FLOAT_BELOW_4[precision]
            levels = nf_levels(bits).to(weight.device)
            codes, absmax = quantize_blockwise(weight, levels, BLOCKSIZE)
            self.register_buffer("codes", pack_codes(codes.view(self.shape), bits))
            # The scales are double quantized as bitsandbytes does NF4's: 8-bit codes of their offsets from the mean.
            offset = absmax.mean()
            absmax_codes, state = functional.quantize_blockwise(absmax - offset, blocksize=SCALE_BLOCKSIZE)
            self.register_buffer("absmax_codes", absmax_codes)
            self.register_buffer("absmax_offset", offset)
            self.register_buffer("absmax_scales", state.absmax)
            self.register_buffer("absmax_table", state.code)
            self.register_buffer("table", levels)
        else:
            codes, state = functional.quantize_blockwise(weight.float(), blocksize=BLOCKSIZE)
            self.register_buffer("codes", codes.view(self.shape[0], -1))
            self.register_buffer("absmax", state.absmax)
            self.register_buffer("table", state.code)

    @property
    def nbytes(self) -> int:
        """Codes and scales; the code tables (16 or 256 values) are constants of the format, not of the matrix."""
        return sum(buffer.numel() * buffer.element_size() for name, buffer in self.named_buffers()
                   if not name.endswith("table"))

    def _row_scales(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The block absmax values of rows `index`, one row of them per matrix row. Only those rows' scales are
        read: NF4's and the normal-float codes' 8-bit scale codes decode as bitsandbytes' `dequantize_blockwise`
        does, table[code] × the scale of their group of 256, plus the offset."""
        per_row = self.shape[1] // BLOCKSIZE
        if self.precision == "int8":
            return self.absmax.view(self.shape[0], per_row)[index]
        rows = torch.arange(self.shape[0], device=self.codes.device)[index]
        blocks = rows.unsqueeze(-1) * per_row + torch.arange(per_row, device=rows.device)
        scales = self.absmax_table[self.absmax_codes[blocks].long()] * self.absmax_scales[blocks // SCALE_BLOCKSIZE]
        return scales + self.absmax_offset

    def rows(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Rows `index` (a slice or a tensor of row numbers; None: all) as a float tensor of the original dtype."""
        index = slice(None) if index is None else index
        if self.precision in NORMAL_FLOAT_BELOW_4:
            return self._normal_float_rows(index)
        codes = self.codes[index]
        if self.precision == "bf16":
            return codes.to(self.dtype)
        functional = import_bitsandbytes().functional
        scales = self._row_scales(index).reshape(-1)
        n_rows = codes.shape[0]
        if self.precision == "nf4":
            state = functional.QuantState(absmax=scales, shape=torch.Size((n_rows, self.shape[1])), code=self.table,
                                          blocksize=BLOCKSIZE, quant_type="nf4", dtype=torch.float32)
            decoded = functional.dequantize_4bit(codes.reshape(-1, 1), state)
        else:
            state = functional.QuantState(absmax=scales, code=self.table, blocksize=BLOCKSIZE, dtype=torch.float32)
            decoded = functional.dequantize_blockwise(codes.reshape(-1), state).view(n_rows, self.shape[1])
        return decoded.to(self.dtype)

    def _normal_float_rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """NF3/NF2 rows `index`, unpacked a group of rows at a time (`DECODE_ELEMENTS`) into one output tensor."""
        numbers = torch.arange(self.shape[0], device=self.codes.device)[index]
        out = torch.empty(numbers.numel(), self.shape[1], dtype=self.dtype, device=self.codes.device)
        step, bits = chunk_rows(self.shape[1], DECODE_ELEMENTS), NORMAL_FLOAT_BELOW_4[self.precision]
        for start in range(0, numbers.numel(), step):
            group = numbers[start:start + step]
            levels = decode_codes(self.codes[group], bits, self.table).view(group.numel(), -1, BLOCKSIZE)
            out[start:start + step] = (levels * self._row_scales(group).unsqueeze(-1)).view(group.numel(), -1)
        return out

    def extra_repr(self) -> str:
        return f"shape={self.shape}, precision={self.precision}, {self.nbytes / 2**20:.2f} MB"


def chunk_rows(columns: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Rows of a `columns`-wide matrix decoded at once: about `elements` weights, at least one row."""
    return max(1, elements // columns)


class _ChunkedMatmul(torch.autograd.Function):
    """y = x Wᵀ with W decoded chunk by chunk; backward decodes again instead of keeping W, and keeps no x."""

    @staticmethod
    def forward(ctx, x, matrix: BlockwiseMatrix):
        ctx.matrix = matrix
        out = x.new_empty(*x.shape[:-1], matrix.shape[0])  # filled in place: no second copy from a concatenation
        step = chunk_rows(matrix.shape[1])
        for start in range(0, matrix.shape[0], step):
            out[..., start:start + step] = x @ matrix.rows(slice(start, start + step)).to(x.dtype).T
        return out

    @staticmethod
    def backward(ctx, grad_output):
        matrix = ctx.matrix
        grad_input = None
        if ctx.needs_input_grad[0]:
            step = chunk_rows(matrix.shape[1])
            grad_input = sum(grad_output[..., start:start + step]
                             @ matrix.rows(slice(start, start + step)).to(grad_output.dtype)
                             for start in range(0, matrix.shape[0], step))
        return grad_input, None


class BlockwiseLinear(nn.Linear):
    """A frozen `nn.Linear` whose weight lives in a `BlockwiseMatrix`.

    It is an `nn.Linear` to the code that looks for one (our adapter injection, PEFT's dispatch), but it owns
    no weight parameter: `nn.Linear.__init__` would allocate the full-precision matrix it exists to avoid.
    """

    def __init__(self, matrix: BlockwiseMatrix, bias: torch.Tensor | None = None):
        nn.Module.__init__(self)
        self.matrix = matrix
        self.out_features, self.in_features = matrix.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight (a new tensor): for merging, plots and error measurements, not for the forward."""
        return self.matrix.rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _ChunkedMatmul.apply(x, self.matrix)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, precision={self.matrix.precision}"


class BlockwiseEmbedding(nn.Module):
    """A frozen `nn.Embedding` whose table lives in a `BlockwiseMatrix`: a lookup decodes only the rows it reads."""

    def __init__(self, matrix: BlockwiseMatrix, padding_idx: int | None = None):
        super().__init__()
        self.matrix = matrix
        self.num_embeddings, self.embedding_dim = matrix.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.matrix.rows()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(input_ids, return_inverse=True)
        return F.embedding(inverse, self.matrix.rows(unique))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, precision={self.matrix.precision}"
