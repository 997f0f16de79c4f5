"""Claims about rank compaction: shrinking the SVD adapters to their kept triplets in the final phase changes no
output, takes the optimizer state along, frees the importance EMAs and the hidden triplets' bytes, and survives
training, checkpoints, saving and PEFT export."""
import gc
import weakref

import pytest
import torch
from peft import PeftModel

from adaq_lora import AdaQConfig, apply_method, export_peft, load_adapters, save_adapters
from adaq_lora.adapters.compaction import compact_to_masks
from adaq_lora.quant.precision import apply_precision_plan
from adaq_lora.adapters.svd_adapter import orthogonal_regularizer, svd_layers
from adaq_lora.config import TrainConfig
from adaq_lora.training import make_optimizer, train
from adaq_lora.training.step import optimized_parameters
from adaq_lora.tuners import prepare
from conftest import make_tiny_llama
from test_train import RECORDS, run, trainable

# the final phase starts at step 3 of 6: the allocator masks at steps 1 to 3 and compacts at step 3
SETTINGS = dict(init_r=6, target_r=3, t_init=1, t_final=3, total_steps=6, learning_rate=1e-2, lora_dropout=0.0)


def masked_model(method: str):
    """A tiny Llama whose SVD adapters have non-zero λ and about half their triplets hidden."""
    model = apply_method(make_tiny_llama(), method, AdaQConfig(**SETTINGS))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in svd_layers(model).values():
            layer.lora_E.normal_(generator=generator)
            layer.set_mask(torch.rand(layer.r, generator=generator) < 0.5)
    return model


def step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def training_bytes(tuner, optimizer) -> int:
    """Trainable parameters + their optimizer state + the allocator's importance EMAs."""
    allocator = tuner.allocator
    return (tensor_bytes(optimized_parameters(optimizer))
            + tensor_bytes(v for state in optimizer.state.values() for v in state.values())
            + tensor_bytes([*allocator.sensitivity.values(), *allocator.uncertainty.values()]))


def train_steps(tuner, optimizer, batch, steps: int) -> None:
    for _ in range(steps):
        tuner.model(**batch).loss.backward()
        optimizer.step()
        tuner.after_optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)


def prepared(method: str):
    tuner = prepare(make_tiny_llama(), method, AdaQConfig(**SETTINGS))
    tuner.model.train()
    return tuner, make_optimizer([p for p in tuner.model.parameters() if p.requires_grad], "adamw", 1e-2)


@pytest.mark.parametrize("method", ["adalora", "adaq_lora"])
def test_compaction_changes_neither_the_outputs_nor_the_lm_loss(method, token_batch):
    model = masked_model(method)
    masks = {name: layer.triplet_mask.view(-1).bool() for name, layer in svd_layers(model).items()}
    before = model(**token_batch)
    ranks = compact_to_masks(svd_layers(model))
    after = model(**token_batch)
    assert ranks == {name: int(mask.sum()) for name, mask in masks.items()}
    assert sum(ranks.values()) < 6 * len(ranks)
    assert torch.allclose(before.logits, after.logits, atol=1e-6), (before.logits - after.logits).abs().max()
    assert torch.allclose(before.loss, after.loss, atol=1e-6)


def test_the_orthogonality_penalty_after_compaction_equals_the_penalty_over_the_kept_triplets(token_batch):
    model = masked_model("adalora")
    expected = 0.0
    for layer in svd_layers(model).values():
        keep = layer.triplet_mask.view(-1).bool()
        p, q, eye = layer.lora_B[:, keep], layer.lora_A[keep], torch.eye(int(keep.sum()))
        expected += ((p.T @ p - eye) ** 2).sum() + ((q @ q.T - eye) ** 2).sum()
    over_all_triplets = orthogonal_regularizer(model)
    compact_to_masks(svd_layers(model))
    assert torch.allclose(orthogonal_regularizer(model), expected, rtol=1e-6)
    assert not torch.allclose(over_all_triplets, expected)  # the masked run also penalized the hidden triplets


