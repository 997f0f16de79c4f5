"""Memory (the Memory/MB column of Tables 1-2; book chapters 0, 6 and 8): one training step measured by the
profiler (`memory`) and predicted from a model's configuration (`memory_model`)."""
from .memory import MemoryBreakdown, measure_training_memory
from .memory_model import paper_memory_comparison, predict_training_memory

__all__ = ["MemoryBreakdown", "measure_training_memory", "paper_memory_comparison", "predict_training_memory"]
