"""The precision plan for the frozen base (precision.py) and the blockwise storage it uses (blockwise.py)."""
import bitsandbytes.functional as bnbf
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adaq_lora import AdaQConfig, prepare
from adaq_lora.quant.blockwise import BlockwiseEmbedding, BlockwiseLinear, BlockwiseMatrix, stored_bytes
from adaq_lora.quant.normal_float import decode_codes
from adaq_lora.quant.quantize import dequantized_weight
from adaq_lora.quant.precision import (PRECISIONS, PrecisionPlan, apply_precision_plan, frozen_matrices,
                                 order_by_importance, plan_precision, score_matrix)
from conftest import TINY_LLAMA, make_tiny_llama


def tied_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=True)).eval()


def calibration(n: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 10), generator=generator)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    return batches


def weighted_error(plan: PrecisionPlan, model) -> float:
    """½ Σ (W − stored W)² over the planned matrices (F ≡ 1), from the stored model itself."""
    reference = make_tiny_llama()
    total = 0.0
    for name in plan.precisions:
        original = reference.get_submodule(name).weight
        stored = model.get_submodule(name)
        stored = getattr(stored, "base_layer", stored)
        decoded = stored.weight if isinstance(stored, (BlockwiseEmbedding, BlockwiseLinear)) else dequantized_weight(stored)
        total += 0.5 * float(((original - decoded.float()) ** 2).sum())
    return total


def test_blockwise_rows_equal_bitsandbytes_dequantization_for_nf4_and_8_bit():
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    codes, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(BlockwiseMatrix(weight, "nf4").rows(), bnbf.dequantize_4bit(codes, state))
    codes8, state8 = bnbf.quantize_blockwise(weight, blocksize=64)
    assert torch.equal(BlockwiseMatrix(weight, "int8").rows(), bnbf.dequantize_blockwise(codes8, state8))
    some = torch.tensor([90, 3, 3, 41])
    for precision in PRECISIONS:
        matrix = BlockwiseMatrix(weight, precision)
        assert torch.equal(matrix.rows(some), matrix.rows()[some])


@pytest.mark.parametrize("precision,bits", [("nf2", 2.13), ("nf3", 3.13), ("nf4", 4.13), ("int8", 8.5), ("bf16", 16.0)])
def test_bits_per_weight_of_each_precision(precision, bits):
    matrix = BlockwiseMatrix(torch.randn(1024, 1024), precision)  # large enough that the code tables vanish
    assert 8 * matrix.nbytes / 1024**2 == pytest.approx(bits, abs=0.01)


@pytest.mark.parametrize("precision", ["nf2", "nf3", "int8"])
def test_blockwise_linear_forward_and_backward_equal_a_dense_matmul_with_the_decoded_weight(monkeypatch, precision):
    monkeypatch.setattr("adaq_lora.quant.blockwise.CHUNK_ELEMENTS", 32 * 64)  # chunks of 32 rows: several
    layer = BlockwiseLinear(BlockwiseMatrix(torch.randn(100, 64), precision))
    x = torch.randn(2, 5, 64, requires_grad=True)
    dense_x = x.detach().clone().requires_grad_(True)
    out, dense_out = layer(x), dense_x @ layer.weight.T
    torch.testing.assert_close(out, dense_out)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (dense_out * upstream).sum().backward()
    torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-5, atol=1e-5)  # chunked sums: another rounding order


@pytest.mark.parametrize("precision", ["nf2", "nf3"])
def test_nf3_and_nf2_rows_unpacked_a_group_at_a_time_equal_one_whole_decode_bit_for_bit(monkeypatch, precision):
    matrix = BlockwiseMatrix(torch.randn(100, 128).to(torch.bfloat16), precision)
    levels = decode_codes(matrix.codes, int(precision[-1]), matrix.table).view(100, -1, 64)
    whole = (levels * matrix._row_scales(slice(None)).unsqueeze(-1)).view(100, 128).to(torch.bfloat16)
    monkeypatch.setattr("adaq_lora.quant.blockwise.DECODE_ELEMENTS", 7 * 128)  # groups of 7 rows, the last shorter
    for index in (slice(None), slice(3, 60), torch.tensor([99, 0, 41, 41])):
        assert torch.equal(matrix.rows(index), whole[index])


