"""Claims about the verdicts of chapter 8: a claim reproduces only when the whole interval of the paired difference
is on its side, fails when the whole interval is on the other, and a tie settles only "at least as well"."""
import json

import pytest

from adaq_lora.grid.claims import (CONSISTENT, FAILS, REPRODUCES, UNRESOLVED, check_claims, claims_markdown,
                              score_verdict)


def write_run(folder, method, per_example_avg, memory_mb, dataset="school_math"):
    run_dir = folder / dataset / method
    run_dir.mkdir(parents=True)
    rows = [{"prompt": f"q{i}", "reference": "r", "prediction": "p", "scores": {"avg": avg}}
            for i, avg in enumerate(per_example_avg)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"dataset": dataset, "method": method, "avg": sum(per_example_avg) / len(per_example_avg),
            "memory_mb": memory_mb, "path": str(run_dir / "result.json")}


def test_an_interval_on_one_side_decides_and_only_at_least_as_well_is_settled_by_a_tie():
    assert score_verdict(0.01, 0.2, tie_is_enough=False) == REPRODUCES
    assert score_verdict(-0.2, -0.01, tie_is_enough=True) == FAILS
    assert score_verdict(-0.05, 0.05, tie_is_enough=False) == UNRESOLVED
    assert score_verdict(-0.05, 0.05, tie_is_enough=True) == CONSISTENT


def test_the_claims_are_judged_from_the_runs_per_example_scores_and_measured_memory(tmp_path):
    adaq = [0.5, 0.6, 0.4, 0.5] * 10
    results = [
        write_run(tmp_path, "adaq_lora", adaq, 200.0),
        write_run(tmp_path, "base", [a - 0.3 for a in adaq], 300.0),  # every example lower: reproduces
        write_run(tmp_path, "lora", [a + 0.2 for a in adaq], 150.0),  # every example higher: fails
        write_run(tmp_path, "qlora", [a + (0.1 if i % 2 else -0.1) for i, a in enumerate(adaq)], 250.0),  # a tie
    ]
    checks = {check.claim: check for check in check_claims(results)}
    assert checks["ADAQ-LoRA scores above the untrained model"].verdict == REPRODUCES
    assert checks["ADAQ-LoRA scores above LoRA"].verdict == FAILS
    assert checks["ADAQ-LoRA scores at least as well as QLoRA"].verdict == CONSISTENT
    assert checks["ADAQ-LoRA needs less memory than QLoRA"].verdict == REPRODUCES
    assert checks["ADAQ-LoRA needs less memory than LoRA"].verdict == FAILS
    assert "(0.80×)" in checks["ADAQ-LoRA needs less memory than QLoRA"].evidence
    assert "Avg 0.5000 vs 0.2000" in checks["ADAQ-LoRA scores above the untrained model"].evidence
    table = claims_markdown(list(checks.values()))
    assert table.count("\n") == 6 and "| school_math | ADAQ-LoRA scores above LoRA |" in table


def test_a_claim_is_judged_only_where_both_of_its_runs_exist(tmp_path):
    results = [write_run(tmp_path, method, [0.5] * 4, 100.0) for method in ("adaq_lora", "qlora")]
    results.append(write_run(tmp_path, "lora", [0.5] * 4, 100.0, dataset="alpaca_zh"))
    checks = check_claims(results)
    assert [(c.dataset, c.claim) for c in checks] == [
        ("school_math", "ADAQ-LoRA scores at least as well as QLoRA"),
        ("school_math", "ADAQ-LoRA needs less memory than QLoRA")]


def test_a_run_without_predictions_is_named(tmp_path):
    results = [write_run(tmp_path, method, [0.5] * 4, 100.0) for method in ("adaq_lora", "qlora", "lora", "base")]
    (tmp_path / "school_math" / "base" / "predictions.jsonl").unlink()
    with pytest.raises(ValueError, match=r"base.predictions\.jsonl is missing"):
        check_claims(results)
