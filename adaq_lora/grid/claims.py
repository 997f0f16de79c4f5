"""Which of the paper's claims of Sec. 3 reproduce on a set of runs (chapter 8).

The claims are the paper's own sentences on Tables 1 and 2 (`PAPER_CLAIMS`): on each data set ADAQ-LoRA improves
on the untrained model, on LoRA and on QLoRA, with memory reduced by a stated margin (Alpaca_Chinese: 80% against
LoRA, 5% against QLoRA; School_math: 75% and 30%). Our runs are grouped by model, profile and data set, so runs of
another model or profile never answer for each other.

- A score claim is tested by a paired bootstrap over the test prompts (`metrics.paired_bootstrap`), on the Avg the
  tables report and, where the runs have it, on answer accuracy. Seeds are judged together: each prompt's score is
  its mean over the seeds both methods ran, so the test prompts, not the prompt-seed pairs, are what is resampled.
  The untrained model is run once: its greedy answers are the same for every seed, so it pairs with each of them.
  The pairs must be the same prompts with the same references in every run, or the comparison is refused.
  REPRODUCED when the whole 95% interval of the difference lies above zero, CONTRADICTED when it lies below, NOT
  RESOLVED otherwise: a null result is not read as agreement.
- A memory claim is judged against its margin, read as the round figure it is: "80%" to the nearest ten (a saving
  of 75% or more), "75%" to the nearest one (74.5% or more; `least_saving`). So read, the paper's own Memory/MB
  columns bear out all four of its margins (Table 1's 8,446 MB against 40,132 MB is a 79% saving). REPRODUCED when
  our measured peaks are at least that much apart, CONTRADICTED otherwise (a smaller saving than claimed does not
  support the claim). The evidence shows the paper's own ratio beside ours.
- `check_ablations` judges the two halves of our ADAQ-LoRA apart, the same way: the precision plan alone
  (`adaq_lora` against `adaq_lora_nf4`, which stores the base as QLoRA does) and the SVD adapters with the rank
  budget alone (`adaq_lora_nf4` against `qlora`). These are our questions, not the paper's claims.

The verdicts are computed; nothing here is typed but the paper's sentences and margins.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import json_lines_rows
from ..paper import published_memory_mb
from ..scoring.metrics import paired_bootstrap
from ..tuners.registry import method_spec
from .experiment import PREDICTIONS_FILE
from .tables import table_for

REPRODUCED, CONTRADICTED, NOT_RESOLVED = "REPRODUCED", "CONTRADICTED", "NOT RESOLVED"
PAPER_CLAIMS = {  # table → (the paper's words, the method compared, the memory saving claimed in % or None for scores)
    1: (("ROUGE indicator on the Alpaca_Chinese dataset improved ... compared to the original model", "base", None),
        ("a 4% improvement in ROUGE metrics [compared to LoRA]", "lora", None),
        ("an 80% reduction in memory usage compared to LoRA", "lora", 80),
        ("compared to the QLoRA method ... some improvement in the ROUGE metric", "qlora", None),
        ("[compared to QLoRA] with 5% less memory", "qlora", 5)),
    2: (("significantly improves the language generation ability of the original model", "base", None),
        ("compared with LoRA method, ADAQ-LoRA ... improves the language generation ability", "lora", None),
        ("compared with LoRA method, ADAQ-LoRA reduces the memory by 75%", "lora", 75),
        ("compared to the QLoRA method ... improves ROUGE performance metrics", "qlora", None),
        ("compared to the QLoRA method, ADAQ-LoRA reduces memory by 30%", "qlora", 30)),
}
ABLATIONS = (  # our questions: (what is judged, the run with it, the run without it)
    ("the precision plan alone: ADAQ-LoRA against ADAQ-LoRA with QLoRA's storage", "adaq_lora", "adaq_lora_nf4"),
    ("the SVD adapters and rank budget alone: ADAQ-LoRA with QLoRA's storage against QLoRA", "adaq_lora_nf4", "qlora"),
)
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


def seed_pairs(ours: list[dict], theirs: list[dict], metric: str,
               read=recorded_rows) -> list[tuple[list[float], list[float]]] | None:
    """Per-prompt `metric` of two methods, one (ours, theirs) pair of lists per seed both ran; None where they share
    no seed or a run lacks the metric. A method that trains nothing (the untrained model), run once, pairs with
    every seed: its greedy answers do not depend on the seed.

    `read` gives a run's prediction rows (`recorded_rows`, or a caching wrapper of it)."""
    seedless = len(theirs) == 1 and not method_spec(theirs[0]["method"]).trains
    by_seed = {r["seed"]: r for r in theirs}
    pairs, first, asked = [], None, None
    for run in sorted(ours, key=lambda r: r["seed"]):
        other = theirs[0] if seedless else by_seed.get(run["seed"])
        if other is None:
            continue
        rows_a, rows_b = read(run), read(other)
        if first is None:
            first, asked = run, _prompts(rows_a)
        for compared, rows in ((run, rows_a), (other, rows_b)):
            if _prompts(rows) != asked:
                raise ValueError(f"{compared['path']} and {first['path']} do not hold the same test prompts and "
                                 "references: they cannot be paired; rerun one of them")
        if any(metric not in r["scores"] for r in rows_a + rows_b):
            return None
        pairs.append(([r["scores"][metric] for r in rows_a], [r["scores"][metric] for r in rows_b]))
    return pairs or None