def test_a_blockwise_layer_keeps_no_input_for_backward():
    layer = BlockwiseLinear(BlockwiseMatrix(torch.randn(100, 64), "nf3"))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        out = layer(torch.randn(2, 5, 64, requires_grad=True))
    assert out.requires_grad and len(saved) == 0  # ∂L/∂x needs only the weight, decoded again in backward


def test_the_plan_meets_its_budget_and_more_budget_never_costs_more_error():
    errors = []
    for budget in (2.5, 3.0, 4.2, 6.0, 9.0, 16.0):
        model = make_tiny_llama()
        plan = plan_precision(model, budget)
        assert plan.bits_per_parameter <= budget
        apply_precision_plan(model, plan)
        errors.append(weighted_error(plan, model))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 * errors[0]


def test_a_more_important_matrix_never_gets_fewer_bits_than_a_less_important_one_of_its_shape():
    plan = plan_precision(make_tiny_llama(), 6.0, calibration())
    assert plan.calibrated and set(plan.precisions.values()) >= {"nf4", "int8"}
    model = make_tiny_llama()
    shapes = {name: tuple(model.get_submodule(name).weight.shape) for name in plan.precisions}
    for a in plan.precisions:
        for b in plan.precisions:
            if shapes[a] == shapes[b] and plan.importance[a] > plan.importance[b]:
                assert PRECISIONS.index(plan.precisions[a]) >= PRECISIONS.index(plan.precisions[b])


def test_reordering_by_importance_keeps_the_bytes_and_gives_the_bits_to_the_important():
    chosen = {"a": "nf4", "b": "bf16", "c": "int8"}
    reordered = order_by_importance(chosen, {"a": 3.0, "b": 1.0, "c": 2.0}, dict.fromkeys(chosen, "same shape"))
    assert reordered == {"a": "bf16", "b": "nf4", "c": "int8"}


def test_a_budget_below_nf2_everywhere_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match=r"below what the fewest bits everywhere take \(2\.\d\d: NF2"):
        plan_precision(make_tiny_llama(), 2.1)


def test_a_tied_embedding_and_head_are_planned_once_and_share_one_storage():
    model = tied_llama()
    assert frozen_matrices(model)["model.embed_tokens"] == ["lm_head"]
    plan = plan_precision(model, 4.5)
    assert "lm_head" not in plan.precisions and plan.tied == {"model.embed_tokens": ["lm_head"]}
    apply_precision_plan(model, plan)
    assert isinstance(model.model.embed_tokens, BlockwiseEmbedding) and isinstance(model.lm_head, BlockwiseLinear)
    assert model.model.embed_tokens.matrix is model.lm_head.matrix


def test_the_saved_plan_reloads_and_stores_a_fresh_model_identically(tmp_path, token_batch):
    plan = plan_precision(make_tiny_llama(), 5.0, calibration())
    plan.save(tmp_path)
    reloaded = PrecisionPlan.load(tmp_path)
    assert reloaded == plan
    first, second = apply_precision_plan(make_tiny_llama(), plan), apply_precision_plan(make_tiny_llama(), reloaded)
    with torch.no_grad():
        assert torch.equal(first(**token_batch).logits, second(**token_batch).logits)


