"""bfloat16 matrix products computed in float32, for a CPU without bfloat16 units (Sec. 3's 16-bit base; results/).

The cpu profile stores every method's frozen base in bfloat16. On a CPU with AVX512-BF16 or AMX, torch multiplies
bfloat16 matrices with oneDNN kernels that accumulate in float32 and round the product to bfloat16. A CPU with
neither (AVX2) falls back to a generic kernel over ten times slower: a cpu-profile LoRA step took 40.6 s there
against 3.0 s in float32 (benchmarks/bench_base_dtype_avx2.json), 95% of it in `aten::mm`.

Inside `float32_products()`, each matrix product whose operands are all bfloat16 (`aten::mm`, `addmm`, `bmm`,
`baddbmm`: what `F.linear` and `matmul` run, forward and backward) is computed in float32 from those same bfloat16
operands and its output rounded to bfloat16, which is what the oneDNN kernels do. The weights stay bfloat16, and so
does every activation between the products: the run keeps its setting, and a product differs from the native
kernel's only in the order of its float32 sums, by bfloat16 rounding (tests/test_float32_products.py checks one ulp),
as two CPU kernel families differ. Flash attention is taken in float32 too; torch's bfloat16 kernel rounds its
softmax to bfloat16 before multiplying by V, so there the float32 path lies nearer the exact attention (tested).

The float32 copies live only while one product runs, but they are workspace a bfloat16 kernel does not take, so a
run measures its memory outside this mode (grid/experiment.py): memory is a property of the setting, the products'
speed one of the machine. `Profile.multiplies_in_float32()` says when a run takes
this path, and result.json records it (`float32_products`).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
PRODUCTS = {  # op → which of its outputs a bfloat16 kernel returns in bfloat16 (None: its one output)
    aten.mm.default: None, aten.addmm.default: None, aten.bmm.default: None, aten.baddbmm.default: None,
    aten.linear.default: None,
    aten._scaled_dot_product_flash_attention_for_cpu.default: (0,),  # (output, logsumexp in float32)
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default: (0, 1, 2),
}
COMPOSITE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


class Float32Products(TorchDispatchMode):
    """Runs each bfloat16 matrix product in float32 (the module docstring says why and what it keeps).

    A dispatch mode sits below autograd: it sees the products of the backward pass and of custom autograd functions
    (bitsandbytes' `MatMul4Bit`) too, and autograd keeps the bfloat16 tensors it would keep anyway. bitsandbytes'
    `gemm_4bit` decodes its weight to the input's dtype and calls `linear`; it runs with the mode in place, so its
    weight is decoded to bfloat16 as without the mode and only its product is taken in float32.
    """

    def __init__(self):
        super().__init__()
        bitsandbytes = getattr(torch.ops, "bitsandbytes", None)  # its ops exist once it is imported
        self.composites = {bitsandbytes.gemm_4bit.default} if hasattr(bitsandbytes, "gemm_4bit") else set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in PRODUCTS and func not in self.composites:
            return func(*args, **kwargs)
        dtypes = _floating_dtypes(args, kwargs)
        if torch.bfloat16 not in dtypes or (PRODUCTS.get(func, ()) is None and len(dtypes) > 1):
            return func(*args, **kwargs)  # not a bfloat16 product (a mixed one fails as it does without the mode)
        if func in self.composites:
            with self:  # the kernel's own ops come through here
                return func.redispatch(COMPOSITE, *args, **kwargs)
        upcast = lambda value: value.float() if torch.is_tensor(value) and value.dtype == torch.bfloat16 else value
        output = func(*tree_map(upcast, args), **tree_map(upcast, kwargs))
        if PRODUCTS[func] is None:
            return output.to(torch.bfloat16)
        return tuple(value.to(torch.bfloat16) if index in PRODUCTS[func] else value
                     for index, value in enumerate(output))


def _floating_dtypes(args, kwargs) -> set[torch.dtype]:
    tensors = [value for value in tree_flatten((args, kwargs))[0] if torch.is_tensor(value)]
    return {tensor.dtype for tensor in tensors if tensor.is_floating_point()}


def float32_products(enabled: bool = True):
    """A context in which all-bfloat16 matrix products run in float32 (a no-op context when not `enabled`)."""
    return Float32Products() if enabled else contextlib.nullcontext()
