"""Claims about the SVD adapters' start (chapter 3): every start keeps ΔW = 0, the gradient start puts each triplet on
one of the loss gradient's top singular directions, λ gets its own learning rate, and that rate survives compaction
and resume; `adalora` keeps AdaLoRA's start while `adaq_lora` takes its own unless the config says otherwise."""
import pytest
import torch
from torch import nn

from adaq_lora import AdaQConfig
from adaq_lora.adapters.gradient_start import gradient_start
from adaq_lora.adapters.svd_adapter import SVDLinear, orthogonality_penalty, svd_layers
from adaq_lora.config import SVD_INITS, SVD_STARTS, TrainConfig
from adaq_lora.training import train
from adaq_lora.training.step import make_optimizer
from adaq_lora.tuners import prepare
from conftest import make_tiny_llama

RECORDS = [{"instruction": f"计算 {a} 乘 {b}", "input": "", "output": f"{a}×{b}={a * b}。答：{a * b}。"}
           for a, b in [(3, 4), (12, 3), (7, 8), (21, 5), (9, 9), (4, 2), (6, 6), (11, 2)]]


def tiny_config(**changes):
    return AdaQConfig(**{**dict(r=4, init_r=4, target_r=2, t_init=1, t_final=1, total_steps=6, learning_rate=1e-2),
                         **changes})


@pytest.mark.parametrize("init", SVD_INITS)
def test_every_start_keeps_delta_w_zero_so_the_model_computes_what_the_base_did(init, token_batch):
    base = make_tiny_llama()
    expected = base(**token_batch).logits
    tuner = prepare(make_tiny_llama(), "adalora", tiny_config(svd_init=init))
    assert all(torch.count_nonzero(layer.delta_weight()) == 0 for layer in svd_layers(tuner.model).values())
    assert torch.equal(tuner.model(**token_batch).logits, expected)


def test_the_orthonormal_start_has_orthonormal_p_and_q_so_eq6_starts_at_zero():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(20, 12), r=6, lora_alpha=12, dropout=0.0, init_std=0.02, init="orthonormal")
    assert orthogonality_penalty(layer).item() < 1e-10
    gaussian = SVDLinear(nn.Linear(20, 12), r=6, lora_alpha=12, dropout=0.0, init_std=0.02)
    assert orthogonality_penalty(gaussian).item() > 10  # PEFT's N(0, 0.02²): columns of norm ~0.07, far from one


def weight_gradient_and_start(token_batch):
    """The exact summed gradient of one layer's weight, and the same model given the gradient start."""
    torch.manual_seed(0)
    model = make_tiny_llama()
    name = "model.layers.1.mlp.down_proj"
    weight = model.get_submodule(name).weight
    weight.requires_grad_(True)
    halves = [{k: v[i:i + 1] for k, v in token_batch.items()} for i in range(2)]
    for batch in halves:
        model(**batch).loss.backward()
    exact = weight.grad.clone()
    tuner = prepare(make_tiny_llama(), "adalora", tiny_config(svd_init="orthonormal"))
    layers = svd_layers(tuner.model)
    gradient_start(layers, halves, lambda batch: tuner.model(**batch).loss)
    return exact, layers[name], tuner, halves


def test_the_gradient_start_puts_each_triplet_on_a_top_singular_direction_of_the_weights_gradient(token_batch):
    exact, layer, tuner, halves = weight_gradient_and_start(token_batch)
    u, s, vh = torch.linalg.svd(exact)
    p, q = layer.lora_B.detach(), layer.lora_A.detach()
    # the leading direction agrees up to sign, as singular vectors do, within the sketch's accuracy (this tiny random
    # model's spectrum is nearly flat: σ = 0.135, 0.110, 0.098, 0.093, …, the hard case for a randomized SVD)
    assert abs(float(p[:, 0] @ u[:, 0])) > 0.95 and abs(float(q[0] @ vh[0])) > 0.95
    assert torch.allclose(p.T @ p, torch.eye(layer.r), atol=1e-5)
    assert torch.count_nonzero(layer.lora_E) == 0 and torch.count_nonzero(layer.delta_weight()) == 0
    # so ∂L/∂λ_i ≈ −s σ_i: the largest gradients unit-norm rank-one directions can have, pointing λ upwards
    for batch in halves:
        tuner.model(**batch).loss.backward()
    grad = layer.lora_E.grad.view(-1)
    assert torch.allclose(grad, -layer.scaling * s[:layer.r], rtol=0.05)