def test_adaq_lora_stores_embedding_and_head_in_fewer_bits_and_keeps_delta_w_zero_at_start(token_batch):
    tuner = prepare(make_tiny_llama(), "adaq_lora", AdaQConfig(precision_budget_bits=4.5), calibration=calibration())
    model, plan = tuner.model, tuner.precision_plan
    assert isinstance(model.model.embed_tokens, BlockwiseEmbedding) and isinstance(model.lm_head, BlockwiseLinear)
    stored = apply_precision_plan(make_tiny_llama(), plan)
    with torch.no_grad():
        torch.testing.assert_close(model(**token_batch).logits, stored(**token_batch).logits)
    for table in (model.model.embed_tokens.matrix, model.lm_head.matrix):
        assert 8 * table.nbytes / (TINY_LLAMA["vocab_size"] * TINY_LLAMA["hidden_size"]) < 9
    assert plan.bits_per_parameter <= 4.5


def test_qlora_layout_is_kept_when_the_budget_is_none():
    tuner = prepare(make_tiny_llama(), "adaq_lora", AdaQConfig(precision_budget_bits=None))
    model = tuner.model
    assert tuner.precision_plan is None
    assert type(model.model.embed_tokens) is torch.nn.Embedding


def test_saved_adaq_lora_adapters_reload_onto_a_base_stored_by_the_same_plan(tmp_path, token_batch):
    from adaq_lora import load_adapters, save_adapters

    tuner = prepare(make_tiny_llama(), "adaq_lora", AdaQConfig(precision_budget_bits=5.0), calibration=calibration())
    save_adapters(tuner, tmp_path)
    reloaded = load_adapters(make_tiny_llama(), tmp_path)  # no calibration data: the plan comes from the folder
    assert reloaded.precision_plan == tuner.precision_plan
    with torch.no_grad():
        assert torch.equal(tuner.model(**token_batch).logits, reloaded.model(**token_batch).logits)


@pytest.mark.parametrize("shape", [(3, 64), (7, 640), (129, 192)])
def test_the_bytes_a_precision_stores_are_known_before_quantizing(shape):
    weight = torch.randn(*shape)
    for precision in PRECISIONS:
        assert stored_bytes(shape, precision) == BlockwiseMatrix(weight, precision).nbytes, precision


def test_a_large_matrix_scored_on_a_sample_of_its_rows_is_within_one_percent_of_its_full_score(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    rows_spread = torch.rand(4096, 1, generator=generator) * 3  # rows of different scale, as real matrices have
    weight = torch.randn(4096, 2048, generator=generator) * rows_spread  # 8.4 M weights: sampled to 4.2 M
    sampled = score_matrix(weight, floor="nf3")
    monkeypatch.setattr("adaq_lora.quant.precision.SAMPLED_WEIGHTS", weight.numel())
    whole = score_matrix(weight, floor="nf3")
    assert sampled[1] == whole[1]  # the bytes are the whole matrix's either way
    for precision, error in whole[0].items():
        assert sampled[0][precision] == pytest.approx(error, rel=0.01), precision


def test_a_decoding_chunk_holds_a_bounded_number_of_weights_however_wide_the_matrix():
    from adaq_lora.quant.blockwise import CHUNK_ELEMENTS, chunk_rows

    assert chunk_rows(576) == 4096  # the default model's chunks: 4,096 rows of its 576-wide matrices
    assert chunk_rows(13696) == 172 and 172 * 13696 <= CHUNK_ELEMENTS  # ChatGLM2-6B's down projection: 9 MB, not 214
    assert chunk_rows(10 * CHUNK_ELEMENTS) == 1  # at least a row


@pytest.mark.parametrize("precision", ["nf2", "nf3", "nf4"])
def test_a_row_s_scales_decode_alone_bit_for_bit_as_bitsandbytes_decodes_all_of_them(precision):
    matrix = BlockwiseMatrix(torch.randn(300, 192) * torch.rand(300, 1), precision)  # 900 scales: 4 groups of 256
    state = bnbf.QuantState(absmax=matrix.absmax_scales, code=matrix.absmax_table, blocksize=256, dtype=torch.float32)
    every = (bnbf.dequantize_blockwise(matrix.absmax_codes, state) + matrix.absmax_offset).view(300, 3)
    for index in (slice(None), slice(85, 171), torch.tensor([299, 0, 86, 86])):
        assert torch.equal(matrix._row_scales(index), every[index])
