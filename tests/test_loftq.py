"""Claims about the LoftQ start (`adaq_lora.adapters.loftq`): ΔW undoes the quantization error as far as rank r allows."""
import pytest
import torch
from bitsandbytes.nn import Linear4bit

from adaq_lora import AdaQConfig, adapter_layers, apply_method
from adaq_lora.quant.quantize import dequantized_weight
from adaq_lora.adapters.svd_adapter import orthogonality_penalty, svd_layers
from conftest import make_tiny_llama


@pytest.mark.parametrize("budget_bits", [None, 4.5, 2.5], ids=["qlora-layout", "precision-plan", "below-4-bits"])
def test_loftq_start_leaves_only_the_residual_beyond_rank_r(budget_bits):
    """||W − (W0_quant + ΔW)||_F = sqrt(Σ_{i>r} σ_i²) of R = W − W0_quant (Eckart–Young), on every target, whatever
    the base's precision (at 2.5 bits most targets are stored in NF3 or NF2)."""
    full = make_tiny_llama()
    config = AdaQConfig(loftq_init=True, precision_budget_bits=budget_bits)
    model = apply_method(make_tiny_llama(), "adaq_lora", config)
    layers = svd_layers(model)
    assert len(layers) == 14  # 7 target matrices in each of the 2 decoder layers
    if budget_bits == 2.5:
        assert sum(getattr(getattr(layer.base_layer, "matrix", None), "precision", "") in ("nf2", "nf3")
                   for layer in layers.values()) >= 7
    for name, layer in layers.items():
        with torch.no_grad():
            residual = full.get_submodule(name).weight - dequantized_weight(layer.base_layer).float()
            error_after = torch.linalg.norm(residual - layer.delta_weight()).item()
        singular_values = torch.linalg.svdvals(residual)
        expected = singular_values[config.init_r:].norm().item()
        assert error_after == pytest.approx(expected, rel=1e-4), name
        assert error_after < 0.9 * singular_values.norm().item(), name  # the top 12 of ≤ 64 triplets hold > 19% of it
        assert orthogonality_penalty(layer).item() == pytest.approx(0, abs=1e-4), name  # P, Q start orthonormal


def test_default_start_keeps_delta_w_zero():
    assert AdaQConfig().loftq_init is False
    model = apply_method(make_tiny_llama(), "adaq_lora", AdaQConfig())
    for name, layer in svd_layers(model).items():
        assert torch.count_nonzero(layer.delta_weight()) == 0, name


def test_loftq_start_brings_tiny_llama_logits_closer_to_full_precision(token_batch):
    """QLoRA layout (targets in NF4, head in full precision), seed 0: ||Δlogits|| falls from 0.81 to 0.49."""
    input_ids = token_batch["input_ids"]
    with torch.no_grad():
        reference = make_tiny_llama()(input_ids=input_ids).logits
        distances = {}
        for loftq in (False, True):
            config = AdaQConfig(loftq_init=loftq, precision_budget_bits=None)
            model = apply_method(make_tiny_llama(), "adaq_lora", config).eval()  # eval: no adapter dropout
            distances[loftq] = torch.linalg.norm(model(input_ids=input_ids).logits - reference).item()
    assert distances[False] == pytest.approx(0.81, abs=0.05)
    assert distances[True] < 0.7 * distances[False]


@pytest.mark.parametrize("method", ["lora", "adalora", "qlora"])
def test_methods_without_svd_adapters_on_a_quantized_base_run_without_loftq(method):
    """A profile's loftq_init serves its whole grid: the other methods start exactly as they would without it."""
    started = {}
    for loftq in (False, True):
        torch.manual_seed(0)
        model = apply_method(make_tiny_llama(), method, AdaQConfig(loftq_init=loftq))
        started[loftq] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert started[False].keys() == started[True].keys() and started[True]
    assert all(torch.equal(started[False][name], started[True][name]) for name in started[False])