@pytest.mark.parametrize("optimizer_name", ["adamw", "paged_adamw"])
def test_compaction_shrinks_p_lambda_q_and_the_optimizer_state_and_the_next_step_matches(optimizer_name, token_batch):
    def trained_twice():
        model = masked_model("adalora").train()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], optimizer_name, 1e-2)
        for _ in range(2):
            step(model, optimizer, token_batch)
        return model, optimizer

    (masked, masked_opt), (compacted, compacted_opt) = trained_twice(), trained_twice()
    keeps = {name: layer.triplet_mask.view(-1).bool() for name, layer in svd_layers(masked).items()}
    slices = {"lora_A": lambda t, k: t[k], "lora_E": lambda t, k: t[k], "lora_B": lambda t, k: t[:, k]}
    compact_to_masks(svd_layers(compacted), compacted_opt)
    for phase in ("after compaction", "after one more step"):
        for name, layer in svd_layers(compacted).items():
            keep, masked_layer = keeps[name], svd_layers(masked)[name]
            assert layer.r == int(keep.sum()) and layer.triplet_mask.shape == (layer.r, 1)
            for param_name, take in slices.items():
                new, old = getattr(layer, param_name), getattr(masked_layer, param_name)
                assert torch.allclose(new, take(old, keep), atol=1e-6), (phase, name, param_name)
                state, old_state = compacted_opt.state[new], masked_opt.state[old]
                moments = [key for key, v in old_state.items() if torch.is_tensor(v) and v.shape == old.shape]
                assert len(moments) == 2, moments  # exp_avg/exp_avg_sq or bitsandbytes' state1/state2
                for key in moments:
                    assert state[key].shape == new.shape
                    assert torch.allclose(state[key], take(old_state[key], keep), atol=1e-6), (phase, name, key)
                assert int(state["step"]) == int(old_state["step"])
        step(masked, masked_opt, token_batch)
        step(compacted, compacted_opt, token_batch)
    trained_now = {id(p) for p in compacted.parameters() if p.requires_grad}
    assert {id(p) for p in optimized_parameters(compacted_opt)} == trained_now


def test_the_importance_statistics_and_the_old_parameters_are_freed(token_batch):
    tuner, optimizer = prepared("adalora")
    train_steps(tuner, optimizer, token_batch, 2)
    allocator = tuner.allocator
    ema = weakref.ref(next(iter(allocator.sensitivity.values())))
    old_q = weakref.ref(next(iter(allocator.layers.values())).lora_A)
    assert allocator.sensitivity and ema() is not None and old_q() is not None
    train_steps(tuner, optimizer, token_batch, 1)  # the final phase's first step
    gc.collect()
    assert allocator.compacted and allocator.sensitivity == {} and allocator.uncertainty == {}
    assert ema() is None and old_q() is None
    assert {name: layer.r for name, layer in allocator.layers.items()} == allocator.rank_pattern


def test_trainable_bytes_after_compaction_are_below_a_half_of_the_bytes_before(token_batch):
    tuner, optimizer = prepared("adaq_lora")
    train_steps(tuner, optimizer, token_batch, 2)
    before = training_bytes(tuner, optimizer)  # P, λ, Q at init_r 6, two Adam moments, two EMAs: 5 copies
    train_steps(tuner, optimizer, token_batch, 1)
    after = training_bytes(tuner, optimizer)  # at target_r 3 on average, two moments, no EMA: 1.5 of those copies
    assert tuner.allocator.compacted
    assert after < 0.5 * before, (after, before)


