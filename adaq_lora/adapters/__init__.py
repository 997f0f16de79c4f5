"""The trainable part (book chapters 1, 3, 5 and 6): LoRA's B A (`lora`, Eq. 1), the SVD form P Λ Q with its
orthogonality term (`svd_adapter`, Eqs. 5-6), the importance-driven rank budget (`rank_allocator`, Sec. 2.3), rank
compaction once the budget is final (`compaction`) and the LoftQ start (`loftq`)."""
from .lora import AdapterLayer, LoraLinear
from .rank_allocator import RankAllocator, cubic_budget
from .svd_adapter import SVDLinear, orthogonal_regularizer

__all__ = ["AdapterLayer", "LoraLinear", "RankAllocator", "SVDLinear", "cubic_budget", "orthogonal_regularizer"]