def paired_scores(ours: list[dict], theirs: list[dict], metric: str,
                  read=recorded_rows) -> tuple[list[float], list[float], int] | None:
    """Per-prompt `metric` of two methods, each the mean over the seeds both ran (`seed_pairs`), and that number of
    seeds; None where `seed_pairs` finds none."""
    pairs = seed_pairs(ours, theirs, metric, read)
    if pairs is None:
        return None
    ours_mean, theirs_mean = ([sum(scores) / len(pairs) for scores in zip(*(pair[side] for pair in pairs))]
                              for side in (0, 1))
    return ours_mean, theirs_mean, len(pairs)


def _prompts(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["prompt"], r["reference"]) for r in rows]


def score_verdict(low: float, high: float) -> str:
    return REPRODUCED if low > 0 else CONTRADICTED if high < 0 else NOT_RESOLVED


def group_runs(results: list[dict]) -> dict[tuple[str, str, str], dict[str, list[dict]]]:
    """(model, profile, data set) → method → its runs, one per seed."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for result in results:
        key = (Path(result["model"]).name, result["profile"], result["dataset"])
        groups.setdefault(key, {}).setdefault(result["method"], []).append(result)
    return dict(sorted(groups.items()))


def caching_reader():
    """`recorded_rows`, reading each predictions.jsonl once however many comparisons pair it."""
    rows: dict[str, list[dict]] = {}

    def read(run: dict) -> list[dict]:
        if run["path"] not in rows:
            rows[run["path"]] = recorded_rows(run)
        return rows[run["path"]]

    return read


def score_checks(group: str, claim: str, ours: list[dict], theirs: list[dict], other: str, read) -> list[ClaimCheck]:
    """One paired test of `ours` against `theirs` per metric of `SCORED` that both have."""
    checks = []
    for metric, label in SCORED.items():
        pairs = paired_scores(ours, theirs, metric, read)
        if pairs is None:
            continue
        a, b, seeds = pairs
        low, high = paired_bootstrap({metric: a}, {metric: b}, metric=metric).interval
        checks.append(ClaimCheck(group, claim, f"{label} {sum(a) / len(a):.4f} vs {sum(b) / len(b):.4f} ({other}), "
                                 f"difference 95% CI [{low:+.4f}, {high:+.4f}] over {len(a)} test prompts, "
                                 f"each the mean of {seeds} seed(s)", score_verdict(low, high)))
    return checks


def check_claims(results: list[dict]) -> list[ClaimCheck]:
    """Every claim of the paper on every group of runs that holds ADAQ-LoRA and the method it is compared with."""
    read, checks = caching_reader(), []
    for (model, profile, dataset), runs in group_runs(results).items():
        table = table_for(dataset)
        if table is None or "adaq_lora" not in runs:
            continue
        group = f"{model}, {profile}, {dataset}"
        for claim, other, saving in PAPER_CLAIMS[table.number]:
            if other not in runs:
                continue
            if saving is not None:
                checks.append(memory_check(group, claim, runs["adaq_lora"], runs[other], saving, table.number))
            else:
                checks += score_checks(group, claim, runs["adaq_lora"], runs[other], other, read)
    return checks


def check_ablations(results: list[dict]) -> list[ClaimCheck]:
    """The precision plan and the SVD adapters with their budget, each judged alone (`ABLATIONS`), where run."""
    read, checks = caching_reader(), []
    for (model, profile, dataset), runs in group_runs(results).items():
        for question, ours, other in ABLATIONS:
            if ours in runs and other in runs:
                checks += score_checks(f"{model}, {profile}, {dataset}", question, runs[ours], runs[other], other, read)
    return checks


def least_saving(percent: int) -> float:
    """The smallest saving, as a fraction, that a stated round `percent` stands for, read to its last significant
    digit: 80 → 0.75 (to the nearest ten), 30 → 0.25, 75 → 0.745, 5 → 0.045."""
    if not 0 < percent < 100:
        raise ValueError(f"a claimed memory saving lies between 0 and 100 percent, got {percent}")
    unit = 1
    while percent % (unit * 10) == 0:
        unit *= 10
    return (percent - unit / 2) / 100


def memory_check(group: str, claim: str, ours: list[dict], theirs: list[dict], saving: int,
                 table: int) -> ClaimCheck:
    """Our mean measured peak over the other's, against the `saving` (%) the paper claims (`least_saving`), with the
    paper's own ratio in Table `table` beside it."""
    paper_ratio = published_memory_mb(table, "adaq_lora") / published_memory_mb(table, theirs[0]["method"])
    ours_mb = sum(r["memory_mb"] for r in ours) / len(ours)
    theirs_mb = sum(r["memory_mb"] for r in theirs) / len(theirs)
    ratio, allowed = ours_mb / theirs_mb, 1 - least_saving(saving)
    return ClaimCheck(group, claim, f"{ours_mb:.0f} MB vs {theirs_mb:.0f} MB: {ratio:.2f}× (claimed {saving}% less, "
                      f"read as ≤ {allowed:.3f}×; the paper's own tables: {paper_ratio:.2f}×)",
                      REPRODUCED if ratio <= allowed else CONTRADICTED)


