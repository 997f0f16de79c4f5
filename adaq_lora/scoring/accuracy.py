"""Answer accuracy beside ROUGE and BLEU (book chapters 7 and 8; the paper's Sec. 3 reports ROUGE/BLEU only).

ROUGE and BLEU reward the template of an answer, not its truth: on School_math a worked solution whose arithmetic
goes wrong in the last step keeps nearly every word of the reference (in a run on the first, easier stand-in,
"已经行驶了10×3=30千米。全程是30+114=416千米。答：全程一共有416千米。" scored an Avg above 0.8 against the reference's 144). Accuracy asks whether the answer is right:

- `final_answer` (School_math and its stand-in): the numbers of the final answer — the last line holding "答", or
  the last line — must equal the reference's, in order. Numbers are compared as exact fractions, so 3 = 3.0 = 3.00,
  "3/4" = 0.75, "45%" = 0.45, thousands separators are dropped, a minus sign counts where no digit stands before
  it (so -3 ≠ 3, and "30-20" is two numbers), and units or words around them do not matter.
- `exact` (Alpaca-style tasks with one checkable answer): the whole answer equals the reference after whitespace and
  punctuation (Chinese and ASCII) are removed and full-width forms folded. Letters keep their case: a task may ask
  for capitals, and "apple" does not answer "rewrite in capitals" with "APPLE". (Until 2026-12-05 case was folded;
  `scripts/add_accuracy.py` re-scored the recorded runs.)
- `accuracy_working` (`final_answer` sets only): the final numbers are right and so is every step of the working
  that states one, `a op b = c` (a chain a op b = c = d: every side equal) in exact arithmetic, × ÷ before + −,
  brackets kept; a side stated with k decimals may round to them. A right final number reached through a wrong
  step is a lucky answer, not a solved problem. A step that cannot be read as arithmetic is not judged.

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
    """Letters (case kept) and digits only, full-width forms folded: what `exact` compares."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


def answer_correct(prediction: str, reference: str, kind: str) -> bool:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; use one of {ANSWER_KINDS}")
    if kind == "exact":
        return bool(normalized(reference)) and normalized(prediction) == normalized(reference)
    expected = numbers(final_line(reference))
    return bool(expected) and numbers(final_line(prediction)) == expected


def accuracy_scores(predictions: list[str], references: list[str], kind: str) -> dict[str, list[float]]:
    """Per example, 1.0 right and 0.0 wrong, in order: `accuracy`, and for `final_answer` `accuracy_working`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    right = [answer_correct(p, r, kind) for p, r in zip(predictions, references)]
    scores = {"accuracy": [float(correct) for correct in right]}
    if kind == "final_answer":
        scores["accuracy_working"] = [float(correct and working_correct(p)) for correct, p in zip(right, predictions)]
    return scores


def working_correct(text: str) -> bool:
    """Every arithmetic step `a op b = c` of `text` holds (see the module docstring); a text without one holds."""
    for match in _STEP.finditer(unicodedata.normalize("NFKC", text)):
        sides = [side.strip() for side in match.group(0).split("=")]
        sides[0], sides[-1] = sides[0].lstrip("+-−×*÷/ "), sides[-1].rstrip("+-−×*÷/( ")
        if not _OPERATION.search(sides[0]):
            continue  # "…千米+114千米=144": the operands stand apart, or a restated value: nothing to check here
        try:
            values = [_evaluate(side) for side in sides]
        except (ValueError, ZeroDivisionError):
            continue
        if any(abs(value - values[0]) > _rounding(side) for side, value in zip(sides[1:], values[1:])):
            return False
    return True


_STEP = re.compile(r"[\d.\s()+\-−×*÷/]+(?:=[\d.\s()+\-−×*÷/]+)+")
_OPERATION = re.compile(r"[\d)]\s*[+\-−×*÷/]\s*[\d(]")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[+\-−×*÷/()]")


def _rounding(side: str) -> Fraction:
    """Half a unit of the last decimal a plain number is stated to: 3.33 may stand for 10/3."""
    plain = re.fullmatch(r"\d+\.(\d+)", side)
    return Fraction(1, 2 * 10 ** len(plain.group(1))) if plain else Fraction(0)


def _evaluate(expression: str) -> Fraction:
    """The exact value of + − × ÷ arithmetic with brackets; ValueError for anything else."""
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != re.sub(r"\s", "", expression):
        raise ValueError(f"not arithmetic: {expression!r}")
    position = 0

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError("the expression ends early")
        position += 1
        return tokens[position - 1]

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def factor() -> Fraction:
        token = take()
        if token in "-−":
            return -factor()
        if token == "(":
            value = total()
            if take() != ")":
                raise ValueError("unbalanced bracket")
            return value
        if not token[0].isdigit():
            raise ValueError(f"a number was expected, not {token!r}")
        return Fraction(token)

    def product() -> Fraction:
        value = factor()
        while peek() in ("×", "*", "÷", "/"):
            value = value * factor() if take() in "×*" else value / factor()
        return value

    def total() -> Fraction:
        value = product()
        while peek() in ("+", "-", "−"):
            value = value + product() if take() == "+" else value - product()
        return value

    value = total()
    if position != len(tokens):
        raise ValueError(f"left over: {tokens[position:]}")
    return value
