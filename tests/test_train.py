"""Claims about the training loop: every method trains through it, a resumed run equals a straight one (CUDA's
generators kept too), a non-finite loss stops the run with its step named, the same seed gives the same result,
gradient checkpointing still reaches every adapter, and the model leaves training as it came."""
from functools import partial

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from adaq_lora import AdaQConfig
from adaq_lora.scoring.evaluate import generate_answers
from adaq_lora.config import TrainConfig
from adaq_lora.data import build_example, collate_examples, pad_token_id
from adaq_lora.training import set_gradient_checkpointing, train
from adaq_lora.training.loop import TrainResult, load_checkpoint, micro_batch_order, save_checkpoint
from adaq_lora.training.step import training_loss
from adaq_lora.tuners import method_names, prepare
from conftest import make_tiny_llama

RECORDS = [
    {"instruction": f"计算 {a} 加 {b}", "input": "", "output": f"{a}+{b}={a + b}。答：{a + b}。"}
    for a, b in [(3, 4), (12, 30), (7, 8), (21, 5), (9, 9), (40, 2)]
]


def run(method, tokenizer, steps=2, checkpoint_dir=None, checkpoint_every=0, seed=0, max_steps=None, **config):
    torch.manual_seed(seed)
    model = make_tiny_llama(vocab_size=len(tokenizer))
    settings = dict(r=4, init_r=4, target_r=2, t_init=1, t_final=1, total_steps=max_steps or steps,
                    learning_rate=1e-2) | config
    tuner = prepare(model, method, AdaQConfig(**settings))
    train_config = TrainConfig(max_steps=steps, max_length=48, checkpoint_every=checkpoint_every, seed=seed,
                               progress=False)
    result = train(tuner, tokenizer, RECORDS, train_config, checkpoint_dir=checkpoint_dir)
    return tuner, result


def trainable(tuner):
    return {n: p.detach().clone() for n, p in tuner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", [m for m in method_names() if m != "base"])
def test_every_method_and_peer_runs_two_steps_and_changes_its_trainable_weights(method, smol_tokenizer):
    # total_steps=3: PEFT's AdaLoRA fails (KeyError) if its final phase starts at step 1, before any score exists
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), method,
                    AdaQConfig(r=4, init_r=4, target_r=2, t_init=0, t_final=1, total_steps=3, learning_rate=1e-2))
    before = trainable(tuner)
    result = train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=2, max_length=48, progress=False))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.tokens > 0
    changed = sum(not torch.equal(before[n], p) for n, p in trainable(tuner).items())
    assert changed > 0


def test_base_method_has_nothing_to_train(smol_tokenizer):
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "base")
    with pytest.raises(ValueError, match="nothing to train"):
        train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=1, progress=False))


@pytest.mark.parametrize("method", ["adaq_lora", "lora"])
def test_a_run_killed_and_resumed_ends_with_the_same_adapters_as_a_straight_run(method, smol_tokenizer, tmp_path):
    straight, straight_result = run(method, smol_tokenizer, steps=6, lora_dropout=0.1)
    run(method, smol_tokenizer, steps=3, checkpoint_dir=tmp_path, checkpoint_every=3, max_steps=6, lora_dropout=0.1)
    resumed, resumed_result = run(method, smol_tokenizer, steps=6, checkpoint_dir=tmp_path, checkpoint_every=3,
                                  lora_dropout=0.1)
    assert resumed_result.losses == straight_result.losses
    assert resumed_result.lm_losses == straight_result.lm_losses
    for name, tensor in trainable(straight).items():
        assert torch.equal(tensor, trainable(resumed)[name]), name


@pytest.mark.parametrize("method", ["adaq_lora", "lora"])
def test_the_recorded_cross_entropy_leaves_out_only_the_orthogonality_term(method, smol_tokenizer):
    # one step, so the term is measured on the adapters the step's loss saw: the SVD start P, Q
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), method,
                    AdaQConfig(r=4, init_r=4, target_r=2, t_init=1, t_final=1, total_steps=3))
    regularizer = tuner.regularizer()
    expected_gap = 0.0 if regularizer is None else float(regularizer)
    result = train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=1, max_length=48, progress=False))
    assert len(result.lm_losses) == len(result.losses) == 1
    assert result.losses[0] - result.lm_losses[0] == pytest.approx(expected_gap, rel=1e-4, abs=1e-6)
    assert (expected_gap > 0) == (method == "adaq_lora")


