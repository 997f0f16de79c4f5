"""Freezing a model's base in 4 bits with bitsandbytes (book chapter 4, "Quantization").

ADAQ-LoRA trains adapters on a quantized frozen base (paper, abstract and Sec. 1; the storage
format is QLoRA's NF4 with double quantization, written out by hand in `adaq_lora.quant.nf4`). Here the
real quantizer does the work: `quantize_model` swaps the `nn.Linear` layers of an in-memory model
for `bitsandbytes.nn.Linear4bit`, which stores packed 4-bit codes and dequantizes them block by block
in every forward pass. The layers stay differentiable with respect to their input, so gradients
reach adapters placed before and after them. Also here: reading a layer's weight back as floats
(for merging adapters and for the book's plots) and counting the bytes a quantized model holds.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .kernels import import_bitsandbytes
from .nf4 import BLOCKSIZE, dequantize_blockwise, int4_levels, nf4_levels, quantize_blockwise

# The output head's name in transformers' causal LMs (ChatGLM2's `output_layer` is renamed when it is converted).
OUTPUT_HEADS = ("lm_head",)


def compute_dtype_for(device: torch.device | str) -> torch.dtype:
    """The dtype 4-bit layers compute in: bfloat16 on CUDA, float32 elsewhere.

    CPU kernels for bfloat16 matrix products are slow or missing on most CPUs; on a GPU, bfloat16
    halves activation memory and runs on the tensor cores, as QLoRA computes.
    """
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _quantization_targets(
    module: nn.Module, skip_modules: tuple[str, ...], prefix: str = ""
) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) for every float `nn.Linear` that `quantize_model` replaces."""
    bnb = import_bitsandbytes()
    targets = []
    for name, child in module.named_children():
        if hasattr(child, "base_layer") or hasattr(child, "matrix"):
            continue  # an adapter wraps this layer, or a precision plan already stores it (blockwise.py)
        if isinstance(child, nn.Linear) and not isinstance(child, bnb.nn.Linear4bit):
            if name in skip_modules:
                continue
            if child.weight.is_meta:
                raise ValueError(
                    f"{prefix}{name} is on the meta device: load the model's real weights before quantizing"
                )
            targets.append((module, name, child))
            continue
        targets += _quantization_targets(child, skip_modules, f"{prefix}{name}.")
    return targets


def quantize_linear(
    layer: nn.Linear, quant_type: str, double_quant: bool, compute_dtype: torch.dtype
) -> nn.Module:
    """A `bitsandbytes.nn.Linear4bit` holding `layer`'s weight in 4 bits and its bias as is."""
    bnb = import_bitsandbytes()
    quantized = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=False,
        compute_dtype=compute_dtype,
        compress_statistics=double_quant,
        quant_type=quant_type,
        device="meta",
    )
    weight = bnb.nn.Params4bit(
        layer.weight.detach(),
        requires_grad=False,
        blocksize=BLOCKSIZE,
        compress_statistics=double_quant,
        quant_type=quant_type,
        module=quantized,
    )
    # Moving an unquantized Params4bit to a device is what quantizes it (bitsandbytes' convention).
    quantized.weight = weight.to(layer.weight.device)
    quantized.bias = layer.bias
    return quantized


def quantize_model(
    model: nn.Module,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
    skip_modules: tuple[str, ...] = OUTPUT_HEADS,
) -> nn.Module:
    """Replace, in place, every `nn.Linear` of `model` with a 4-bit `Linear4bit`; return `model`.

    Layers whose own name is in `skip_modules` stay as they are (the output head `lm_head` by default, as QLoRA
    leaves it: its errors go straight to the logits), and so does everything
    inside an adapter layer (any module with a `base_layer`). Embeddings and norms are not
    `nn.Linear` and keep their precision. The model is marked `is_loaded_in_4bit`, as transformers'
    own 4-bit loader marks it, so that PEFT builds its 4-bit adapter layers around these ones.
    """
    targets = _quantization_targets(model, tuple(skip_modules))
    for parent, name, layer in targets:
        setattr(parent, name, quantize_linear(layer, quant_type, double_quant, compute_dtype))
    model.is_loaded_in_4bit = True
    return model


