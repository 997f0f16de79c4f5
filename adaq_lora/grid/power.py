"""What a paired test set can resolve: the power statement of chapter 8 (the paper's Sec. 3 gives no intervals).

A paired comparison of two methods on n test prompts, whose per-prompt differences have standard deviation s, finds
a true mean difference δ with probability `power` in a two-sided test at level α when

    |δ| ≥ (z_{1−α/2} + z_{power}) · s / √n,

the minimum detectable difference (the normal approximation; at n = 200 Student's t would raise it by under 1%).
For our runs n and s are measured: n is the test set, s the spread of the per-prompt differences, each prompt's score
being its mean over the seeds both methods ran (as `claims.paired_scores` pairs them). For the paper's test sets n is
known (20% of each set, `paper.PAPER_SET_ROWS`) but s is not: the per-prompt scores of ChatGLM2-6B were not
published, so ours stands in for it, and the statement says so. The paper reports one run per method, so what
stands in is the spread of one seed's differences (the root mean square over our seeds), which averaging over
seeds would understate. Beside it is the gap the paper reports between ADAQ-LoRA and QLoRA, so the reader can see
whether its test set could have resolved it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, stdev

from ..paper import PAPER_ROWS, PAPER_SET_ROWS, PAPER_TEST_FRACTION
from ..scoring.metrics import METRIC_NAMES
from .claims import SCORED, caching_reader, group_runs, seed_pairs
from .tables import table_for

COMPARISONS = (("adaq_lora", "qlora"),)  # the paper's closest claim: gaps of 0.002 and 0.007 in Avg


def minimum_detectable_difference(spread: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired test at level `alpha` finds with probability `power`."""
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 prompts, got {n}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha lie strictly between 0 and 1, got power={power}, alpha={alpha}")
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * spread / math.sqrt(n)


@dataclass(frozen=True)
class PowerRow:
    group: str  # model, profile, data set
    comparison: str  # e.g. "adaq_lora − qlora"
    metric: str  # "Avg" or "accuracy"
    prompts: int  # our test prompts
    seeds: int  # seeds each prompt's score is the mean of
    spread: float  # standard deviation of the per-prompt differences, each the mean over the seeds
    run_spread: float  # the same for one seed's run (root mean square over the seeds): one run, as the paper's
    observed: float  # our mean difference
    detectable: float  # the minimum detectable difference at our n
    paper_prompts: int | None  # the paper's test set for this data set
    paper_detectable: float | None  # at the paper's n, with our run_spread standing in for its unpublished one
    paper_gap: float | None  # the paper's own difference (Avg only; it reports no accuracy)
    power: float  # the power both detectable differences are sized at


def power_rows(results: list[dict], power: float = 0.8, alpha: float = 0.05) -> list[PowerRow]:
    """One row per group of runs, comparison of `COMPARISONS` and metric that the runs have."""
    read, rows = caching_reader(), []
    for (model, profile, dataset), runs in group_runs(results).items():
        table = table_for(dataset)
        for ours, other in COMPARISONS:
            if ours not in runs or other not in runs:
                continue
            for metric, label in SCORED.items():
                pairs = seed_pairs(runs[ours], runs[other], metric, read)
                if pairs is None or len(pairs[0][0]) < 2:
                    continue
                per_seed = [[x - y for x, y in zip(a, b)] for a, b in pairs]
                differences = [sum(column) / len(pairs) for column in zip(*per_seed)]
                spread = stdev(differences)
                run_spread = math.sqrt(sum(stdev(d) ** 2 for d in per_seed) / len(per_seed))
                paper_n = round(PAPER_TEST_FRACTION * PAPER_SET_ROWS[table.number]) if table else None
                paper_gap = None
                if table and metric in METRIC_NAMES:
                    index = METRIC_NAMES.index(metric)
                    paper_gap = PAPER_ROWS[table.number][ours][index] - PAPER_ROWS[table.number][other][index]
                n = len(differences)
                rows.append(PowerRow(
                    f"{model}, {profile}, {dataset}", f"{ours} − {other}", label, n, len(pairs), spread, run_spread,
                    sum(differences) / n, minimum_detectable_difference(spread, n, power, alpha), paper_n,
                    minimum_detectable_difference(run_spread, paper_n, power, alpha) if paper_n else None, paper_gap,
                    power))
    return rows


def power_markdown(rows: list[PowerRow]) -> str:
    """The rows as a table, each at the power it was sized at; with none, a sentence saying why."""
    if not rows:
        return "*Nothing to size yet: these runs hold no pair of methods compared on the same test prompts.*\n"
    lines = ["| runs | difference | metric | our prompts × seeds | per-prompt spread, seed mean (one run) | ours | "
             "resolvable, ours | the paper's test prompts | resolvable there, one run at our spread | the paper's gap |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = ("—", "—") if row.paper_prompts is None else (f"{row.paper_prompts:,}", f"±{row.paper_detectable:.4f}")
        gap = "— (none published)" if row.paper_gap is None else f"{row.paper_gap:+.4f}"
        lines.append(f"| {row.group} | {row.comparison} | {row.metric} | {row.prompts} × {row.seeds} | "
                     f"{row.spread:.4f} ({row.run_spread:.4f}) | {row.observed:+.4f} | ±{row.detectable:.4f} at "
                     f"{row.power:.0%} power | {paper[0]} | {paper[1]} | {gap} |")
    return "\n".join(lines)
