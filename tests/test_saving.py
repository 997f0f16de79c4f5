"""Claims about persistence: our adapters round-trip exactly, and PEFT loads the export with the same logits."""
import json

import pytest
import torch
from peft import PeftModel

from adaq_lora import AdaQConfig, adapter_layers, export_peft, load_adapters, prepare, save_adapters
from adaq_lora.quant.precision import apply_precision_plan
from adaq_lora.quant.quantize import quantize_model
from conftest import make_tiny_llama


def trained(method, token_batch, steps=4):
    config = AdaQConfig(r=4, init_r=6, target_r=3, t_init=1, t_final=1, total_steps=steps, learning_rate=2e-2,
                        lora_dropout=0.0)
    tuner = prepare(make_tiny_llama(), method, config)
    model = tuner.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    for _ in range(steps):
        model(**token_batch).loss.backward()
        optimizer.step()
        tuner.after_optimizer_step()  # the rank allocator, where the method has one
        optimizer.zero_grad()
    model.eval()
    return tuner


@pytest.mark.parametrize("method", ["lora", "adalora", "adaq_lora"])
def test_saved_adapters_load_onto_a_fresh_base_with_identical_logits(method, token_batch, tmp_path):
    tuner = trained(method, token_batch)
    model = tuner.model
    save_adapters(tuner, tmp_path)
    saved = json.loads((tmp_path / "adaq_config.json").read_text())
    assert saved["method"] == method
    reloaded = load_adapters(make_tiny_llama(), tmp_path).model.eval()
    ids = token_batch["input_ids"]
    assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_the_saved_rank_pattern_is_what_the_masks_keep(token_batch, tmp_path):
    tuner = trained("adalora", token_batch)
    model = tuner.model
    save_adapters(tuner, tmp_path)
    pattern = json.loads((tmp_path / "adaq_config.json").read_text())["rank_pattern"]
    layers = adapter_layers(model)
    assert pattern == {name: int(layer.triplet_mask.sum()) for name, layer in layers.items()}
    assert sum(pattern.values()) == 3 * len(layers)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_peft_loads_the_export_with_the_same_logits(method, token_batch, tmp_path):
    tuner = trained(method, token_batch)
    model = tuner.model
    export_peft(tuner, tmp_path, base_model_name_or_path="tiny-llama")
    peft_model = PeftModel.from_pretrained(make_tiny_llama(), tmp_path).eval()
    ids = token_batch["input_ids"]
    ours, theirs = model(input_ids=ids).logits, peft_model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    if method == "adalora":
        config = json.loads((tmp_path / "adapter_config.json").read_text())
        assert config["peft_type"] == "ADALORA"
        kept = sum(sum(v) for v in config["rank_pattern"].values())
        assert kept == 3 * len(adapter_layers(model))


@pytest.mark.parametrize("method", ["qlora", "adaq_lora"])
def test_peft_loads_the_4bit_export_onto_the_same_4bit_base_with_the_same_logits(method, token_batch, tmp_path):
    tuner = trained(method, token_batch)
    model = tuner.model
    export_peft(tuner, tmp_path, base_model_name_or_path="tiny-llama")
    plan = tuner.precision_plan  # adaq_lora's base is stored by its precision plan
    base = apply_precision_plan(make_tiny_llama(), plan) if plan is not None else quantize_model(make_tiny_llama())
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    ids = token_batch["input_ids"]
    assert torch.allclose(model(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5)


def test_loading_from_a_folder_without_adapters_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="adaq_config.json is missing"):
        load_adapters(make_tiny_llama(), tmp_path)


def test_saving_a_model_instead_of_its_tuner_is_refused(tmp_path):
    with pytest.raises(ValueError, match="apply_method"):
        save_adapters(make_tiny_llama(), tmp_path)