def test_the_gradient_start_holds_no_gradient_of_p_or_q_and_leaves_them_trainable(token_batch):
    _, layer, tuner, _ = weight_gradient_and_start(token_batch)
    assert layer.lora_A.grad is None and layer.lora_B.grad is None and layer.lora_E.grad is None
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_a_run_with_the_gradient_start_learns_faster_at_first_than_adaloras_start(smol_tokenizer):
    losses = {}
    for init in ("gaussian", "gradient"):
        torch.manual_seed(0)
        tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "adaq_lora",
                        tiny_config(svd_init=init, lambda_lr_ratio=1.0, learning_rate=3e-3, total_steps=20))
        result = train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=8, max_length=48, progress=False))
        losses[init] = result.lm_losses
        assert (result.start_seconds > 0) == (init == "gradient")
    drop = {init: values[0] - min(values) for init, values in losses.items()}
    assert drop["gradient"] > 2 * drop["gaussian"]


def test_lambda_moves_ratio_times_the_learning_rate_in_adams_first_step():
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(), "adalora", tiny_config(lambda_lr_ratio=16.0, learning_rate=1e-3))
    groups = tuner.parameter_groups()
    assert [group.get("lr") for group in groups] == [None, 16e-3]
    assert all(p.shape[1] == 1 for p in groups[1]["params"])  # λ only: r × 1 each
    layer = next(iter(svd_layers(tuner.model).values()))
    with torch.no_grad():
        layer.lora_E.fill_(0.5)  # so that P and Q get gradients too
    optimizer = make_optimizer(groups, "adamw", 1e-3)
    before = {name: p.detach().clone() for name, p in layer.named_parameters() if name.startswith("lora_")}
    x = torch.randn(3, layer.in_features)
    layer(x).pow(2).sum().backward()
    optimizer.step()
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in layer.named_parameters() if name in before}
    assert moved["lora_E"] == pytest.approx(16e-3, rel=1e-3)  # Adam's first step: the rate, per element
    assert moved["lora_A"] == pytest.approx(1e-3, rel=1e-3) and moved["lora_B"] == pytest.approx(1e-3, rel=1e-3)


def test_lambdas_group_survives_rank_compaction_and_holds_the_compacted_lambdas(smol_tokenizer, monkeypatch):
    import adaq_lora.training.loop as loop

    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "adaq_lora",
                    tiny_config(lambda_lr_ratio=8.0, learning_rate=1e-3))
    optimizers = []
    monkeypatch.setattr(loop, "make_optimizer", lambda *args: optimizers.append(make_optimizer(*args)) or optimizers[-1])
    train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=6, max_length=48, progress=False))
    assert tuner.compacted
    groups = optimizers[0].param_groups
    assert [group["lr"] for group in groups] == [1e-3, 8e-3]
    lambdas = {id(layer.lora_E) for layer in svd_layers(tuner.model).values()}
    assert {id(p) for p in groups[1]["params"]} == lambdas
    assert all(layer.lora_E.shape[0] == layer.r for layer in svd_layers(tuner.model).values())


def test_adalora_keeps_adaloras_start_and_adaq_lora_takes_its_own_unless_told():
    assert prepare(make_tiny_llama(), "adalora", tiny_config()).config.svd_init == SVD_STARTS["adalora"][0]
    adaq = prepare(make_tiny_llama(), "adaq_lora", tiny_config(precision_budget_bits=None)).config
    assert (adaq.svd_init, adaq.lambda_lr_ratio) == SVD_STARTS["adaq"]
    told = prepare(make_tiny_llama(), "adaq_lora", tiny_config(precision_budget_bits=None, svd_init="gaussian",
                                                              lambda_lr_ratio=1.0)).config
    assert (told.svd_init, told.lambda_lr_ratio) == SVD_STARTS["adalora"]


@pytest.mark.parametrize("field, value, words", [("svd_init", "kaiming", "svd_init must be one of"),
                                                 ("lambda_lr_ratio", 0.0, "lambda_lr_ratio must be > 0"),
                                                 ("gradient_start_batches", 0, "positive integer")])
def test_a_bad_start_setting_is_refused_naming_the_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        tiny_config(**{field: value})


def test_a_loftq_start_is_kept_by_training_with_the_gradient_start_and_lambda_keeps_its_rate(smol_tokenizer):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "adaq_lora",
                    tiny_config(loftq_init=True, svd_init="gradient", lambda_lr_ratio=16.0, precision_budget_bits=None,
                                learning_rate=1e-7))
    layers = svd_layers(tuner.model)
    loftq = {name: layer.delta_weight().detach().clone() for name, layer in layers.items()}
    assert all(torch.count_nonzero(delta) > 0 for delta in loftq.values())  # ΔW ≈ W − Q(W), not zero
    seen = []
    result = train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=1, max_length=48, progress=False),
                   after_step=lambda step, outcome: seen.append(step))
    assert result.start_seconds == 0  # no gradient start ran over LoftQ's
    moved = max((layer.delta_weight() - loftq[name]).norm().item() / loftq[name].norm().item()
                for name, layer in layers.items())
    assert seen == [1] and moved < 0.01  # a tiny step from LoftQ's start; a gradient start would have zeroed ΔW (1.0)
