"""Claims about `apply_method` and `AdaQConfig`: every method on any causal LM, and bad settings refused early."""
import pytest
import torch
from bitsandbytes.nn import Linear4bit

from adaq_lora import AdaQConfig, adapter_layers, apply_method, method_names, trainable_parameters
from adaq_lora.quant.blockwise import BlockwiseLinear
from adaq_lora.adapters.lora import LoraLinear
from adaq_lora.models import DEFAULT_TARGET_MODULES, default_target_modules
from adaq_lora.adapters.svd_adapter import SVDLinear
from conftest import make_tiny_llama


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(init_r=4, target_r=8), "init_r=4 < target_r=8"),
        (dict(t_init=50, t_final=50, total_steps=100), "no step is left"),
        (dict(r=0), "r must be a positive integer"),
        (dict(init_r=-2, target_r=-3), "must be a positive integer"),
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(learning_rate=-3e-4), "learning_rate must be > 0"),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(beta1=1.0), "beta1"),
        (dict(quant_type="int3"), "quant_type"),
        (dict(compute_dtype="float8"), "compute_dtype"),
        (dict(target_modules=()), "target_modules is empty"),
    ],
)
def test_bad_config_values_are_refused_with_the_field_named(settings, message):
    with pytest.raises(ValueError, match=message):
        AdaQConfig(**settings)


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    config = AdaQConfig(target_modules=["q_proj", "v_proj"], init_r=10, target_r=4)
    assert AdaQConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown AdaQConfig field"):
        AdaQConfig.from_dict({"rank": 4})


def test_unknown_method_lists_the_valid_ones(tiny_llama):
    with pytest.raises(ValueError, match="valid methods: base, full, lora, qlora, adalora, adaq_lora"):
        apply_method(tiny_llama, "dora", AdaQConfig())


def test_unknown_target_module_lists_the_model_linear_layers(tiny_llama):
    with pytest.raises(ValueError, match=r"unknown target module\(s\) \['query_key_value'\].*'q_proj'"):
        apply_method(tiny_llama, "lora", AdaQConfig(target_modules=("query_key_value",)))


def test_chatglm2_as_glm_adapts_the_papers_four_matrices_with_query_key_value_split():
    assert DEFAULT_TARGET_MODULES["glm"] == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")


def test_model_family_without_defaults_is_told_to_name_targets():
    model = make_tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="pass AdaQConfig\\(target_modules"):
        default_target_modules(model)


@pytest.mark.parametrize("method", method_names(peers=False))
def test_every_method_runs_a_training_step_on_a_tiny_llama(method, token_batch):
    model = apply_method(make_tiny_llama(), method, AdaQConfig(r=4, init_r=4, target_r=2)).train()
    loss = model(**token_batch).loss
    assert torch.isfinite(loss)
    if method == "base":
        assert trainable_parameters(model) == 0
        return
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_methods_build_the_layers_the_paper_describes():
    layer_types = {}
    for method in ("lora", "qlora", "adalora", "adaq_lora"):
        layers = adapter_layers(apply_method(make_tiny_llama(), method, AdaQConfig(r=4, init_r=4, target_r=2)))
        layer = next(iter(layers.values()))
        layer_types[method] = (type(layer), type(layer.base_layer))
    assert layer_types["lora"] == (LoraLinear, torch.nn.Linear)
    assert layer_types["qlora"] == (LoraLinear, Linear4bit)
    assert layer_types["adalora"] == (SVDLinear, torch.nn.Linear)
    # adaq_lora stores each base matrix by its precision plan: NF4 in bitsandbytes' layer, or 8/16 bits blockwise
    assert layer_types["adaq_lora"][0] is SVDLinear and layer_types["adaq_lora"][1] in (Linear4bit, BlockwiseLinear)
    qlora_layout = apply_method(make_tiny_llama(), "adaq_lora", AdaQConfig(init_r=4, target_r=2, precision_budget_bits=None))
    assert all(type(layer.base_layer) is Linear4bit for layer in adapter_layers(qlora_layout).values())


def test_full_fine_tuning_trains_every_weight(tiny_llama):
    model = apply_method(tiny_llama, "full")
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())


def test_a_method_cannot_be_applied_twice(tiny_llama):
    model = apply_method(tiny_llama, "lora")
    with pytest.raises(ValueError, match="already applied"):
        apply_method(model, "adalora")


@pytest.mark.parametrize("method", ["lora", "qlora", "adalora", "adaq_lora"])
def test_apply_method_keeps_the_mode_the_model_had_so_dropout_stays_off_for_logits(method, token_batch):
    """With dropout 0.5 on the adapters, a layer left in training mode would change the logits between two calls.
    Adapters are perturbed away from ΔW = 0 first, so dropout on their input would show."""
    config = AdaQConfig(r=4, init_r=4, target_r=2, lora_dropout=0.5, precision_budget_bits=None)
    torch.manual_seed(0)
    model = apply_method(make_tiny_llama(), method, config)
    assert not any(module.training for module in model.modules())
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for parameter in (layer.lora_B, getattr(layer, "lora_E", layer.lora_B)):
                parameter.add_(0.1)
        first, second = (model(token_batch["input_ids"]).logits for _ in range(2))
    assert torch.equal(first, second)
    training = apply_method(make_tiny_llama().train(), method, config)
    assert all(module.training for module in training.modules())
