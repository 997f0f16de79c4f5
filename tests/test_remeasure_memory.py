"""Memory measured again (scripts/remeasure_memory.py): a recorded run's start is rebuilt from its own settings, its
memory replaced where the code now measures another number, and the first measurement kept beside it."""
import json

import pytest

from adaq_lora.grid.experiment import run_experiment
from conftest import load_script
from test_experiment import dataset, overrides, tiny_model_dir  # noqa: F401 (fixtures)


def test_a_setting_the_record_predates_takes_the_value_it_had_before_it_existed():
    remeasure = load_script("remeasure_memory")
    rebuilt = remeasure.recorded_overrides({"name": "cpu", "description": "…", "datasets": ["alpaca_zh"], "epochs": 2.0,
                                            "adapter": {"r": 8}, "train": {"batch_size": 1}})
    assert rebuilt == {"epochs": 2.0, "adapter.r": 8, "train.batch_size": 1, "adapter.precision_floor": "nf4",
                       "adapter.svd_init": "gaussian", "adapter.lambda_lr_ratio": 1.0}
    assert remeasure.recorded_overrides({"adapter": {"precision_floor": "nf2"}})["adapter.precision_floor"] == "nf2"


def test_a_stale_memory_is_measured_again_and_nothing_else_in_the_result_changes(dataset, overrides, tmp_path,
                                                                                  capsys):
    remeasure = load_script("remeasure_memory")
    run_dir = tmp_path / "sums" / "qlora" / "seed0"
    result = run_experiment("qlora", dataset, "ci", out_dir=run_dir, overrides=overrides, progress=False)
    stale = {**result, "memory_mb": result["memory_mb"] + 50.0}
    (run_dir / "result.json").write_text(json.dumps(stale), encoding="utf-8")
    assert remeasure.main([str(tmp_path)]) == 0
    again = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert again["memory_mb"] == pytest.approx(result["memory_mb"], abs=0.05)
    assert again["memory_as_recorded"]["memory_mb"] == stale["memory_mb"] and again["memory_remeasured"]["at"]
    unchanged = {key for key in result if not key.startswith("memory")}
    assert {key: again[key] for key in unchanged} == {key: result[key] for key in unchanged}
    capsys.readouterr()
    assert remeasure.main([str(tmp_path)]) == 0 and "as recorded" in capsys.readouterr().out
