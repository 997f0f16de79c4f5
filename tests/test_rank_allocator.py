"""Claims of Sec. 2.3: the cubic budget, one global top-b mask, masked triplets that return, a fixed final phase."""
from dataclasses import replace

import pytest
import torch

from adaq_lora import AdaQConfig, RankAllocator, adapter_layers, apply_method
from adaq_lora.adapters.rank_allocator import cubic_budget


def test_cubic_budget_holds_at_its_ends_and_never_rises():
    budgets = [cubic_budget(t, 120, 80, t_init=10, t_final=20, total_steps=100) for t in range(0, 101)]
    assert budgets[0] == budgets[9] == 120
    assert budgets[10] == 120  # progress 0: the fall starts from b_0
    assert budgets[80] == budgets[100] == 80
    assert all(later <= earlier for earlier, later in zip(budgets, budgets[1:]))
    # halfway through the fall: b_T + (b_0 - b_T) * 0.5³ = 80 + 40 / 8
    assert budgets[45] == 85


def train_with_allocator(model, config, batch, steps):
    allocator = RankAllocator(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    history = []
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        budget = allocator.step()
        optimizer.zero_grad(set_to_none=True)
        history.append((allocator.global_step, budget, sum(l.active_rank for l in allocator.layers.values())))
    return allocator, history


def test_after_each_masking_step_the_unmasked_triplets_equal_the_budget(tiny_llama, token_batch):
    config = AdaQConfig(init_r=6, target_r=2, t_init=2, t_final=3, total_steps=12, learning_rate=1e-2)
    model = apply_method(tiny_llama, "adalora", config).train()
    allocator, history = train_with_allocator(model, config, token_batch, steps=12)
    n = len(allocator.layers)
    assert allocator.initial_budget == 6 * n and allocator.target_budget == 2 * n
    for step, budget, visible in history:
        if step >= config.t_init:
            assert visible == budget, (step, budget, visible)
        else:
            assert visible == 6 * n
    assert history[-1][1] == 2 * n
    assert sum(allocator.rank_pattern.values()) == 2 * n
    assert allocator.rank_pattern == {name: layer.active_rank for name, layer in allocator.layers.items()}
    assert len(set(allocator.rank_pattern.values())) > 1  # one global budget, not the same rank in every layer


def test_the_mask_is_fixed_in_the_final_phase(tiny_llama, token_batch):
    config = AdaQConfig(init_r=4, target_r=2, t_init=1, t_final=4, total_steps=10, learning_rate=1e-2)
    model = apply_method(tiny_llama, "adalora", config).train()
    allocator, _ = train_with_allocator(model, config, token_batch, steps=6)
    assert allocator.in_final_phase and allocator.rank_pattern is not None
    masks = {n: l.triplet_mask.clone() for n, l in allocator.layers.items()}
    pattern = dict(allocator.rank_pattern)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(4):
        model(**token_batch).loss.backward()
        optimizer.step()
        allocator.step()
        optimizer.zero_grad()
    assert allocator.rank_pattern == pattern
    assert all(torch.equal(masks[n], l.triplet_mask) for n, l in allocator.layers.items())


def test_a_masked_triplet_whose_score_rises_comes_back(tiny_llama, token_batch):
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20)
    model = apply_method(tiny_llama, "adalora", config).train()
    allocator = RankAllocator(model, config)
    model(**token_batch).loss.backward()
    allocator.update_importance()
    budget = allocator.target_budget
    allocator.mask_to_budget(budget)
    name, layer = next((n, l) for n, l in allocator.layers.items() if bool((l.triplet_mask == 0).any()))
    hidden = int(torch.nonzero(layer.triplet_mask.view(-1) == 0)[0])
    top = max(s.max().item() for s in allocator.triplet_scores().values())
    allocator.sensitivity[(name, "lora_E")][hidden] = 10.0 * (top + 1.0)
    allocator.uncertainty[(name, "lora_E")][hidden] = 1.0
    allocator.mask_to_budget(budget)
    assert layer.triplet_mask[hidden].item() == 1.0
    assert sum(l.active_rank for l in allocator.layers.values()) == budget


def test_triplet_score_is_lambda_score_plus_mean_p_column_plus_mean_q_row(tiny_llama, token_batch):
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20)
    model = apply_method(tiny_llama, "adalora", config).train()
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_E.normal_()
    allocator = RankAllocator(model, config)
    model(**token_batch).loss.backward()
    allocator.update_importance()
    name, layer = next(iter(allocator.layers.items()))
    s = lambda p: ((1 - 0.85) * (getattr(layer, p) * getattr(layer, p).grad).abs()) * (
        (1 - 0.85) * 0.85 * (getattr(layer, p) * getattr(layer, p).grad).abs())
    expected = s("lora_E").view(-1) + s("lora_B").mean(dim=0) + s("lora_A").mean(dim=1)
    assert torch.allclose(allocator.triplet_scores()[name], expected, rtol=1e-5)
    assert expected.abs().sum() > 0


