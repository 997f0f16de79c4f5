"""Which of the paper's claims of Sec. 3 reproduce on a set of runs (chapter 8).

The claims are the paper's own sentences on Tables 1 and 2 (`PAPER_CLAIMS`): on each data set ADAQ-LoRA improves
on the untrained model, on LoRA and on QLoRA, with memory reduced by a stated margin (Alpaca_Chinese: 80% against
LoRA, 5% against QLoRA; School_math: 75% and 30%). Our runs are grouped by model, profile and data set, so runs of
another model or profile never answer for each other, and the seeds of a group are pooled.

- A score claim is tested by a paired bootstrap over the same test examples (`metrics.paired_bootstrap`), on the
  Avg the tables report and, where the runs have it, on answer accuracy. The pairs must be the same prompts with the
  same references, seed by seed, or the comparison is refused. REPRODUCED when the whole 95% interval of the
  difference lies above zero, CONTRADICTED when it lies below, NOT RESOLVED otherwise: a null result is not read
  as agreement.
- A memory claim is judged against its margin: REPRODUCED when our measured peaks are at least that much apart,
  CONTRADICTED otherwise (a smaller saving than claimed does not support the claim).

The verdicts are computed; nothing here is typed but the paper's sentences and margins.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import json_lines_rows
from ..scoring.metrics import paired_bootstrap
from .experiment import PREDICTIONS_FILE
from .tables import table_for

REPRODUCED, CONTRADICTED, NOT_RESOLVED = "REPRODUCED", "CONTRADICTED", "NOT RESOLVED"
PAPER_CLAIMS = {  # table → (the paper's words, the method compared, the memory ratio claimed or None for scores)
    1: (("ROUGE indicator on the Alpaca_Chinese dataset improved ... compared to the original model", "base", None),
        ("a 4% improvement in ROUGE metrics [compared to LoRA]", "lora", None),
        ("an 80% reduction in memory usage compared to LoRA", "lora", 0.20),
        ("compared to the QLoRA method ... some improvement in the ROUGE metric", "qlora", None),
        ("[compared to QLoRA] with 5% less memory", "qlora", 0.95)),
    2: (("significantly improves the language generation ability of the original model", "base", None),
        ("compared with LoRA method, ADAQ-LoRA ... improves the language generation ability", "lora", None),
        ("compared with LoRA method, ADAQ-LoRA reduces the memory by 75%", "lora", 0.25),
        ("compared to the QLoRA method ... improves ROUGE performance metrics", "qlora", None),
        ("compared to the QLoRA method, ADAQ-LoRA reduces memory by 30%", "qlora", 0.70)),
}
SCORED = {"avg": "Avg", "accuracy": "accuracy"}  # what a score claim is judged on, where the runs have it


@dataclass(frozen=True)
class ClaimCheck:
    group: str  # the runs compared: model, profile and data set
    claim: str  # the paper's words
    evidence: str  # what our runs show: the two values and the difference's interval, or the memory ratio
    verdict: str  # REPRODUCED, CONTRADICTED or NOT RESOLVED


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


def paired_scores(ours: list[dict], theirs: list[dict], metric: str,
                  read=recorded_rows) -> tuple[list[float], list[float]] | None:
    """Per-example `metric` of two methods' runs, seed by seed, pooled; None where a run lacks the metric.

    `read` gives a run's prediction rows (`recorded_rows`, or a caching wrapper of it)."""
    by_seed = {r["seed"]: r for r in theirs}
    a, b = [], []
    for run in sorted(ours, key=lambda r: r["seed"]):
        if run["seed"] not in by_seed:
            continue
        rows_a, rows_b = read(run), read(by_seed[run["seed"]])
        if [(r["prompt"], r["reference"]) for r in rows_a] != [(r["prompt"], r["reference"]) for r in rows_b]:
            raise ValueError(f"{run['path']} and {by_seed[run['seed']]['path']} do not hold the same test prompts "
                             "and references: they cannot be paired; rerun one of them")
        if any(metric not in r["scores"] for r in rows_a + rows_b):
            return None
        a += [r["scores"][metric] for r in rows_a]
        b += [r["scores"][metric] for r in rows_b]
    return (a, b) if a else None


def score_verdict(low: float, high: float) -> str:
    return REPRODUCED if low > 0 else CONTRADICTED if high < 0 else NOT_RESOLVED


def check_claims(results: list[dict]) -> list[ClaimCheck]:
    """Every claim of the paper on every group of runs that holds ADAQ-LoRA and the method it is compared with."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for result in results:
        key = (Path(result["model"]).name, result["profile"], result["dataset"])
        groups.setdefault(key, {}).setdefault(result["method"], []).append(result)
    read_rows: dict[str, list[dict]] = {}  # each predictions.jsonl read once, however many claims pair it

    def read(run: dict) -> list[dict]:
        if run["path"] not in read_rows:
            read_rows[run["path"]] = recorded_rows(run)
        return read_rows[run["path"]]

    checks = []
    for (model, profile, dataset), runs in sorted(groups.items()):
        table = table_for(dataset)
        if table is None or "adaq_lora" not in runs:
            continue
        group = f"{model}, {profile}, {dataset}"
        for claim, other, memory_ratio in PAPER_CLAIMS[table.number]:
            if other not in runs:
                continue
            if memory_ratio is not None:
                checks.append(memory_check(group, claim, runs["adaq_lora"], runs[other], memory_ratio))
                continue
            for metric, label in SCORED.items():
                pairs = paired_scores(runs["adaq_lora"], runs[other], metric, read)
                if pairs is None:
                    continue
                test = paired_bootstrap({metric: pairs[0]}, {metric: pairs[1]}, metric=metric)
                low, high = test.interval
                mean_a, mean_b = sum(pairs[0]) / len(pairs[0]), sum(pairs[1]) / len(pairs[1])
                seeds = len({r["seed"] for r in runs["adaq_lora"]} & {r["seed"] for r in runs[other]})
                checks.append(ClaimCheck(group, claim, f"{label} {mean_a:.4f} vs {mean_b:.4f} ({other}), difference "
                                         f"95% CI [{low:+.4f}, {high:+.4f}] over {len(pairs[0])} pairs, "
                                         f"{seeds} seed(s)", score_verdict(low, high)))
    return checks


def memory_check(group: str, claim: str, ours: list[dict], theirs: list[dict], claimed_ratio: float) -> ClaimCheck:
    """Our mean measured peak over the other's, against the ratio the paper claims."""
    ours_mb = sum(r["memory_mb"] for r in ours) / len(ours)
    theirs_mb = sum(r["memory_mb"] for r in theirs) / len(theirs)
    ratio = ours_mb / theirs_mb
    return ClaimCheck(group, claim, f"{ours_mb:.0f} MB vs {theirs_mb:.0f} MB: {ratio:.2f}× (claimed ≤ "
                      f"{claimed_ratio:.2f}×)", REPRODUCED if ratio <= claimed_ratio else CONTRADICTED)


def claims_markdown(checks: list[ClaimCheck]) -> str:
    lines = ["| runs | claim (the paper's words, Sec. 3) | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.group} | {c.claim} | {c.evidence} | {c.verdict} |" for c in checks]
    return "\n".join(lines)
