"""Claims about one cell of the grid: a short real run writes a complete, typed result, predictions and PEFT
adapters; a crash leaves no result that looks complete; a complete result is reused unless forced; a folder of
another run is refused; profiles scale the budget schedule with the run and read overrides as their types."""
import json
import math

import pytest
import torch
from peft import PeftModel

from adaq_lora.grid import cell_start, experiment
from adaq_lora.grid.experiment import RESULT_KEYS, load_result, plan_experiment, run_experiment
from adaq_lora.scoring.metrics import METRIC_NAMES
from adaq_lora.models import load_model
from adaq_lora.quant.precision import PrecisionPlan
from adaq_lora.profiles import cpu_description, load_profile
from conftest import make_tiny_llama

RECORDS = [{"instruction": f"计算 {a} 加 {b}", "input": "", "output": f"{a}+{b}={a + b}。答：{a + b}。"}
           for a, b in [(3, 4), (12, 30), (7, 8), (21, 5), (9, 9), (40, 2), (6, 1), (13, 13), (2, 50), (8, 19)]]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A real checkpoint on disk: a tiny random Llama with the default model's tokenizer, loaded by load_model."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in RECORDS), encoding="utf-8")
    return str(path)


@pytest.fixture
def overrides(tiny_model_dir):
    """Two training steps and two test answers of four tokens on the tiny model."""
    return dict(model=str(tiny_model_dir), train_size=2, test_size=2, max_length=48, max_new_tokens=4,
                eval_batch_size=2, r=4, init_r=4, target_r=2, bootstrap_resamples=50, checkpoint_every=1)


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.mark.parametrize("method", ["base", "lora", "qlora", "adaq_lora"])
def test_a_two_step_run_writes_every_result_key_typed_with_predictions_and_adapters(method, dataset, overrides,
                                                                                    tmp_path):
    result = run_experiment(method, dataset, "ci", out_dir=tmp_path, seed=3, overrides=overrides, progress=False)
    saved = strict_json(tmp_path / "result.json")
    assert saved == result and set(RESULT_KEYS) <= set(saved)
    assert (saved["method"], saved["dataset"], saved["profile"], saved["seed"]) == (method, dataset, "ci", 3)
    assert saved["model"] == overrides["model"] and saved["settings"]["train_size"] == 2
    assert (saved["n_train"], saved["n_test"]) == (2, 2)
    for name in METRIC_NAMES:
        low, high = saved["intervals"][name]
        assert 0 <= low <= saved[name] <= high <= 1
    assert set(saved["versions"]) == {"torch", "transformers", "peft", "bitsandbytes", "adaq-lora"}
    assert all(isinstance(version, str) for version in saved["versions"].values())
    assert saved["cpu"] == cpu_description() and "bfloat16 units" in saved["cpu"]  # whose speed the seconds are
    assert saved["float32_products"] is False  # the ci profile computes in float32: nothing to route
    assert saved["memory_mb"] > 0 and saved["memory_breakdown"] and saved["memory_measured"]
    assert saved["eval_seconds"] > 0 and saved["wall_seconds"] >= saved["eval_seconds"]
    lines = (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert set(json.loads(lines[0])) == {"prompt", "reference", "prediction", "scores"}
    assert not (tmp_path / "checkpoint").exists()  # removed once the result is complete
    if method == "base":
        assert saved["total_steps"] == 0 and saved["losses"] == [] and saved["trainable_parameters"] == 0
        assert saved["train_seconds"] is None and saved["rank_pattern"] is None
        assert not (tmp_path / "adapters").exists()
        return
    assert saved["total_steps"] == 2 and len(saved["losses"]) == len(saved["budgets"]) == 2
    assert all(math.isfinite(loss) for loss in saved["losses"])
    assert saved["train_seconds"] > 0 and saved["median_step_seconds"] > 0 and saved["tokens_per_second"] > 0
    assert saved["trainable_parameters"] > 0
    if method == "adaq_lora":
        assert all(isinstance(budget, int) for budget in saved["budgets"])
        assert set(saved["rank_pattern"].values()) <= {0, 1, 2, 3, 4}
        plan = PrecisionPlan.load(tmp_path / "adapters")  # the base's precision plan travels with the adapters
        assert plan.calibrated and plan.bits_per_parameter <= plan.budget_bits
    else:
        assert saved["budgets"] == [None, None] and saved["rank_pattern"] is None
    base, _ = load_model(overrides["model"])
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapters")
    assert peft_model.peft_config["default"].base_model_name_or_path == overrides["model"]


def test_a_crash_while_the_result_is_written_leaves_no_result_and_a_rerun_completes(dataset, overrides, tmp_path,
                                                                                    monkeypatch):
    real_dump = json.dump

    def dump_then_crash(data, file, **kwargs):
        if "finished_at" not in data:
            return real_dump(data, file, **kwargs)
        file.write('{"method": "lora", "rouge-1": 0.')
        raise RuntimeError("simulated crash while writing result.json")

    monkeypatch.setattr(json, "dump", dump_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment("lora", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "result.json").exists() and load_result(tmp_path) is None
    assert list(tmp_path.glob(".result.json.*")) == [], "the half-written temp file is removed, not left behind"
    result = run_experiment("lora", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False)
    assert load_result(tmp_path) == result and len(result["losses"]) == 2


def test_a_complete_result_is_returned_without_running_again_unless_forced(dataset, overrides, tmp_path, monkeypatch):
    first = run_experiment("base", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False)
    loads = []
    real_load = cell_start.load_cell_model
    monkeypatch.setattr(cell_start, "load_cell_model",
                        lambda exp, progress: loads.append(exp.method) or real_load(exp, progress))
    assert run_experiment("base", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False) == first
    assert loads == []
    forced = run_experiment("base", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False, force=True)
    assert loads == ["base"] and forced["avg"] == first["avg"]


def test_a_folder_holding_another_run_is_refused_with_the_difference_named(dataset, overrides, tmp_path):
    run_experiment("base", dataset, "ci", out_dir=tmp_path, overrides=overrides, progress=False)
    with pytest.raises(ValueError, match=r"holds another run \(seed: 0 there, 1 asked; .*max_new_tokens: 4 there, 5 asked"):
        run_experiment("base", dataset, "ci", out_dir=tmp_path, seed=1, overrides={**overrides, "max_new_tokens": 5},
                       progress=False)


def test_the_budget_schedule_scales_with_the_run_and_the_split_ignores_the_run_seed(dataset, overrides):
    settings = {**overrides, "train_size": 8, "epochs": 5, "t_init_fraction": 0.1, "t_final_fraction": 0.25}
    planned = plan_experiment("adaq_lora", dataset, "ci", seed=0, overrides=settings)
    config = planned.adaq_config()
    assert (config.total_steps, config.t_init, config.t_final) == (40, 4, 10)
    other_seed = plan_experiment("adaq_lora", dataset, "ci", seed=7, overrides=settings)
    assert other_seed.test_records == planned.test_records and len(planned.test_records) == 2


def test_command_line_texts_are_read_as_each_field_s_type():
    profile = load_profile("ci", {"train_size": "null", "epochs": "3", "gradient_checkpointing": "true",
                                  "datasets": "alpaca_zh, school_math", "model": "none", "lora_alpha": 32})
    assert profile.train_size is None and profile.epochs == 3.0 and profile.train.gradient_checkpointing is True
    assert profile.datasets == ("alpaca_zh", "school_math") and profile.model is None and profile.adapter.lora_alpha == 32.0
    with pytest.raises(ValueError, match=r"train_size='many': expected an integer or null"):
        load_profile("ci", {"train_size": "many"})
    with pytest.raises(ValueError, match=r"device='tpu' is not valid; valid: cpu, cuda"):
        load_profile("ci", {"device": "tpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_the_paper_profile_refuses_to_start_without_a_gpu(dataset):
    with pytest.raises(ValueError, match="profile 'paper' needs a CUDA GPU"):
        plan_experiment("adaq_lora", dataset, "paper")
