"""Claims about the memory of a training step: measured by the profiler, predicted from the config, the two agree."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adaq_lora import AdaQConfig, load_model, prepare
from adaq_lora.measure.memory import CATEGORIES, MB, measure_training_memory, static_tensors, token_batch
from adaq_lora.measure.memory_model import nf4_bytes, paper_memory_comparison, predict_training_memory
from adaq_lora.measure.model_shape import ModelShape, load_chatglm2_6b_config
from adaq_lora.profiles import load_profile
from adaq_lora.quant.quantize import quantize_linear
from adaq_lora.training import set_gradient_checkpointing

SMALL_LLAMA = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
SMALL_CONFIG = AdaQConfig(r=4, init_r=4, target_r=2, precision_budget_bits=None)  # exact checks: QLoRA layout; the plan is checked on the default model


def measured(model, method, config, seq_len, vocab_size):
    """Apply `method` and measure one step as the training loop runs it (regularizer and allocator included)."""
    torch.manual_seed(0)
    return measure_training_memory(prepare(model, method, config), token_batch(vocab_size, 1, seq_len))


@pytest.fixture(scope="module")
def small_llama_memory():
    """The measured breakdown of every method on a 1.2 M-parameter Llama whose weights outweigh its activations."""
    results = {}
    for method in ("base", "full", "lora", "qlora", "adalora", "adaq_lora"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA))
        results[method] = measured(model, method, SMALL_CONFIG, 16, SMALL_LLAMA["vocab_size"])
    return results


def test_the_categories_add_up_to_the_measured_peak(small_llama_memory):
    for breakdown in small_llama_memory.values():
        assert set(breakdown.categories_mb) == set(CATEGORIES)
        assert sum(breakdown.categories_mb.values()) == pytest.approx(breakdown.total_mb, abs=1e-9)


def test_measured_memory_follows_bytes_per_weight(small_llama_memory):
    full, lora, qlora = (small_llama_memory[m] for m in ("full", "lora", "qlora"))
    weights = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA)).parameters())
    assert lora.full_precision_weights_mb * MB == weights * 4  # float32: 4 bytes per weight
    assert full.gradients_mb == full.full_precision_weights_mb  # one float32 gradient per weight
    assert full.optimizer_state_mb * MB >= 2 * weights * 4  # AdamW's m and v, and the update's temporaries
    shape = ModelShape.from_config(LlamaConfig(**SMALL_LLAMA))
    decoder = shape.num_layers * sum(i * o for i, o in shape.linears().values())
    nf4 = shape.num_layers * sum(nf4_bytes(i * o, True) for i, o in shape.linears().values())
    assert qlora.quantized_weights_mb * MB == nf4
    assert 0.5 < qlora.quantized_weights_mb * MB / decoder < 0.55  # 4 bits, block scales and a table per matrix
    assert qlora.total_mb < 0.5 * lora.total_mb  # 4.2 instead of 32 bits per decoder weight
    assert full.total_mb > 3 * lora.total_mb  # + a gradient, two moments and the update's temporaries per weight


def test_prediction_matches_measurement_on_a_small_llama(small_llama_memory):
    config = LlamaConfig(**SMALL_LLAMA)
    for method, breakdown in small_llama_memory.items():
        predicted = predict_training_memory(config, method, SMALL_CONFIG, seq_len=16, batch_size=1)
        assert predicted.total_mb == pytest.approx(breakdown.total_mb, rel=0.05), method
        for name in ("quantized_weights", "full_precision_weights", "adapters", "optimizer_state"):
            expected = pytest.approx(breakdown.categories_mb[name], rel=0.01)
            assert predicted.categories_mb[name] == expected, (method, name)


@pytest.mark.parametrize("dtype, attention, methods", [
    (torch.bfloat16, "sdpa", ("full", "lora", "qlora", "adaq_lora")),  # the paper profile's dtype, on the CPU
    (torch.float32, "eager", ("lora",)),
])
def test_prediction_matches_measurement_in_bfloat16_and_with_eager_attention(dtype, attention, methods):
    """The CPU's matmul path is pinned to torch's own kernels: where the CPU has AVX-512, bfloat16 matmuls go to
    oneDNN otherwise, whose temporaries move the peak inside a 4-bit layer (qlora measured 2.48 MiB of
    activations there against 2.56 with torch's kernels, predicted 2.64), and a test's outcome must not depend on
    the CPU it runs on. A GPU, the paper's setting, takes neither path."""
    with torch.backends.mkldnn.flags(enabled=False):
        check_prediction_in(dtype, attention, methods)


def check_prediction_in(dtype, attention, methods):
    for method in methods:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA, attn_implementation=attention)).to(dtype)
        config = AdaQConfig(r=4, init_r=4, target_r=2, compute_dtype=str(dtype).removeprefix("torch."),
                            precision_budget_bits=None)
        breakdown = measured(model, method, config, 64, SMALL_LLAMA["vocab_size"])
        predicted = predict_training_memory(model.config, method, config, seq_len=64, batch_size=1, weight_dtype=dtype)
        assert predicted.total_mb == pytest.approx(breakdown.total_mb, rel=0.05), method
        assert predicted.activations_mb == pytest.approx(breakdown.activations_mb, rel=0.05, abs=0.01), method


