"""ROUGE-1/2/L and BLEU-4 as the paper reports them, with bootstrap intervals.

Paper Section 3, Tables 1 and 2 (Rouge-1, Rouge-2, Rouge-L, BLEU, Avg). Book chapters 7 and 8.

The paper's numbers follow the convention of the ChatGLM and LLaMA-Factory evaluation scripts:
Chinese text is segmented into words with jieba; ROUGE F-scores come from ``rouge_chinese`` on the
space-joined words; BLEU-4 comes from nltk's ``sentence_bleu`` over characters with smoothing method 3.
Each score is averaged over examples and reported as a fraction; Avg is the mean of the four. English
text (``lang="en"``) is split into words and punctuation marks, for ROUGE and BLEU alike.

A test set of a few hundred examples leaves these means uncertain, so the module also gives
percentile-bootstrap intervals and a paired bootstrap for comparing two methods on the same examples.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from functools import cache

import numpy as np

SCORE_NAMES = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
METRIC_NAMES = SCORE_NAMES + ("avg",)
LANGUAGES = ("zh", "en")
_ENGLISH_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class PairedComparison:
    """Outcome of ``paired_bootstrap``: how much method A's score exceeds method B's."""

    metric: str  # which score was compared
    mean_difference: float  # mean over examples of A minus B
    interval: tuple[float, float]  # (low, high) percentile-bootstrap interval of the mean difference
    a_better_fraction: float  # share of resamples in which A's mean is strictly above B's
    p_value: float  # two-sided: twice the smaller share of resamples on either side of zero (at most 1)


def score(predictions: list[str], references: list[str], lang: str = "zh") -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and BLEU-4 (fractions in [0, 1]) and their average ``avg``."""
    per_example = per_example_scores(predictions, references, lang=lang)
    return {name: float(np.mean(values)) for name, values in per_example.items()}


def per_example_scores(predictions: list[str], references: list[str], lang: str = "zh") -> dict[str, list[float]]:
    """Each metric's value on each (prediction, reference) pair: the values ``score`` averages."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references; "
                         f"they must pair up one to one")
    if not predictions:
        raise ValueError("no predictions to score")
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {LANGUAGES}, got {lang!r}")
    rows = [_pair_scores(prediction, reference, lang) for prediction, reference in zip(predictions, references)]
    return {name: [row[name] for row in rows] for name in METRIC_NAMES}


def bootstrap_intervals(per_example: dict[str, list[float]], n_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap interval of each metric's mean: ``{metric: (low, high)}``.

    Every metric is resampled with the same example indices, so the intervals describe one resampled
    test set at a time.
    """
    values = _as_matrix(per_example)
    means = values[:, _resample_indices(values.shape[1], n_resamples, seed)].mean(axis=2)
    tail = _tail_percent(confidence)
    lows, highs = np.percentile(means, [tail, 100 - tail], axis=1)
    return {name: (float(low), float(high)) for name, low, high in zip(per_example, lows, highs)}


