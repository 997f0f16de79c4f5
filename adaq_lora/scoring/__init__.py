"""Scoring answers (Sec. 3; book chapters 7 and 8): greedy generation of the test answers (`evaluate`) and the
paper's ROUGE-1/2/L and BLEU-4 with bootstrap intervals (`metrics`)."""
from .evaluate import generate_answers
from .metrics import METRIC_NAMES, bootstrap_intervals, paired_bootstrap, score

__all__ = ["METRIC_NAMES", "bootstrap_intervals", "generate_answers", "paired_bootstrap", "score"]
