"""The frozen base in fewer bits (book chapters 4 and 6): the NF4 reference (`nf4`), bitsandbytes' kernels checked
on this CPU (`kernels`), QLoRA's 4-bit storage (`quantize`), matrices stored at a chosen precision (`blockwise`) and
the importance-driven precision plan that chooses it (`precision`)."""
from .blockwise import BlockwiseEmbedding, BlockwiseLinear, BlockwiseMatrix
from .kernels import import_bitsandbytes, kernel_report
from .nf4 import dequantize_nf4, nf4_levels, quantize_nf4
from .precision import PrecisionPlan, apply_precision_plan, plan_precision
from .quantize import dequantized_weight, quantize_model, storage_report

__all__ = ["BlockwiseEmbedding", "BlockwiseLinear", "BlockwiseMatrix", "PrecisionPlan", "apply_precision_plan",
           "dequantize_nf4", "dequantized_weight", "import_bitsandbytes", "kernel_report", "nf4_levels",
           "plan_precision", "quantize_model", "quantize_nf4", "storage_report"]
