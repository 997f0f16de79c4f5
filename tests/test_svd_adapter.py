"""Claims of Eqs. 5-6: P Λ Q starts at zero, masking hides without deleting, and R(P, Q) measures orthogonality."""
import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import SVDLinear as PeftSVDLinear
from torch import nn

from adaq_lora import AdaQConfig, adapter_layers, apply_method, orthogonal_regularizer
from adaq_lora.adapters.svd_adapter import SVDLinear, orthogonality_penalty


def make_layer(seed=0, r=6):
    torch.manual_seed(seed)
    return SVDLinear(nn.Linear(20, 12), r=r, lora_alpha=12, dropout=0.0, init_std=0.02)


def test_lambda_is_zero_so_delta_w_is_zero_at_start_while_p_and_q_are_random():
    layer = make_layer()
    assert torch.count_nonzero(layer.lora_E) == 0
    assert torch.count_nonzero(layer.delta_weight()) == 0
    assert layer.lora_A.std().item() > 0.01 and layer.lora_B.std().item() > 0.01
    x = torch.randn(3, 20)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_a_masked_triplet_keeps_its_singular_vectors_loses_its_lambda_and_contributes_nothing():
    layer = make_layer()
    with torch.no_grad():
        layer.lora_E.copy_(torch.arange(1.0, 7.0).view(6, 1))
    kept = torch.tensor([True, True, False, True, False, True])
    saved = {n: getattr(layer, n).clone() for n in ("lora_A", "lora_E", "lora_B")}
    layer.set_mask(kept)
    assert layer.active_rank == 4
    for name in ("lora_A", "lora_B"):  # P and Q stay, so the triplet can come back
        assert torch.equal(getattr(layer, name), saved[name])
    assert layer.lora_E.view(-1).tolist() == [1.0, 2.0, 0.0, 4.0, 0.0, 6.0]  # AdaLoRA's masking zeroes λ
    only_kept = (layer.lora_B[:, kept] @ (layer.lora_E[kept] * layer.lora_A[kept])) * layer.scaling
    assert torch.allclose(layer.delta_weight(), only_kept, atol=1e-7)
    x = torch.randn(3, 20)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ only_kept.T, atol=1e-6)


def test_masked_lambda_still_gets_its_gradient_but_its_singular_vectors_do_not():
    layer = make_layer()
    with torch.no_grad():
        layer.lora_E.fill_(0.5)
    layer.set_mask(torch.tensor([True, False, True, True, True, True]))
    layer(torch.randn(4, 20)).pow(2).sum().backward()
    assert layer.lora_E.grad[1].abs().item() > 0
    assert torch.count_nonzero(layer.lora_A.grad[1]) == 0
    assert torch.count_nonzero(layer.lora_B.grad[:, 1]) == 0
    assert torch.count_nonzero(layer.lora_A.grad[0]) > 0


def test_orthogonality_penalty_is_zero_for_orthonormal_p_and_q_and_counts_the_defect_otherwise():
    layer = make_layer(r=4)
    with torch.no_grad():
        q_rows, _ = torch.linalg.qr(torch.randn(20, 4))
        p_cols, _ = torch.linalg.qr(torch.randn(12, 4))
        layer.lora_A.copy_(q_rows.T)
        layer.lora_B.copy_(p_cols)
    assert orthogonality_penalty(layer).item() < 1e-10
    with torch.no_grad():
        layer.lora_B.mul_(2.0)  # PᵀP = 4I: ||3I||² = 9 · r
    assert abs(orthogonality_penalty(layer).item() - 9 * 4) < 1e-4


def test_regularizer_sums_the_penalty_over_every_adapted_matrix(tiny_llama):
    model = apply_method(tiny_llama, "adalora", AdaQConfig(init_r=4, target_r=2))
    layers = adapter_layers(model).values()
    expected = sum(orthogonality_penalty(layer) for layer in layers)
    assert torch.allclose(orthogonal_regularizer(model), expected)
    assert orthogonal_regularizer(model).item() > 0


def test_svd_layer_matches_peft_adalora_layer_with_the_same_weights():
    """PEFT scales by lora_alpha / (ranknum + 1e-5), ranknum = init_r: ours by α / init_r, equal to ~1e-6."""
    layer = make_layer()
    with torch.no_grad():
        layer.lora_E.normal_()
    peft_config = AdaLoraConfig(init_r=6, lora_alpha=12, lora_dropout=0.0, total_step=10)
    peft_layer = PeftSVDLinear(nn.Linear(20, 12), "default", r=6, lora_alpha=12, config=peft_config)
    peft_layer.base_layer.load_state_dict(layer.base_layer.state_dict())
    for name in ("lora_A", "lora_E", "lora_B"):
        getattr(peft_layer, name)["default"].data.copy_(getattr(layer, name))
    x = torch.randn(5, 20)
    assert torch.allclose(layer(x), peft_layer(x), rtol=1e-5, atol=1e-6)


def test_a_returning_triplet_starts_from_zero_instead_of_jumping_by_its_old_lambda():
    """Sec. 2.2's reason to mask: ΔW changes smoothly. With λ zeroed at masking, showing a triplet again changes
    nothing at once; with its old λ kept it would jump by (α/r)·λ_i·P_i Q_i."""
    layer = make_layer()
    with torch.no_grad():
        layer.lora_E.fill_(3.0)
    hidden = torch.tensor([True, False, True, True, True, True])
    layer.set_mask(hidden)
    before = layer.delta_weight().detach().clone()
    layer.set_mask(torch.ones(6, dtype=torch.bool))
    assert torch.equal(layer.delta_weight().detach(), before)
    jump = (3.0 * layer.lora_B[:, 1:2] @ layer.lora_A[1:2]) * layer.scaling  # what keeping λ would have added
    assert float(jump.abs().max()) > 0.5 * float(before.abs().max())  # as large as the rest of ΔW