def test_training_with_compaction_ends_with_the_logits_of_training_without(smol_tokenizer, token_batch):
    def trained(compact_ranks: bool):
        torch.manual_seed(0)
        # γ = 0 and no clipping: the masked run's hidden triplets then touch neither the kept ones' gradients
        # (through Eq. 6's cross terms) nor the clipping factor (their λ keep a straight-through gradient)
        config = AdaQConfig(r=4, init_r=4, target_r=2, t_init=1, t_final=3, total_steps=6, learning_rate=1e-2,
                            orth_reg_weight=0.0, compact_ranks=compact_ranks)
        tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "adaq_lora", config)
        train(tuner, smol_tokenizer, RECORDS,
              TrainConfig(max_steps=6, max_length=48, max_grad_norm=1e9, progress=False))
        return tuner

    compacted, masked = trained(True), trained(False)
    assert compacted.allocator.compacted and not masked.allocator.compacted
    assert {n: l.r for n, l in compacted.allocator.layers.items()} == compacted.rank_pattern() == masked.rank_pattern()
    ids = token_batch["input_ids"] % len(smol_tokenizer)
    ours, theirs = compacted.model(input_ids=ids).logits, masked.model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_a_run_resumed_from_a_checkpoint_written_after_compaction_equals_a_straight_run(smol_tokenizer, tmp_path):
    settings = dict(init_r=4, t_final=3, lora_dropout=0.1)  # compaction at step 3, the checkpoint right after
    straight, straight_result = run("adaq_lora", smol_tokenizer, steps=6, **settings)
    run("adaq_lora", smol_tokenizer, steps=3, checkpoint_dir=tmp_path, checkpoint_every=3, max_steps=6, **settings)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["tuner"]["compacted"] and saved["tuner"]["sensitivity"] == {}
    resumed, resumed_result = run("adaq_lora", smol_tokenizer, steps=6, checkpoint_dir=tmp_path, checkpoint_every=3,
                                  **settings)
    assert resumed_result.losses == straight_result.losses
    assert straight.allocator.compacted and resumed.allocator.compacted
    for name, tensor in trainable(straight).items():
        assert torch.equal(tensor, trainable(resumed)[name]), name


@pytest.mark.parametrize("method", ["adalora", "adaq_lora"])
def test_compacted_adapters_save_load_and_export_to_peft_with_the_same_logits(method, token_batch, tmp_path):
    tuner, optimizer = prepared(method)
    train_steps(tuner, optimizer, token_batch, 4)
    model = tuner.model.eval()
    ranks = {name: layer.r for name, layer in svd_layers(model).items()}
    assert tuner.allocator.compacted and len(set(ranks.values())) > 1  # per-layer ranks differ
    save_adapters(tuner, tmp_path / "ours")
    export_peft(tuner, tmp_path / "peft", base_model_name_or_path="tiny-llama")
    reloaded = load_adapters(make_tiny_llama(), tmp_path / "ours").model.eval()
    assert {name: layer.r for name, layer in svd_layers(reloaded).items()} == ranks
    plan = tuner.precision_plan
    base = apply_precision_plan(make_tiny_llama(), plan) if plan is not None else make_tiny_llama()
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    ids = token_batch["input_ids"]
    ours = model(input_ids=ids).logits
    assert torch.equal(ours, reloaded(input_ids=ids).logits)
    assert torch.allclose(ours, peft_model(input_ids=ids).logits, atol=1e-5)


def test_an_optimizer_whose_state_cannot_move_is_refused_before_any_parameter_is_replaced(tiny_llama, token_batch):
    # init_r = 64: P and Q of 4,096 elements, the smallest that bitsandbytes keeps in 8 bits
    model = apply_method(tiny_llama, "adalora", AdaQConfig(init_r=64, target_r=32, total_steps=30))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, "paged_adamw_8bit", 1e-3)
    model(**token_batch).loss.backward()
    optimizer.step()
    layer = next(module for module in model.modules() if hasattr(module, "triplet_mask"))
    layer.set_mask(torch.arange(64) % 2 == 0)
    before = {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="8-bit optimizer states"):
        compact_to_masks(svd_layers(model), optimizer)
    assert {id(p) for p in model.parameters()} == before and layer.r == 64  # nothing replaced, nothing half-moved
    assert all(p in optimizer.state for p in params)
