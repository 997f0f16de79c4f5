"""The recorded per-prompt scores two methods are compared on, and the family of verdicts they make (chapter 8).

A comparison reads each run's predictions.jsonl (`recorded_rows`, once per run however many comparisons use it:
`caching_reader`) and gathers, for each method, one list of per-prompt scores per training run (`seed_runs`), which
`scoring.metrics.seed_and_prompt_bootstrap` resamples over prompts and, within each method, over its runs. The runs
must hold the same prompts with the same references, or the comparison is refused by name.

Many verdicts are made at once (two stand-ins × five claims and the ablations, on Avg and accuracy), and at 95% each
one of twenty-odd true ties would still read as a difference about once. `holm_adjusted` gives Holm's step-down
adjustment of their bootstrap p-values: a verdict keeps its direction at family-wise level α when its adjusted p is
below α (Holm, 1979), whatever the dependence between the comparisons.
"""
from __future__ import annotations

from pathlib import Path

from ..data import json_lines_rows
from .experiment import PREDICTIONS_FILE


def recorded_rows(result: dict) -> list[dict]:
    """The rows of the predictions.jsonl beside a collected result.json (`tables.collect_results`)."""
    path = Path(result["path"]).parent / PREDICTIONS_FILE
    try:
        rows = [row for _, row in json_lines_rows(path.read_text(encoding="utf-8"), path)]
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the paired comparison needs each run's predictions; rerun that cell")
    if not rows:
        raise ValueError(f"{path} has no predictions; rerun that cell")
    return rows


def caching_reader():
    """`recorded_rows`, reading each predictions.jsonl once however many comparisons pair it."""
    rows: dict[str, list[dict]] = {}

    def read(run: dict) -> list[dict]:
        if run["path"] not in rows:
            rows[run["path"]] = recorded_rows(run)
        return rows[run["path"]]

    return read


def seed_runs(ours: list[dict], theirs: list[dict], metric: str,
              read=recorded_rows) -> tuple[list[list[float]], list[list[float]]] | None:
    """Each method's per-prompt `metric`, one list per run (by seed); None where a run lacks the metric. Every run
    must hold the same prompts and references as the first. A method that trains nothing (the untrained model) is
    run once: its greedy answers do not depend on the seed."""
    first, asked, scores = None, None, ([], [])
    for side, runs in enumerate((ours, theirs)):
        for run in sorted(runs, key=lambda r: r["seed"]):
            rows = read(run)
            if first is None:
                first, asked = run, _prompts(rows)
            if _prompts(rows) != asked:
                raise ValueError(f"{run['path']} and {first['path']} do not hold the same test prompts and "
                                 "references: they cannot be paired; rerun one of them")
            if any(metric not in r["scores"] for r in rows):
                return None
            scores[side].append([r["scores"][metric] for r in rows])
    return scores if all(scores) else None


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m − i + 1), kept monotone
    and at most 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _prompts(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["prompt"], r["reference"]) for r in rows]
