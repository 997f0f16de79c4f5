"""Training (Sec. 3; book chapters 3, 6 and 7): the one optimizer step (`step`) and the loop with its batch
order, progress bar and resumable checkpoints (`loop`), and bfloat16 products in float32 where a CPU lacks
bfloat16 units (`float32_products`)."""
from .float32_products import float32_products
from .loop import TrainResult, steps_for, train
from .step import StepOutcome, make_optimizer, set_gradient_checkpointing, start_from_gradient, training_step

__all__ = ["StepOutcome", "TrainResult", "float32_products", "make_optimizer", "set_gradient_checkpointing",
           "start_from_gradient", "steps_for", "train", "training_step"]
