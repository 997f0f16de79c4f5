"""The precision plan of a base loaded in 4 bits (the paper profile's path): scored from the model's files, it
decides over the decoder too, and the base transformers loads is stored exactly as the plan says."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from adaq_lora import AdaQConfig, prepare
from adaq_lora.quant.blockwise import BlockwiseEmbedding, BlockwiseLinear
from adaq_lora.quant.file_plan import plan_precision_from_files
from adaq_lora.quant.kernels import import_bitsandbytes
from adaq_lora.quant.precision import plan_precision
from conftest import TINY_LLAMA

BUDGET = 5.0  # above NF4 everywhere (~4.1 bits) and below 8 bits everywhere: some decoder matrices are raised
CONFIG = AdaQConfig(r=4, init_r=4, target_r=2, precision_budget_bits=BUDGET)


def saved_llama(folder, tied: bool):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tied)).eval()
    model.save_pretrained(folder)
    return model


def load_in_4_bits(folder):
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=quantization).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_the_plan_scored_from_the_files_is_the_data_free_plan_of_the_model_in_memory(tmp_path, tied):
    model = saved_llama(tmp_path, tied)
    from_files = plan_precision_from_files(tmp_path, BUDGET, progress=False)
    in_memory = plan_precision(model, BUDGET)
    assert from_files.precisions == in_memory.precisions
    assert from_files.nbytes == in_memory.nbytes and from_files.tied == in_memory.tied
    assert from_files.importance == pytest.approx(in_memory.importance, rel=1e-6)
    assert not from_files.calibrated
    decoder = {name: p for name, p in from_files.precisions.items() if ".layers." in name}
    assert len(decoder) == 2 * 7 and {"nf4", "int8"} <= set(decoder.values())  # decisions over the decoder


@pytest.mark.parametrize("budget", [BUDGET, 3.0], ids=["above-nf4", "below-nf4"])
def test_a_base_loaded_in_4_bits_is_stored_as_the_plan_says_and_computes_as_the_in_memory_path(tmp_path, budget):
    """transformers loads every decoder matrix in NF4; those planned otherwise are read again from the files."""
    model = saved_llama(tmp_path, tied=False)
    plan = plan_precision_from_files(tmp_path, budget, progress=False)
    assert plan.source == str(tmp_path)
    decoder = {p for name, p in plan.precisions.items() if ".layers." in name}
    assert decoder & ({"int8", "bf16"} if budget == BUDGET else {"nf2", "nf3"})  # the case is really tested
    config = replace(CONFIG, precision_budget_bits=budget)
    loaded = prepare(load_in_4_bits(tmp_path), "adaq_lora", config, precision_plan=plan)
    linear4bit = import_bitsandbytes().nn.Linear4bit
    for name, precision in plan.precisions.items():
        layer = loaded.model.get_submodule(name)
        layer = getattr(layer, "base_layer", layer)
        if precision == "nf4" and ".layers." in name:
            assert isinstance(layer, linear4bit), name
        else:
            assert isinstance(layer, (BlockwiseLinear, BlockwiseEmbedding)) and layer.matrix.precision == precision, name
    torch.manual_seed(0)
    in_memory = prepare(model, "adaq_lora", config, precision_plan=plan)
    input_ids = torch.arange(1, 11).unsqueeze(0)
    with torch.no_grad():
        expected, got = in_memory.model(input_ids=input_ids).logits, loaded.model(input_ids=input_ids).logits
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


def test_a_plan_without_its_files_is_refused_on_a_base_loaded_in_4_bits(tmp_path):
    saved_llama(tmp_path, tied=False)
    plan = plan_precision_from_files(tmp_path, BUDGET, progress=False)
    plan.source = None  # as an in-memory plan has none
    with pytest.raises(ValueError, match="was loaded in 4 bits but the plan stores it at int8, and the plan does not "
                                         "say which files"):
        prepare(load_in_4_bits(tmp_path), "adaq_lora", CONFIG, precision_plan=plan)
