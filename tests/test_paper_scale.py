"""Claims about benchmarks/paper_scale.py, the paper's Memory/MB column at ChatGLM2-6B's scale, in miniature (toy
width, the same code): each method is measured at several depths, the 28-layer figure is the line through the two
deepest and is checked at the shallowest, the predictor stands beside it, a second run measures nothing twice, and
the paper's memory claims are judged on the rows as on the default model's runs."""
import importlib.util
import json
from pathlib import Path

import pytest

from adaq_lora.grid.claims import CONTRADICTED, REPRODUCED, paper_scale_checks

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_scale.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("paper_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_is_measured_at_three_depths_and_extrapolated_along_a_line_the_third_depth_confirms(tmp_path):
    benchmark, out = load_benchmark(), tmp_path / "paper_scale.json"
    args = ["--smoke", "--variants", "base", "qlora", "adaq_lora", "--depths", "1", "2", "3", "--timed", "1",
            "--out", str(out)]
    assert benchmark.main(args) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert len(report["measurements"]) == 3 * (1 + 2 + 2)  # the untrained model once: nothing to checkpoint
    rows = {(row["variant"], row["gradient_checkpointing"]): row for row in report["rows"]}
    assert set(rows) == {("base", False), ("qlora", False), ("qlora", True), ("adaq_lora", False), ("adaq_lora", True)}
    for row in rows.values():
        assert row["how"] == "extrapolated to 28 layers from depths 2 and 3"  # linear: not marked approximate
        assert abs(row["linear_check"]["relative_error"]) < 0.01  # the shallowest depth lies on the line
        assert row["predicted_mib"] == pytest.approx(row["measured_mib"], rel=0.15)
        assert row["paper_mb"]["table_1"] > 0
    assert all(m["step_seconds"] > 0 for m in report["measurements"])  # at toy width too noisy to extrapolate
    assert rows["qlora", True]["measured_mib"] < rows["qlora", False]["measured_mib"]  # checkpointing saves
    assert rows["adaq_lora", True]["plan_seconds"] > 0 and rows["qlora", True]["plan_seconds"] is None
    before = out.read_text(encoding="utf-8")
    assert benchmark.main(args) == 0  # resumed: every (variant, depth) is there, nothing is measured again
    assert json.loads(out.read_text(encoding="utf-8"))["measurements"] == json.loads(before)["measurements"]


def test_the_paper_s_memory_claims_are_judged_on_the_full_depth_rows_with_the_same_margins():
    rows = [{"variant": variant, "method": method, "gradient_checkpointing": True, "measured_mib": mib}
            for variant, method, mib in [("lora", "lora", 15000.0), ("qlora", "qlora", 4500.0),
                                         ("adaq_lora", "adaq_lora", 3500.0), ("adaq_lora, 3.5 bits", "adaq_lora", 2900.0)]]
    checks = {check.claim: check for check in paper_scale_checks(rows)}
    assert len(checks) == 4  # two tables × (against LoRA, against QLoRA)
    assert checks["an 80% reduction in memory usage compared to LoRA"].verdict == REPRODUCED  # 0.23× ≤ 0.25×
    assert checks["compared to the QLoRA method, ADAQ-LoRA reduces memory by 30%"].verdict == CONTRADICTED  # 0.78× > 0.75×
    assert "3500 MB vs 4500 MB: 0.78×" in checks["compared to the QLoRA method, ADAQ-LoRA reduces memory by 30%"].evidence
    three_and_a_half = paper_scale_checks(rows, "adaq_lora, 3.5 bits")
    assert all("adaq_lora, 3.5 bits" in check.group for check in three_and_a_half)
    assert paper_scale_checks(rows, checkpointing=False) == []  # no row of that setting: nothing judged


def test_a_row_whose_shallowest_depth_is_off_the_line_through_the_others_is_marked_approximate():
    benchmark = load_benchmark()
    measured = [{"variant": "qlora", "method": "qlora", "depth": depth, "gradient_checkpointing": True,
                 "measured_mib": mib, "breakdown": {"total_mb": mib}, "step_seconds": float(depth),
                 "prepare_seconds": 1.0, "plan_seconds": None} for depth, mib in ((1, 100.0), (2, 300.0), (3, 400.0))]
    row = benchmark.full_depth_row(benchmark.GLM2, measured)
    assert row["measured_mib"] == 400.0 + 25 * 100.0 and row["step_seconds"] == 28.0  # the line through 2 and 3
    assert row["linear_check"]["relative_error"] == pytest.approx(1.0)  # the line says 200 at depth 1: twice 100
    assert "not linear: depth 1 is +100% off the line" in row["how"] and "approximate" in row["how"]