def test_the_nf4_formula_is_what_bitsandbytes_stores():
    for double_quant in (True, False):
        layer = quantize_linear(torch.nn.Linear(576, 1536, bias=False), "nf4", double_quant, torch.float32)
        stored = sum(nbytes for _, nbytes in static_tensors(layer).values())
        assert stored == nf4_bytes(576 * 1536, double_quant)
    assert nf4_bytes(576 * 1536, True) == 442_368 + 13_824 + 216 + 1_024 + 64 + 4


DEEP_LLAMA = dict(SMALL_LLAMA, num_hidden_layers=6, vocab_size=128)  # activations outweigh the loss's tensors


@pytest.mark.parametrize("method", ["lora", "qlora", "adalora", "adaq_lora"])
def test_gradient_checkpointing_keeps_one_input_per_layer_and_the_prediction_follows(method):
    """With checkpointing a layer keeps only its input and recomputes the rest in its backward (the paper
    profile's setting): less memory, and the predictor's term for it (candidate R) agrees with the measurement."""
    config, seq_len = LlamaConfig(**DEEP_LLAMA), 64
    runs = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        tuner = prepare(LlamaForCausalLM(config), method, SMALL_CONFIG)
        set_gradient_checkpointing(tuner.model, checkpointing)
        runs[checkpointing] = measure_training_memory(tuner, token_batch(config.vocab_size, 1, seq_len))
    predicted = predict_training_memory(config, method, SMALL_CONFIG, seq_len, gradient_checkpointing=True)
    assert runs[True].activations_mb < 0.5 * runs[False].activations_mb
    assert predicted.total_mb == pytest.approx(runs[True].total_mb, rel=0.05)
    # left out: the recomputed forward's short-lived temporaries, within 10% of the activations here
    assert predicted.activations_mb == pytest.approx(runs[True].activations_mb, rel=0.10)


@pytest.fixture(scope="module")
def default_model():
    return load_model()[0]


@pytest.mark.parametrize("method", ["base", "full", "lora", "qlora", "adalora", "adaq_lora"])
def test_prediction_is_within_15_percent_of_the_measurement_on_the_default_model(default_model, method):
    model, config = copy.deepcopy(default_model), AdaQConfig()
    breakdown = measured(model, method, config, 128, model.config.vocab_size)
    predicted = predict_training_memory(model.config, method, config, seq_len=128, batch_size=1)
    assert predicted.total_mb == pytest.approx(breakdown.total_mb, rel=0.15), (predicted, breakdown)