def paper_scale_checks(rows: list[dict], adaq_variant: str = "adaq_lora", checkpointing: bool = True) -> list[ClaimCheck]:
    """The paper's memory claims on ChatGLM2-6B's own architecture: `rows` are benchmarks/paper_scale.py's 28-layer
    rows (variant, method, gradient_checkpointing, measured_mib), `adaq_variant` the row that stands for ADAQ-LoRA;
    each claim judged by `memory_check`, in the same words and margins as the runs of the default model."""
    peaks = {row["variant"]: {"method": row["method"], "memory_mb": row["measured_mib"]}
             for row in rows if row["gradient_checkpointing"] == checkpointing}
    group = (f"ChatGLM2-6B's architecture, {adaq_variant}, 512 tokens, checkpointing "
             f"{'on' if checkpointing else 'off'} (CPU, measured)")
    return [memory_check(group, claim, [peaks[adaq_variant]], [peaks[other]], saving, table)
            for table, claims in PAPER_CLAIMS.items() for claim, other, saving in claims
            if saving is not None and adaq_variant in peaks and other in peaks]


def claims_markdown(checks: list[ClaimCheck], heading: str = "claim (the paper's words, Sec. 3)") -> str:
    """The checks as a table; with none, a sentence saying why, not a table of headers alone."""
    if not checks:
        return "*Nothing to judge yet: these runs hold no pair of methods that a claim compares on one data set.*\n"
    lines = [f"| runs | {heading} | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.group} | {c.claim} | {c.evidence} | {c.verdict} |" for c in checks]
    return "\n".join(lines)
