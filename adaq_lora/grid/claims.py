"""Which of the paper's claims of Sec. 3 reproduce on a set of runs (chapter 8).

The claims are the paper's own sentences on Tables 1 and 2 (`PAPER_CLAIMS`): on each data set ADAQ-LoRA improves
on the untrained model, on LoRA and on QLoRA, with memory reduced by a stated margin (Alpaca_Chinese: 80% against
LoRA, 5% against QLoRA; School_math: 75% and 30%). Our runs are grouped by model, profile and data set, so runs of
another model or profile never answer for each other.

- A score claim is tested on the Avg the tables report and, where the runs have it, on answer accuracy, by a
  two-level bootstrap (`metrics.seed_and_prompt_bootstrap`): each resample draws the test prompts, paired between
  the two methods, and within each method its training runs (seeds), so the interval covers both what another test
  set and what another training run would change. The untrained model is run once (its greedy answers do not depend
  on the seed). The runs must hold the same prompts with the same references (`paired.seed_runs`), or the comparison
  is refused. REPRODUCED when the whole 95% interval of the difference lies above zero, CONTRADICTED when it lies
  below, NOT RESOLVED otherwise: a null result is not read as agreement. Where neither method answers a single
  prompt correctly in any run, accuracy cannot tell them apart at this size: NOT MEASURABLE, not a verdict. Each
  check keeps its bootstrap p-value, for `paired.holm_adjusted` over the whole family.
- A memory claim is judged against its margin, read as the round figure it is: "80%" to the nearest ten (a saving
  of 75% or more), "75%" to the nearest one (74.5% or more; `least_saving`). So read, the paper's own Memory/MB
  columns bear out all four of its margins (Table 1's 8,446 MB against 40,132 MB is a 79% saving). REPRODUCED when
  our measured peaks are at least that much apart, CONTRADICTED otherwise (a smaller saving than claimed does not
  support the claim). The evidence shows the paper's own ratio beside ours.
- `check_ablations` judges the halves of our ADAQ-LoRA apart, the same way: the precision plan alone (`adaq_lora`
  against `adaq_lora_nf4`, which stores the base as QLoRA does), the SVD adapters with the rank budget alone
  (`adaq_lora_nf4` against `qlora`), and today's defaults against the first ones (the recorded rows of
  `tables.RENAMED_ROWS`). These are our questions, not the paper's claims, so their words are HELPS, HURTS or NO
  DIFFERENCE RESOLVED.

The verdicts are computed; nothing here is typed but the paper's sentences and margins.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..paper import published_memory_mb
from ..scoring.metrics import seed_and_prompt_bootstrap
from .paired import caching_reader, seed_runs
from .tables import table_for

REPRODUCED, CONTRADICTED, NOT_RESOLVED = "REPRODUCED", "CONTRADICTED", "NOT RESOLVED"  # the paper's claims
HELPS, HURTS, NO_DIFFERENCE = "HELPS", "HURTS", "NO DIFFERENCE RESOLVED"  # our ablations
NOT_MEASURABLE = "NOT MEASURABLE"  # neither method ever answers right: accuracy cannot compare them
CLAIM_WORDS, ABLATION_WORDS = (REPRODUCED, CONTRADICTED, NOT_RESOLVED), (HELPS, HURTS, NO_DIFFERENCE)
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
    ("today's defaults: ADAQ-LoRA against its first (Gaussian start, 6-bit plan)", "adaq_lora", "adaq_lora_gaussian_start"),
    ("today's start on QLoRA's storage: against the Gaussian start", "adaq_lora_nf4", "adaq_lora_nf4_gaussian_start"),
)
SCORED = {"avg": "Avg", "accuracy": "accuracy"}  # what a score claim is judged on, where the runs have it


@dataclass(frozen=True)
class ClaimCheck:
    group: str  # the runs compared: model, profile and data set
    claim: str  # the paper's words
    evidence: str  # what our runs show: the two values and the difference's interval, or the memory ratio
    verdict: str  # CLAIM_WORDS for the paper's claims, ABLATION_WORDS for ours, or NOT_MEASURABLE
    p_value: float | None = None  # the score comparison's two-sided bootstrap p-value; None for memory
    other: str = ""  # the method compared with
    metric: str = ""  # "avg", "accuracy" or "memory"
    difference: float | None = None  # ours − theirs in the metric (scores); None for memory and NOT_MEASURABLE
    interval: tuple[float, float] | None = None  # the difference's 95% interval (scores)
    ratio: float | None = None  # our peak over theirs (memory)


def score_verdict(low: float, high: float, words: tuple[str, str, str] = CLAIM_WORDS) -> str:
    """words[0] when the interval lies above zero, words[1] below, words[2] across it."""
    return words[0] if low > 0 else words[1] if high < 0 else words[2]


def group_runs(results: list[dict]) -> dict[tuple[str, str, str], dict[str, list[dict]]]:
    """(model, profile, data set) → method → its runs, one per seed."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for result in results:
        key = (Path(result["model"]).name, result["profile"], result["dataset"])
        groups.setdefault(key, {}).setdefault(result["method"], []).append(result)
    return dict(sorted(groups.items()))


def score_checks(group: str, claim: str, ours: list[dict], theirs: list[dict], other: str, read,
                 words: tuple[str, str, str] = CLAIM_WORDS) -> list[ClaimCheck]:
    """One two-level bootstrap of `ours` against `theirs` per metric of `SCORED` that both have."""
    checks = []
    for metric, label in SCORED.items():
        runs = seed_runs(ours, theirs, metric, read)
        if runs is None:
            continue
        means = [sum(map(sum, side)) / sum(map(len, side)) for side in runs]
        if metric == "accuracy" and means == [0.0, 0.0]:
            checks.append(ClaimCheck(group, claim, f"accuracy 0 vs 0 ({other}): neither answers a prompt right in "
                                     f"any of {len(runs[0])} and {len(runs[1])} run(s)", NOT_MEASURABLE,
                                     other=other, metric=metric))
            continue
        comparison = seed_and_prompt_bootstrap(*runs, metric=metric)
        low, high = comparison.interval
        checks.append(ClaimCheck(group, claim, f"{label} {means[0]:.4f} vs {means[1]:.4f} ({other}), difference 95% "
                                 f"CI [{low:+.4f}, {high:+.4f}] over {len(runs[0][0])} test prompts and "
                                 f"{len(runs[0])} vs {len(runs[1])} seed(s), p = {comparison.p_value:.3f}",
                                 score_verdict(low, high, words), comparison.p_value, other, metric,
                                 means[0] - means[1], (low, high)))
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
                checks += score_checks(f"{model}, {profile}, {dataset}", question, runs[ours], runs[other], other, read,
                                       ABLATION_WORDS)
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
                      REPRODUCED if ratio <= allowed else CONTRADICTED, other=theirs[0]["method"], metric="memory",
                      ratio=ratio)


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
