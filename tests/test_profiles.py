"""A profile nests the two configurations as the code does: one home per hyper-parameter, overridable by either name."""
import json

import pytest

from adaq_lora import profiles
from adaq_lora.config import AdaQConfig, TrainConfig
from adaq_lora.profiles import cpu_description, load_profile, overridable_keys


def test_a_profile_holds_an_adaq_config_and_a_train_config_with_the_run_s_own_fields_beside_them():
    paper = load_profile("paper")
    assert isinstance(paper.adapter, AdaQConfig) and isinstance(paper.train, TrainConfig)
    assert (paper.adapter.precision_budget_bits, paper.adapter.learning_rate) == (4.5, 3e-4)
    assert (paper.train.max_length, paper.train.max_grad_norm, paper.train.optimizer) == (512, 0.1, "paged_adamw")
    assert paper.epochs == 5.0 and paper.train.gradient_checkpointing is True


def test_a_section_field_is_overridden_by_its_dotted_name_or_its_bare_name():
    dotted = load_profile("ci", {"adapter.target_r": "6", "train.max_length": "64"})
    bare = load_profile("ci", {"target_r": "6", "max_length": "64"})
    assert dotted == bare
    assert (dotted.adapter.target_r, dotted.train.max_length) == (6, 64)
    assert load_profile("ci").adapter.target_r == 8  # the file is untouched
    assert "adapter.target_r" in overridable_keys() and "train.max_length" in overridable_keys()


def test_an_override_that_breaks_a_section_is_refused_by_the_section_s_own_check():
    with pytest.raises(ValueError, match="init_r=12 < target_r=16"):
        load_profile("ci", {"target_r": "16"})
    with pytest.raises(ValueError, match="profile field train.max_length must be an integer"):
        load_profile("ci", {"train.max_length": 64.5})


def test_the_fields_a_run_sets_itself_are_not_a_profile_s(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown profile key"):
        load_profile("paper", {"adapter.total_steps": "10"})
    data = json.loads((profiles.resources.files("adaq_lora") / "profiles" / "ci.json").read_text())
    data["adapter"]["total_steps"] = 10
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ci.json").write_text(json.dumps(data))
    monkeypatch.setattr(profiles.resources, "files", lambda package: tmp_path)
    with pytest.raises(ValueError, match=r"profiles/ci.json, section adapter: missing \[\], unknown \['total_steps'\]"):
        load_profile("ci")


def test_a_profile_s_dict_nests_as_its_file_does():
    data = load_profile("cpu").to_dict()
    assert set(data["adapter"]) == set(profiles.section_keys("adapter"))
    assert set(data["train"]) == set(profiles.section_keys("train"))
    assert "total_steps" not in data["adapter"] and "seed" not in data["train"]


@pytest.mark.parametrize("units", [False, True])
def test_a_result_names_whether_its_cpu_has_bfloat16_units(monkeypatch, units):
    monkeypatch.setattr(profiles, "has_bfloat16_units", lambda: units)
    assert cpu_description().endswith(f"{'with' if units else 'no'} bfloat16 units")
