"""Which of the paper's claims of Sec. 3 reproduce on a set of runs (chapter 8).

The paper claims, on both data sets, that ADAQ-LoRA scores above the untrained model and above LoRA, at least as
well as QLoRA, and with less memory than either. A score claim is tested by a paired bootstrap of the Avg score over
the same test examples (`metrics.paired_bootstrap`): it *reproduces* when the whole 95% interval of the difference
lies above zero, *does not reproduce* when the whole interval lies below, and is *not resolved at this size*
otherwise; for "at least as well", an interval around zero is *consistent*: no difference either way was resolved.
A memory claim compares the measured peaks. The verdicts are computed; nothing here is typed but the claims' wording.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import json_lines_rows
from .experiment import PREDICTIONS_FILE
from ..scoring.metrics import paired_bootstrap

SCORE_CLAIMS = (  # (claim, the method ADAQ-LoRA is compared with, whether a tie is enough)
    ("ADAQ-LoRA scores above the untrained model", "base", False),
    ("ADAQ-LoRA scores above LoRA", "lora", False),
    ("ADAQ-LoRA scores at least as well as QLoRA", "qlora", True),
)
MEMORY_CLAIMS = (
    ("ADAQ-LoRA needs less memory than QLoRA", "qlora"),
    ("ADAQ-LoRA needs less memory than LoRA", "lora"),
)
REPRODUCES, FAILS, UNRESOLVED = "reproduces", "does not reproduce", "not resolved at this size"
CONSISTENT = "consistent: no difference resolved"


@dataclass(frozen=True)
class ClaimCheck:
    dataset: str  # the data set of the runs compared
    claim: str  # the paper's claim, in words
    evidence: str  # what our runs show: the two values and the difference's interval or the memory ratio
    verdict: str  # REPRODUCES, FAILS, UNRESOLVED or CONSISTENT


def recorded_scores(result: dict) -> dict[str, list[float]]:
    """The per-example scores in the predictions.jsonl beside a collected result.json (`tables.collect_results`)."""
    path = Path(result["path"]).parent / PREDICTIONS_FILE
    try:
        rows = [row for _, row in json_lines_rows(path.read_text(encoding="utf-8"), path)]
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the paired comparison needs each run's predictions; rerun that cell")
    if not rows:
        raise ValueError(f"{path} has no predictions; rerun that cell")
    return {name: [row["scores"][name] for row in rows] for name in rows[0]["scores"]}


def score_verdict(low: float, high: float, tie_is_enough: bool) -> str:
    """The verdict on "ADAQ-LoRA scores above (or, with `tie_is_enough`, at least as well as) the other"."""
    if low > 0:
        return REPRODUCES
    if high < 0:
        return FAILS
    return CONSISTENT if tie_is_enough else UNRESOLVED


def check_claims(results: list[dict]) -> list[ClaimCheck]:
    """Every claim on every data set whose runs hold ADAQ-LoRA and the row it is compared with."""
    by_dataset: dict[str, dict[str, dict]] = {}
    for result in results:
        by_dataset.setdefault(result["dataset"], {})[result["method"]] = result
    checks = []
    for dataset, runs in sorted(by_dataset.items()):
        if "adaq_lora" not in runs:
            continue
        adaq = runs["adaq_lora"]
        for claim, other_method, tie_is_enough in SCORE_CLAIMS:
            if other_method not in runs:
                continue
            other = runs[other_method]
            test = paired_bootstrap(recorded_scores(adaq), recorded_scores(other), metric="avg")
            low, high = test.interval
            checks.append(ClaimCheck(dataset, claim, f"Avg {adaq['avg']:.4f} vs {other['avg']:.4f}, difference 95% CI "
                                     f"[{low:+.4f}, {high:+.4f}]", score_verdict(low, high, tie_is_enough)))
        for claim, other_method in MEMORY_CLAIMS:
            if other_method not in runs:
                continue
            other_mb = runs[other_method]["memory_mb"]
            ratio = adaq["memory_mb"] / other_mb
            checks.append(ClaimCheck(dataset, claim, f"{adaq['memory_mb']:.0f} MB vs {other_mb:.0f} MB ({ratio:.2f}×)",
                                     REPRODUCES if ratio < 1 else FAILS))
    return checks


def claims_markdown(checks: list[ClaimCheck]) -> str:
    lines = ["| data set | claim (paper, Sec. 3) | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.dataset} | {c.claim} | {c.evidence} | {c.verdict} |" for c in checks]
    return "\n".join(lines)