def test_peft_adaloras_cross_entropy_is_recorded_without_its_orthogonality_term(smol_tokenizer):
    """PEFT's AdaLoRA adds its term to the loss inside its forward; the recorded C is the wrapped model's loss."""
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "peft-adalora",
                    AdaQConfig(r=4, init_r=4, target_r=2, t_init=1, t_final=1, total_steps=3, lora_dropout=0.0))
    tuner.model.train()
    batch = collate_examples([build_example(record, smol_tokenizer, 48) for record in RECORDS[:2]],
                             pad_token_id(smol_tokenizer))
    loss, cross_entropy = training_loss(tuner, batch)
    with torch.no_grad():
        wrapped = tuner.model.base_model.model(**batch).loss  # transformers' loss, PEFT's forward bypassed
    assert float(cross_entropy) == pytest.approx(float(wrapped), rel=1e-6)
    assert float(loss) - float(cross_entropy) > 1e-4  # PEFT's term, 0.5 × a mean of norms, is in the loss only


def test_an_observer_sees_every_step_in_order_with_its_outcome(smol_tokenizer):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "adalora",
                    AdaQConfig(r=4, init_r=4, target_r=2, t_init=1, t_final=1, total_steps=4))
    seen = []
    result = train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=4, max_length=48, progress=False),
                   after_step=lambda step, outcome: seen.append((step, outcome.loss, outcome.budget)))
    assert [step for step, _, _ in seen] == [1, 2, 3, 4]
    assert [loss for _, loss, _ in seen] == result.losses and [b for _, _, b in seen] == result.budgets


def test_the_same_seed_gives_the_same_losses_and_another_seed_does_not(smol_tokenizer):
    first = run("adalora", smol_tokenizer, steps=3)[1].losses
    assert run("adalora", smol_tokenizer, steps=3)[1].losses == first
    assert run("adalora", smol_tokenizer, steps=3, seed=1)[1].losses != first


def test_a_non_finite_loss_stops_the_run_naming_its_step(smol_tokenizer, tmp_path):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "lora", AdaQConfig(r=4))
    calls = {"n": 0}
    real_regularizer = tuner.regularizer

    def poisoned():
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 3 else real_regularizer()

    tuner.regularizer = poisoned
    config = TrainConfig(max_steps=5, max_length=48, checkpoint_every=2, progress=False)
    with pytest.raises(FloatingPointError, match="at step 3 .*stays usable"):
        train(tuner, smol_tokenizer, RECORDS, config, checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2


def test_the_rank_budget_falls_to_its_target_during_training(smol_tokenizer):
    tuner, result = run("adaq_lora", smol_tokenizer, steps=5, t_init=1, t_final=2)
    n = len(tuner.allocator.layers)
    assert result.budgets[0] == 4 * n and result.budgets[-1] == 2 * n
    assert sum(tuner.rank_pattern().values()) == 2 * n


def test_every_example_is_seen_once_per_epoch_in_a_seeded_order():
    epoch = [i for step in range(6) for i in micro_batch_order(6, 1, seed=0, micro_step=step)]
    assert sorted(epoch) == list(range(6))
    next_epoch = [i for step in range(6, 12) for i in micro_batch_order(6, 1, seed=0, micro_step=step)]
    assert sorted(next_epoch) == list(range(6)) and next_epoch != epoch


def test_batched_greedy_answers_equal_one_by_one_answers(smol_tokenizer):
    model = make_tiny_llama(vocab_size=len(smol_tokenizer))
    batched = generate_answers(model, smol_tokenizer, RECORDS[:3], max_new_tokens=5, batch_size=3, progress=False)
    single = [generate_answers(model, smol_tokenizer, [r], max_new_tokens=5, batch_size=1, progress=False)[0]
              for r in RECORDS[:3]]
    assert batched == single and all(isinstance(a, str) for a in batched)


def adapter_gradients_after_one_backward(tuner) -> dict[str, bool]:
    """For every trainable tensor: did one backward of the loss give it a non-zero gradient?"""
    with torch.no_grad():  # off the start, where B = 0 (or λ = 0) makes the other factor's gradient zero
        for p in tuner.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    tuner.model.train()
    input_ids = torch.arange(1, 13).unsqueeze(0)
    tuner.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for name, p in tuner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "qlora", "adaq_lora", "peft-qlora"])
