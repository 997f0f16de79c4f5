"""What a paired test set can resolve: the power statement of chapter 8 (the paper's Sec. 3 gives no intervals).

A comparison of two methods on n test prompts, whose per-prompt differences have standard deviation s, each method
trained S times with a seed-to-seed spread σ of its mean score, finds a true mean difference δ with probability
`power` in a two-sided test at level α when

    |δ| ≥ (z_{1−α/2} + z_{power}) · √(s²/n + σ_a²/S_a + σ_b²/S_b),

the minimum detectable difference (the normal approximation; at n = 200 Student's t would raise it by under 1%).
The first term is the test set's noise, the others the training runs': a method trained once is one draw of its
seed, and more test prompts do not average that away. For our runs n, s and σ are measured: s is the spread of the
per-prompt differences of the two methods' seed means, σ the standard deviation of a method's mean over its seeds
(zero for a method run once, such as the untrained model, whose answers do not depend on the seed). For the paper's
test sets n is known (20% of each set, `paper.PAPER_SET_ROWS`) but s and σ are not: ChatGLM2-6B's per-prompt scores
were not published, so ours stand in, and the statement says so. The paper reports one run per method, so what
stands in for s is one run's spread (the root mean square over our pairs of runs), and each method's σ counts in
full. Beside it is the gap the paper reports between ADAQ-LoRA and QLoRA, so the reader can see whether its test set
and single runs could have resolved it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, stdev

from ..paper import PAPER_ROWS, PAPER_SET_ROWS, PAPER_TEST_FRACTION
from ..scoring.metrics import METRIC_NAMES
from .claims import SCORED, group_runs
from .paired import caching_reader, seed_runs
from .tables import table_for

COMPARISONS = (("adaq_lora", "qlora"),)  # the paper's closest claim: gaps of 0.002 and 0.007 in Avg


def minimum_detectable_difference(spread: float, n: int, power: float = 0.8, alpha: float = 0.05,
                                  seed_variance: float = 0.0) -> float:
    """The smallest true mean difference a two-sided test at level `alpha` finds with probability `power`, from `n`
    prompts of per-prompt spread `spread` and the training runs' variance of the mean difference, `seed_variance`
    (σ_a²/S_a + σ_b²/S_b)."""
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 prompts, got {n}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha lie strictly between 0 and 1, got power={power}, alpha={alpha}")
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * math.sqrt(spread**2 / n + seed_variance)


@dataclass(frozen=True)
class PowerRow:
    group: str  # model, profile, data set
    comparison: str  # e.g. "adaq_lora − qlora"
    metric: str  # "Avg" or "accuracy"
    prompts: int  # our test prompts
    seeds: tuple[int, int]  # runs (seeds) of each method
    spread: float  # standard deviation of the per-prompt differences of the two methods' seed means
    run_spread: float  # the same for one run of each (root mean square over the pairs of runs), as the paper's
    seed_spreads: tuple[float, float]  # each method's standard deviation of its mean over its seeds (0: one run)
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
                found = seed_runs(runs[ours], runs[other], metric, read)
                if found is None or len(found[0][0]) < 2:
                    continue
                a, b = found
                differences = [x - y for x, y in zip(mean_of_runs(a), mean_of_runs(b))]
                spread = stdev(differences)
                run_spread = math.sqrt(sum(stdev([x - y for x, y in zip(run_a, run_b)]) ** 2
                                           for run_a in a for run_b in b) / (len(a) * len(b)))
                seed_spreads = tuple(stdev([sum(run) / len(run) for run in side]) if len(side) > 1 else 0.0
                                     for side in (a, b))
                ours_seed_variance = sum(sigma**2 / len(side) for sigma, side in zip(seed_spreads, (a, b)))
                paper_n = round(PAPER_TEST_FRACTION * PAPER_SET_ROWS[table.number]) if table else None
                paper_gap = None
                if table and metric in METRIC_NAMES:
                    index = METRIC_NAMES.index(metric)
                    paper_gap = PAPER_ROWS[table.number][ours][index] - PAPER_ROWS[table.number][other][index]
                n = len(differences)
                rows.append(PowerRow(
                    f"{model}, {profile}, {dataset}", f"{ours} − {other}", label, n, (len(a), len(b)), spread,
                    run_spread, seed_spreads, sum(differences) / n,
                    minimum_detectable_difference(spread, n, power, alpha, ours_seed_variance), paper_n,
                    minimum_detectable_difference(run_spread, paper_n, power, alpha, sum(x**2 for x in seed_spreads))
                    if paper_n else None, paper_gap, power))
    return rows


def mean_of_runs(runs: list[list[float]]) -> list[float]:
    """Each prompt's score averaged over a method's runs."""
    return [sum(column) / len(runs) for column in zip(*runs)]


def power_markdown(rows: list[PowerRow]) -> str:
    """The rows as a table, each at the power it was sized at; with none, a sentence saying why."""
    if not rows:
        return "*Nothing to size yet: these runs hold no pair of methods compared on the same test prompts.*\n"
    lines = ["| runs | difference | metric | prompts × seeds | per-prompt spread, seed means (one run) | "
             "seed-to-seed spread of each mean | ours | resolvable, ours | the paper's test prompts | resolvable "
             "there, one run each | the paper's gap |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = ("—", "—") if row.paper_prompts is None else (f"{row.paper_prompts:,}", f"±{row.paper_detectable:.4f}")
        gap = "— (none published)" if row.paper_gap is None else f"{row.paper_gap:+.4f}"
        lines.append(f"| {row.group} | {row.comparison} | {row.metric} | {row.prompts} × {row.seeds[0]}/{row.seeds[1]} "
                     f"| {row.spread:.4f} ({row.run_spread:.4f}) | {row.seed_spreads[0]:.4f} / {row.seed_spreads[1]:.4f} "
                     f"| {row.observed:+.4f} | ±{row.detectable:.4f} at {row.power:.0%} power | {paper[0]} | {paper[1]} "
                     f"| {gap} |")
    return "\n".join(lines)