def paired_bootstrap(per_example_a: dict[str, list[float]], per_example_b: dict[str, list[float]], metric: str = "avg",
                     n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> PairedComparison:
    """Does method A beat method B on the same test set? Resamples examples, keeping each A/B pair together."""
    if metric not in per_example_a or metric not in per_example_b:
        raise ValueError(f"metric {metric!r} is missing from the per-example scores; "
                         f"choose one of {sorted(set(per_example_a) & set(per_example_b))}")
    return seed_and_prompt_bootstrap([per_example_a[metric]], [per_example_b[metric]], metric, n_resamples, seed,
                                     confidence)


def seed_and_prompt_bootstrap(runs_a: list[list[float]], runs_b: list[list[float]], metric: str = "avg",
                              n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> PairedComparison:
    """Does method A beat method B, over test prompts and training seeds? `runs_a` holds one list of per-prompt
    scores per training run of A, `runs_b` of B, all on the same prompts in the same order.

    A two-level bootstrap: each resample draws the test prompts (the same draw for both methods, so each prompt's
    pair stays together) and, within each method, its training runs, independently of the other method's. Its
    interval covers what another draw of test prompts and other training runs would change; with one run each it
    is the paired bootstrap over prompts.
    """
    a, b = np.asarray(runs_a, dtype=float), np.asarray(runs_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or 0 in a.shape or 0 in b.shape:
        raise ValueError("each method needs at least one run of per-prompt scores: a list of lists")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A has {a.shape[1]} examples but B has {b.shape[1]}; a paired comparison needs "
                         f"both methods scored on the same test set")
    prompts = _resample_indices(a.shape[1], n_resamples, seed)
    runs = np.random.default_rng(seed + 1)
    chosen = [np.stack([np.bincount(draw, minlength=len(x)) for draw in runs.integers(0, len(x), (n_resamples, len(x)))])
              / len(x) for x in (a, b)]  # each resample's weight on each run: how often it was drawn, over the runs
    per_prompt = chosen[0] @ a - chosen[1] @ b  # [resamples × prompts]: the drawn runs' mean difference per prompt
    resampled = np.take_along_axis(per_prompt, prompts, axis=1).mean(axis=1)
    tail = _tail_percent(confidence)
    low, high = np.percentile(resampled, [tail, 100 - tail])
    p_value = min(1.0, 2 * min(float((resampled <= 0).mean()), float((resampled >= 0).mean())))
    return PairedComparison(metric=metric, mean_difference=float(a.mean() - b.mean()), interval=(float(low), float(high)),
                            a_better_fraction=float((resampled > 0).mean()), p_value=p_value)


@cache
def _scorers():
    """jieba, ROUGE and BLEU, imported on first use: a GPU node that only trains never needs them."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    return jieba, Rouge(metrics=["rouge-1", "rouge-2", "rouge-l"], stats=["f"]), sentence_bleu, SmoothingFunction().method3


def _pair_scores(prediction: str, reference: str, lang: str) -> dict[str, float]:
    jieba, rouge_scorer, sentence_bleu, smoothing = _scorers()
    if lang == "zh":
        # Raw jieba output, whitespace runs included, as the reference scripts pass it: rouge_chinese
        # then treats a line break as a sentence boundary exactly as it did for the paper's numbers.
        prediction_words, reference_words = list(jieba.cut(prediction)), list(jieba.cut(reference))
        prediction_units, reference_units = list(prediction), list(reference)
    else:
        prediction_words, reference_words = _ENGLISH_TOKEN.findall(prediction), _ENGLISH_TOKEN.findall(reference)
        prediction_units, reference_units = prediction_words, reference_words
    prediction_text, reference_text = " ".join(prediction_words), " ".join(reference_words)
    # rouge_chinese raises on a side with no words; the reference scripts score its ROUGE 0, and so
    # does this module for all four scores.
    if not prediction_text.split() or not reference_text.split():
        return dict.fromkeys(METRIC_NAMES, 0.0)
    rouge = rouge_scorer.get_scores(prediction_text, reference_text)[0]
    scores = {name: rouge[name]["f"] for name in ("rouge-1", "rouge-2", "rouge-l")}
    scores["bleu-4"] = float(sentence_bleu([reference_units], prediction_units, smoothing_function=smoothing))
    scores["avg"] = sum(scores[name] for name in SCORE_NAMES) / len(SCORE_NAMES)
    return scores


def _as_matrix(per_example: dict[str, list[float]]) -> np.ndarray:
    if not per_example:
        raise ValueError("no metrics given: pass the dict that per_example_scores returns")
    lengths = {name: len(values) for name, values in per_example.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every metric needs one value per example; got lengths {lengths}")
    if not next(iter(lengths.values())):
        raise ValueError("no examples to resample")
    return np.asarray([per_example[name] for name in per_example], dtype=float)


def _resample_indices(n_examples: int, n_resamples: int, seed: int) -> np.ndarray:
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return np.random.default_rng(seed).integers(0, n_examples, size=(n_resamples, n_examples))


def _tail_percent(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return 50 * (1 - confidence)