def test_chatglm2_6b_memory_follows_the_storage_of_each_method():
    glm = load_chatglm2_6b_config()
    assert ModelShape.from_config(glm).parameter_count() == 6_243_584_000
    paper_budget = AdaQConfig(precision_budget_bits=load_profile("paper").adapter.precision_budget_bits)
    predicted = {method: predict_training_memory(glm, method, paper_budget, 512, 1, weight_dtype=torch.bfloat16,
                                                 device="cuda") for method in ("full", "lora", "qlora", "adaq_lora")}
    totals = {method: breakdown.total_mb for method, breakdown in predicted.items()}
    assert totals["full"] > totals["lora"] > totals["qlora"] > totals["adaq_lora"]
    assert 10_000 < totals["lora"] < 100_000  # tens of GB: 12 GB of bfloat16 weights and the activations
    assert totals["qlora"] < 0.6 * totals["lora"]
    # the precision plan stores ChatGLM2's embedding and output layer (1 GB in bfloat16) at ~4.5 bits; masking
    # triplets frees nothing, so at init_r ADAQ-LoRA's adapters, their Adam state and the EMAs still cost more
    without_plan = predict_training_memory(glm, "adaq_lora", AdaQConfig(precision_budget_bits=None), 512, 1,
                                           weight_dtype=torch.bfloat16, device="cuda").total_mb
    assert 0 < without_plan - totals["qlora"] < 0.05 * totals["qlora"]
    weights = {method: predicted[method].quantized_weights_mb + predicted[method].full_precision_weights_mb
               for method in ("qlora", "adaq_lora")}
    assert weights["qlora"] - weights["adaq_lora"] > 450  # 4.5 bits on all 6.2 B weights against QLoRA's 5.1
    # at init_r = 12 the SVD adapters on q, k and v apart (the GLM layout), their Adam state and EMAs take back most
    assert 150 < totals["qlora"] - totals["adaq_lora"] < 300


def test_paper_comparison_lists_the_published_values_beside_ours():
    rows = paper_memory_comparison(seq_len=512)
    assert [(r.row, r.method) for r in rows] == [("GLM2", "base"), ("GLM2+LoRA", "lora"), ("GLM2+QLoRA", "qlora"),
                                                 ("GLM2+ADAQ-LoRA", "adaq_lora")]
    assert [r.published_alpaca_chinese_mb for r in rows] == [51875, 40132, 9231, 8446]
    assert [r.published_school_math_mb for r in rows] == [48885, 59551, 12626, 9072]
    base = rows[0].predicted
    assert base.gradients_mb == base.optimizer_state_mb == base.adapters_mb == 0
    assert paper_memory_comparison(seq_len=1024)[1].predicted.activations_mb > 1.9 * rows[1].predicted.activations_mb


def test_a_bad_method_or_an_incomplete_config_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        predict_training_memory(LlamaConfig(**SMALL_LLAMA), "dora")
    incomplete = {k: v for k, v in load_chatglm2_6b_config().items() if k != "ffn_hidden_size"}
    with pytest.raises(ValueError, match="lacks \\['ffn_hidden_size'\\]"):
        predict_training_memory(incomplete, "lora")
    # ChatGLM2 runs as transformers' GLM: its fused query_key_value is split into q, k and v projections
    with pytest.raises(ValueError, match="unknown target module\\(s\\) \\['query_key_value'\\]"):
        predict_training_memory(load_chatglm2_6b_config(), "lora", AdaQConfig(target_modules=("query_key_value",)))
    with pytest.raises(ValueError, match="needs input_ids and labels"):
        measure_training_memory(prepare(LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA)), "base"),
                                {"input_ids": torch.zeros(1, 4)})


def test_chatglm2_6b_fine_tunes_in_under_5_gib_with_checkpointing_by_prediction():
    """The paper's consumer-card motivation, as the paper profile trains (checkpointing, fused loss, 4.5 bits)."""
    rows = {row.method: row.predicted.total_mb for row in paper_memory_comparison(seq_len=512)}
    assert rows["adaq_lora"] < 5 * 1024 < rows["lora"]
    # NF4 everywhere (4.13 bits) is the plan's floor and the SVD state at init_r costs more than LoRA's, so
    # ADAQ-LoRA stays above 0.85 × QLoRA: 0.94 here
    assert 0.85 < rows["adaq_lora"] / rows["qlora"] < 1.0