def test_stepping_after_zero_grad_is_an_error_that_says_where_to_call_it(tiny_llama, token_batch):
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20)
    model = apply_method(tiny_llama, "adalora", config)
    allocator = RankAllocator(model, config)
    with pytest.raises(RuntimeError, match="after optimizer.step"):
        allocator.step()


def test_allocator_needs_svd_adapters(tiny_llama):
    model = apply_method(tiny_llama, "lora", AdaQConfig())
    with pytest.raises(ValueError, match="adalora"):
        RankAllocator(model, AdaQConfig())


def test_ties_are_broken_by_position_so_every_rank_masks_alike(tiny_llama):
    """Equal scores (all zero at the start, where λ = 0) keep the earliest triplets, the same on every rank."""
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20)
    allocator = RankAllocator(apply_method(tiny_llama, "adalora", config), config)
    for name, layer in allocator.layers.items():
        for param_name in ("lora_A", "lora_B", "lora_E"):
            zeros = torch.zeros_like(getattr(layer, param_name))
            allocator.sensitivity[name, param_name], allocator.uncertainty[name, param_name] = zeros, zeros.clone()
    allocator.mask_to_budget(6)
    masks = [layer.triplet_mask.view(-1).tolist() for layer in allocator.layers.values()]
    assert masks[0] == [1.0, 1.0, 1.0, 1.0] and masks[1] == [1.0, 1.0, 0.0, 0.0]
    assert sum(sum(mask) for mask in masks) == 6


def allocators_fed_the_same_gradients(tiny_llama, config: AdaQConfig, **other) -> tuple[RankAllocator, RankAllocator]:
    """Two allocators over one adalora model (λ drawn non-zero), `config`'s and `config` with `other`, each folding
    in the same 5 batches' gradients."""
    model = apply_method(tiny_llama, "adalora", config).train()
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_E.normal_(generator=torch.Generator().manual_seed(1))
    first, second = RankAllocator(model, config), RankAllocator(model, replace(config, **other))
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        ids = torch.randint(0, 128, (2, 12), generator=generator)
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        first.update_importance()
        second.update_importance()
    return first, second


def test_bfloat16_emas_take_half_the_bytes_and_choose_the_triplets_float32_would_but_for_near_ties(tiny_llama):
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20, init_std=0.1)
    half, full = allocators_fed_the_same_gradients(tiny_llama, config, importance_dtype="float32")
    assert {t.dtype for t in half.sensitivity.values()} == {torch.bfloat16}
    assert sum(t.nbytes for t in half.sensitivity.values()) * 2 == sum(t.nbytes for t in full.sensitivity.values())
    scores_half, scores_full = (torch.cat(list(a.triplet_scores().values())) for a in (half, full))
    assert torch.allclose(scores_half, scores_full, rtol=2e-2)  # bfloat16's 8-bit mantissa, twice rounded
    budget = half.target_budget
    swapped = int((half.best_triplets(budget) != full.best_triplets(budget)).sum()) // 2
    assert swapped <= 1  # of 56 triplets: at most a near-tie at the cut


def test_per_triplet_statistics_keep_r_values_a_matrix_and_their_smoothed_sensitivity_is_the_element_mean(tiny_llama):
    """Ī is linear, so Ī per triplet equals the mean of Ī per element; U and s are taken of the mean instead."""
    config = AdaQConfig(init_r=4, target_r=2, t_init=0, t_final=2, total_steps=20, init_std=0.1,
                        importance_dtype="float32")
    element, triplet = allocators_fed_the_same_gradients(tiny_llama, config, importance_per="triplet")
    name, layer = next(iter(element.layers.items()))
    assert triplet.sensitivity[name, "lora_A"].shape == (4, 1) and triplet.sensitivity[name, "lora_B"].shape == (1, 4)
    torch.testing.assert_close(triplet.sensitivity[name, "lora_A"], element.sensitivity[name, "lora_A"].mean(1, True))
    torch.testing.assert_close(triplet.sensitivity[name, "lora_B"], element.sensitivity[name, "lora_B"].mean(0, True))
    kept = sum(t.numel() for t in triplet.sensitivity.values())
    assert kept == 3 * element.initial_budget  # λ, P's column and Q's row: three values a triplet
    assert sum(t.numel() for t in element.sensitivity.values()) > 10 * kept
    assert {name: s.shape for name, s in triplet.triplet_scores().items()} == \
        {name: s.shape for name, s in element.triplet_scores().items()}