def _read_cpu_bf16_layout(packed: torch.Tensor, state) -> torch.Tensor:
    """A weight in the layout of bitsandbytes' AVX512-BF16 CPU kernel, as that kernel reads it.

    Each run of 32 bytes holds two neighbouring columns of 32 consecutive rows: the codes of the
    first 32 (row, column) pairs in the low nibbles, the next 32 in the high ones. The scales are
    bfloat16, stored transposed as [in_features / blocksize, out_features].
    """
    rows, half_columns = packed.shape
    runs = packed.reshape(-1, 32)
    codes = torch.cat([runs & 0x0F, runs >> 4], dim=1)
    codes = codes.reshape(rows // 32, half_columns, 32, 2).transpose(1, 2).reshape(rows, 2 * half_columns)
    levels = import_bitsandbytes().functional.get_4bit_type(state.quant_type, device=packed.device)
    scales = state.absmax.T.float().repeat_interleave(state.blocksize, dim=1)
    return (levels[codes.long()] * scales).to(state.original_dtype)


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The weight of an `nn.Linear` or a `Linear4bit` as a float tensor (a new one for the latter).

    A `Linear4bit` repacks its weight the first time it runs inference on a CPU with AVX512-BF16;
    that layout is read as it stands, without undoing the repacking.
    """
    bnb = import_bitsandbytes()
    if isinstance(layer, bnb.nn.Linear4bit):
        packed, state = layer.weight.data, layer.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            return _read_cpu_bf16_layout(packed, state)
        return bnb.functional.dequantize_4bit(packed, state)
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    raise TypeError(f"expected nn.Linear or bitsandbytes Linear4bit, got {type(layer).__name__}")


@dataclass(frozen=True)
class StorageReport:
    """What a model's parameters occupy: those held in 4 bits and all the others."""

    quantized_parameters: int
    quantized_bytes: int
    """Packed codes plus every quantization constant (scales, offsets, level tables)."""
    other_parameters: int
    other_bytes: int

    @property
    def bits_per_quantized_parameter(self) -> float:
        return 8 * self.quantized_bytes / self.quantized_parameters

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.other_bytes


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def quant_state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState: absmax, the code table, and with double quantization the offset
    and the second-level state."""
    tensors = [getattr(state, name) for name in ("absmax", "code", "offset")
               if torch.is_tensor(getattr(state, name, None))]
    nested = getattr(state, "state2", None)
    return tensors + (quant_state_tensors(nested) if nested is not None else [])


def storage_report(model: nn.Module) -> StorageReport:
    """Count the bytes of `model`'s parameters, 4-bit weights with their quantization state."""
    bnb = import_bitsandbytes()
    quantized_parameters = quantized_bytes = other_parameters = other_bytes = 0
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        if isinstance(parameter, bnb.nn.Params4bit) and state is not None:
            quantized_parameters += state.shape.numel()
            quantized_bytes += _nbytes(parameter) + sum(_nbytes(t) for t in quant_state_tensors(state))
        else:
            other_parameters += parameter.numel()
            other_bytes += _nbytes(parameter)
    return StorageReport(quantized_parameters, quantized_bytes, other_parameters, other_bytes)


def quantization_error(weight: torch.Tensor, data_type: str, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """Element-wise error (reconstruction minus weight) of a 4-bit round trip, in float32.

    `data_type` is "nf4" or "int4" (`adaq_lora.quant.nf4`'s reference, scales kept in float32) or "fp4"
    (bitsandbytes' 4-bit float: 1 sign, 2 exponent, 1 mantissa bit). All three use the same
    block-wise absmax scaling, so they differ only in where their levels sit.
    """
    weight = weight.float()
    if data_type == "fp4":
        functional = import_bitsandbytes().functional
        packed, state = functional.quantize_4bit(weight, blocksize=blocksize, quant_type="fp4")
        return functional.dequantize_4bit(packed, state) - weight
    if data_type not in ("nf4", "int4"):
        raise ValueError(f"data_type must be 'nf4', 'int4' or 'fp4', not {data_type!r}")
    levels = nf4_levels() if data_type == "nf4" else int4_levels()
    codes, absmax = quantize_blockwise(weight, levels, blocksize)
    return dequantize_blockwise(codes, absmax, levels, blocksize).reshape(weight.shape) - weight
