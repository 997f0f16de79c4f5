"""Answer accuracy beside ROUGE and BLEU (book chapters 7 and 8; the paper's Sec. 3 reports ROUGE/BLEU only).

ROUGE and BLEU reward the template of an answer, not its truth: on School_math a worked solution whose arithmetic
goes wrong in the last step keeps nearly every word of the reference (in a run on the first, easier stand-in,
"已经行驶了10×3=30千米。全程是30+114=416千米。答：全程一共有416千米。" scored an Avg above 0.8 against the reference's 144). Accuracy asks whether the answer is right:

- `final_answer` (School_math and its stand-in): the numbers of the final answer — the last line holding "答", or
  the last line — must equal the reference's, in order. Numbers are compared as exact fractions, so 3 = 3.0 = 3.00,
  "3/4" = 0.75, "45%" = 0.45, thousands separators are dropped, a minus sign counts where no digit stands before
  it (so -3 ≠ 3, and "30-20" is two numbers), and units or words around them do not matter.
- `exact` (Alpaca-style tasks with one checkable answer): the whole answer equals the reference after whitespace and
  punctuation (Chinese and ASCII) are removed and letters lower-cased.

Each example scores 1 or 0, so the mean is the accuracy and `metrics.bootstrap_intervals` gives its interval.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from ..data import paper_dataset

ANSWER_KINDS = ("final_answer", "exact")
# a sign only where no digit or bracket stands before it: "答：-3" is minus three, "30-20" is two numbers
_NUMBER = re.compile(r"((?<![\d.)）])[-−])?(?<![\d.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                     r"(?:\s*/\s*(\d+(?:\.\d+)?))?\s*(%|％)?")


def answer_kind(dataset: str) -> str:
    """How answers of `dataset` are checked: as `data.PAPER_DATASETS` says for the paper's sets (School_math's by
    their final numbers), exactly for a set of the user's own."""
    paper_set = paper_dataset(dataset)
    return paper_set.answer_kind if paper_set else "exact"


def final_line(text: str) -> str:
    """The line that states the final answer: the last one holding 答, else the last non-empty one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    marked = [line for line in lines if "答" in line]
    return (marked or lines)[-1]


def numbers(text: str) -> list[Fraction]:
    """Every number of `text`, as an exact fraction: decimals, a/b fractions, percentages, 1,200-style thousands."""
    found = []
    for sign, whole, denominator, percent in _NUMBER.findall(text):
        value = Fraction(whole.replace(",", "")) * (-1 if sign else 1)
        if denominator:
            if Fraction(denominator) == 0:
                continue
            value /= Fraction(denominator)
        found.append(value / 100 if percent else value)
    return found


def normalized(text: str) -> str:
    """Letters and digits only, lower-cased, full-width forms folded: what `exact` compares."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in folded if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


def answer_correct(prediction: str, reference: str, kind: str) -> bool:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; use one of {ANSWER_KINDS}")
    if kind == "exact":
        return bool(normalized(reference)) and normalized(prediction) == normalized(reference)
    expected = numbers(final_line(reference))
    return bool(expected) and numbers(final_line(prediction)) == expected


def accuracy_scores(predictions: list[str], references: list[str], kind: str) -> list[float]:
    """1.0 for each right answer, 0.0 for each wrong one, in order."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [float(answer_correct(p, r, kind)) for p, r in zip(predictions, references)]
