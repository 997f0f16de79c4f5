"""The paper's setting in miniature, on every CI run: a ChatGLM2-format checkpoint (tests/chatglm2_snapshot.py)
through `adaq-lora run` for every method, with every setting of the `paper` profile — its conversion to GLM,
`quantize_on_load`, bfloat16 compute, gradient checkpointing, paged AdamW, checkpoints, rank compaction — changed
only in size and device; and the same checkpoint on the `ci` profile, where the base is quantized after loading."""
import json
import subprocess
import sys

import pytest
import torch

from adaq_lora.grid.cli import main
from adaq_lora.profiles import load_profile
from adaq_lora.tuners import method_names, method_spec

TRAIN_SIZE = 10  # steps at batch 1: t_init 1, t_final 2, so the final phase (and compaction) begins at step 8
MINIATURE = {"device": "cpu", "train_size": TRAIN_SIZE, "test_size": 2, "epochs": 1, "max_new_tokens": 4,
             "eval_batch_size": 2, "bootstrap_resamples": 20, "checkpoint_every": 4}
CI_SIZES = {"train_size": 6, "test_size": 2, "max_new_tokens": 4, "max_length": 256}  # the tiny vocabulary spells
# Chinese in bytes: up to 192 tokens an example


@pytest.fixture(autouse=True)
def conversion_cache(tmp_path_factory, monkeypatch):
    """One conversion of the checkpoint for the whole module, in a cache folder of its own."""
    monkeypatch.setenv("ADAQ_LORA_CACHE", str(tmp_path_factory.getbasetemp() / "paper-path-cache"))


def run(method: str, profile: str, settings: dict, model, out) -> dict:
    assignments = [arg for key, value in (settings | {"model": model}).items() for arg in ("--set", f"{key}={value}")]
    code = main(["run", "--method", method, "--dataset", "school_math", "--profile", profile, "--quiet",
                 "--out", str(out), *assignments])
    assert code == 0
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", method_names())
def test_the_paper_profile_in_miniature_runs_every_method(method, chatglm2_snapshot, tmp_path):
    result = run(method, "paper", MINIATURE, chatglm2_snapshot, tmp_path)
    paper, settings = load_profile("paper").to_dict(), result["settings"]
    changed = {key for key in settings if settings[key] != paper[key]}
    changed |= {f"{section}.{key}" for section in ("adapter", "train")
                for key in settings[section] if settings[section][key] != paper[section][key]}
    assert changed == {"model", "device", "train_size", "test_size", "epochs", "max_new_tokens", "eval_batch_size",
                       "bootstrap_resamples", "train", "train.checkpoint_every"}
    assert settings["quantize_on_load"] and settings["adapter"]["compute_dtype"] == "bfloat16"
    assert settings["train"]["gradient_checkpointing"] and settings["train"]["optimizer"] == "paged_adamw"
    assert settings["adapter"]["compact_ranks"]
    spec = method_spec(method)
    paper = load_profile("paper")
    if spec.trains:
        assert len(result["losses"]) == TRAIN_SIZE and all(torch.isfinite(torch.tensor(result["losses"])))
    if spec.quantized:
        assert result["memory_breakdown"]["quantized_weights_mb"] > 0
    if spec.svd and not spec.peer:  # compacted at the final phase to the target budget
        assert sum(result["rank_pattern"].values()) <= paper.adapter.target_r * len(result["rank_pattern"])
    assert not (tmp_path / "checkpoint").exists()  # the result is complete: nothing left to resume


def test_on_the_paper_path_the_precision_plan_decides_over_the_decoder(chatglm2_snapshot, tmp_path):
    run("adaq_lora", "paper", MINIATURE, chatglm2_snapshot, tmp_path)
    plan = json.loads((tmp_path / "precision_plan.json").read_text(encoding="utf-8"))
    decoder = {name: precision for name, precision in plan["precisions"].items() if ".layers." in name}
    assert len(decoder) == 2 * 6  # two layers of q, k, v, o, gate_up and down: every matrix is decided
    assert plan["calibrated"] is False  # scored from the files, F ≡ 1: the model in memory holds only NF4 codes
    assert 8 * sum(plan["nbytes"].values()) / sum(plan["parameters"].values()) <= plan["budget_bits"]
    assert json.loads((tmp_path / "adapters" / "precision_plan.json").read_text(encoding="utf-8")) == plan


def test_a_paper_path_run_killed_after_a_checkpoint_resumes_to_the_straight_run(chatglm2_snapshot, tmp_path,
                                                                                monkeypatch):
    straight = run("adaq_lora", "paper", MINIATURE, chatglm2_snapshot, tmp_path / "straight")
    import adaq_lora.training.loop as loop

    real_step, calls = loop.training_step, []

    def dies_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("the node went away")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "training_step", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run("adaq_lora", "paper", MINIATURE, chatglm2_snapshot, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint" / "checkpoint.pt").exists()
    monkeypatch.setattr(loop, "training_step", real_step)
    resumed = run("adaq_lora", "paper", MINIATURE, chatglm2_snapshot, tmp_path / "resumed")
    assert resumed["losses"] == straight["losses"] and resumed["rank_pattern"] == straight["rank_pattern"]


@pytest.mark.parametrize("method", method_names())
def test_the_ci_profile_runs_every_method_on_a_chatglm2_folder(method, chatglm2_snapshot, tmp_path):
    result = run(method, "ci", CI_SIZES, chatglm2_snapshot, tmp_path)
    assert result["model"] == str(chatglm2_snapshot)
    assert len(result["losses"]) == (CI_SIZES["train_size"] if method_spec(method).trains else 0)


def test_the_installed_command_runs_the_paper_path(chatglm2_snapshot, tmp_path, monkeypatch):
    assignments = [arg for key, value in (MINIATURE | {"model": chatglm2_snapshot}).items()
                   for arg in ("--set", f"{key}={value}")]
    done = subprocess.run([sys.executable, "-m", "adaq_lora.grid.cli", "run", "--method", "qlora", "--dataset",
                           "alpaca_zh", "--profile", "paper", "--quiet", "--out", str(tmp_path), *assignments],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))["method"] == "qlora"