def test_with_gradient_checkpointing_every_adapter_still_gets_a_gradient(method):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(), method, AdaQConfig(r=4, init_r=4, target_r=2, init_std=0.1))
    set_gradient_checkpointing(tuner.model, True)
    got = adapter_gradients_after_one_backward(tuner)
    assert len(got) >= 2 * 7 * 2 and all(got.values()), [name for name, ok in got.items() if not ok]


def test_reentrant_checkpointing_without_input_grads_would_starve_the_adapters():
    """The failure set_gradient_checkpointing avoids: the frozen embedding's output needs no grad, so a reentrant
    checkpoint never runs the backward of the layers inside it."""
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(), "lora", AdaQConfig(r=4))
    tuner.model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=partial(checkpoint, use_reentrant=True))
    with pytest.raises(RuntimeError, match="does not require grad"):  # nothing trainable is left on the graph
        adapter_gradients_after_one_backward(tuner)


def test_training_leaves_the_model_as_it_came(smol_tokenizer):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(vocab_size=len(smol_tokenizer)), "lora", AdaQConfig(r=4))
    assert tuner.model.config.use_cache is True and not tuner.model.training
    train(tuner, smol_tokenizer, RECORDS, TrainConfig(max_steps=1, max_length=48, gradient_checkpointing=True,
                                                      progress=False))
    assert tuner.model.config.use_cache is True  # generation after training keeps its key/value cache
    assert not tuner.model.is_activation_checkpointing and not tuner.model.training


class FakeCudaGenerators:
    """torch.cuda's generator functions on a machine with two GPUs, recorded."""

    def __init__(self):
        self.states, self.restored = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)], None

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: setattr(self, "restored", states))


def test_a_checkpoint_keeps_every_cuda_generator_so_dropout_resumes_where_it_was(smol_tokenizer, tmp_path, monkeypatch):
    tuner, _ = run("lora", smol_tokenizer, steps=1, max_steps=3)
    optimizer = torch.optim.SGD([p for p in tuner.model.parameters() if p.requires_grad], lr=0.1)
    gpus = FakeCudaGenerators()
    gpus.install(monkeypatch)
    save_checkpoint(tmp_path, tuner, optimizer, 1, TrainResult())
    gpus.states = [torch.tensor([9, 9], dtype=torch.uint8)]  # the generators move on after the checkpoint
    assert load_checkpoint(tmp_path, tuner, optimizer)[0] == 1
    assert [s.tolist() for s in gpus.restored] == [[1, 2], [3]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="written on a CUDA GPU"):
        load_checkpoint(tmp_path, tuner, optimizer)


def test_paged_adamw_on_a_cpu_is_plain_adamw_and_says_so_nowhere():
    """Chapter 1: on a CPU there is nowhere to page to; bitsandbytes' paged AdamW then steps as torch's AdamW, and
    its notice saying so is filtered (it would print at every run's first step)."""
    import warnings

    from adaq_lora.training.step import make_optimizer

    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    weights = {name: torch.nn.Parameter(start.clone()) for name in ("paged_adamw", "adamw")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizers = {name: make_optimizer([w], name, 1e-2) for name, w in weights.items()}
        for step in range(3):
            for name, w in weights.items():
                (w.sin().sum() * (step + 1)).backward()
                optimizers[name].step()
                optimizers[name].zero_grad()
    assert not [w for w in caught if "Paged optimizers" in str(w.message)]
    assert not torch.equal(weights["adamw"], start)
    torch.testing.assert_close(weights["paged_adamw"], weights["adamw"], rtol=1e-5, atol=1e-6)
