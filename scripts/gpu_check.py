"""What only a CUDA GPU exercises, in one run of a few minutes, written to one JSON report.

    python scripts/gpu_check.py --out gpu_report.json          # on one CUDA GPU, offline
    python scripts/gpu_check.py --smoke --out /tmp/report.json # the same code on a CPU, at toy sizes

Memory and speed do not depend on the weights' values, so every model is built with random weights from a real
configuration: SmolLM2-135M-Instruct's (data/smollm2-135m-instruct.json) and ChatGLM2-6B's published one
(data/chatglm2-6b.json, run as transformers' GLM). It imports only torch, transformers, peft, accelerate,
sentencepiece and bitsandbytes (not datasets, jieba or nltk), and needs no network. The checks:

1. kernels: bitsandbytes' CUDA `dequantize_4bit` against the NF4 reference (quant/nf4.py), and a bfloat16
   `Linear4bit` forward against x · reference(W)ᵀ;
2. quantize_on_load: the SmolLM2 shape saved as safetensors, its precision plan scored from the files and the
   model loaded by transformers in NF4 and the plan's other matrices read again from the files (quant/file_plan.py);
3. compaction of paged AdamW's state in CUDA memory, and exact resume on CUDA across it (adaq_lora, dropout on,
   so the CUDA generator's state in the checkpoint matters);
4. ChatGLM2-6B at 512 tokens, bfloat16, every method of Tables 1-2 and PEFT's QLoRA and AdaLoRA: the peak of one
   step by `torch.cuda.max_memory_allocated` beside the predictor (measure/memory_model.py), with and without
   gradient checkpointing, and tokens per second with checkpointing on, as the paper profile trains.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from this checkout, installed or not

from adaq_lora.atomic import write_json_atomic  # noqa: E402
from adaq_lora.chatglm import glm_config  # noqa: E402
from adaq_lora.config import AdaQConfig, TrainConfig  # noqa: E402
from adaq_lora.measure.memory_model import predict_training_memory  # noqa: E402
from adaq_lora.profiles import load_profile  # noqa: E402
from adaq_lora.quant.file_plan import plan_precision_from_files  # noqa: E402
from adaq_lora.quant.kernels import import_bitsandbytes, reference_dequantize  # noqa: E402
from adaq_lora.training import make_optimizer, set_gradient_checkpointing, train, training_step  # noqa: E402
from adaq_lora.tuners import prepare  # noqa: E402

PACKAGES = ("torch", "transformers", "peft", "accelerate", "sentencepiece", "bitsandbytes")
SMOL = json.loads((ROOT / "data" / "smollm2-135m-instruct.json").read_text())
GLM2 = json.loads((ROOT / "data" / "chatglm2-6b.json").read_text())
SMOKE_SMOL = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=512)
SMOKE_GLM2 = dict(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4, kv_channels=32,
                  multi_query_group_num=2, padded_vocab_size=512)
TABLE_METHODS = ("base", "lora", "qlora", "adaq_lora")  # the rows of Tables 1-2
PEERS = ("peft-qlora", "peft-adalora")


def smol_model(smoke: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(SMOL | SMOKE_SMOL if smoke else SMOL))
    with torch.device(device):
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def glm2_model(smoke: bool, device: str):
    from transformers import GlmForCausalLM

    config = glm_config(GLM2 | SMOKE_GLM2 if smoke else GLM2)
    with torch.device(device):
        return GlmForCausalLM._from_config(config, dtype=torch.bfloat16).eval()


def batch(vocab: int, tokens: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_kernels(device: str) -> dict:
    bnb = import_bitsandbytes()
    report = {}
    for width in (64, 96, 4096):
        weight = torch.randn(256, width, generator=torch.Generator().manual_seed(width)).to(device)
        for double_quant in (False, True):
            packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                                         compress_statistics=double_quant)
            decoded = bnb.functional.dequantize_4bit(packed, state)
            difference = (decoded.float() - reference_dequantize(packed, state).float()).abs().max()
            report[f"dequantize width {width}{' double quant' if double_quant else ''}"] = float(difference)
        layer = bnb.nn.Linear4bit(width, 256, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, blocksize=64, quant_type="nf4",
                                         module=layer)
        layer = layer.to(device)
        inputs = torch.randn(8, width, device=device, dtype=torch.bfloat16)
        expected = inputs.float() @ reference_dequantize(layer.weight.data, layer.weight.quant_state).float().T
        with torch.no_grad():
            got = layer(inputs).float()
        report[f"Linear4bit bf16 relative error width {width}"] = float((got - expected).norm() / expected.norm())
    return report


def check_quantize_on_load(smoke: bool, device: str) -> dict:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    budget = load_profile("paper").adapter.precision_budget_bits
    with tempfile.TemporaryDirectory() as folder:
        smol_model(smoke, "cpu").save_pretrained(folder)
        began = time.perf_counter()
        plan = plan_precision_from_files(folder, budget, device, progress=False)
        plan_seconds = time.perf_counter() - began
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=quantization,
                                                     device_map=device)
        config = AdaQConfig(precision_budget_bits=budget, compute_dtype="bfloat16", total_steps=100)
        tuner = prepare(model, "adaq_lora", config, precision_plan=plan)  # reads the plan's other matrices from folder
    with torch.no_grad():
        logits = tuner.model(**batch(model.config.vocab_size, 64, device, 0)).logits
    counts = {p: list(plan.precisions.values()).count(p) for p in ("nf4", "int8", "bf16")}
    return {"plan": plan.summary(), "plan_seconds": plan_seconds, "precisions": counts,
            "decoder_matrices_above_nf4": sum(1 for n, p in plan.precisions.items() if ".layers." in n and p != "nf4"),
            "logits_finite": bool(torch.isfinite(logits).all())}


def adaq_lora_tuner(smoke: bool, device: str, steps: int):
    """adaq_lora on the SmolLM2 shape, dropout on, its final phase (which compacts the ranks) from step 3."""
    torch.manual_seed(0)
    model = smol_model(smoke, device)
    config = AdaQConfig(compute_dtype="bfloat16", lora_dropout=0.1, total_steps=steps, t_init=1, t_final=steps - 3,
                        precision_budget_bits=None)
    examples = [{key: value[0].tolist() for key, value in batch(model.config.vocab_size, 64, "cpu", i).items()}
                for i in range(8)]
    return prepare(model, "adaq_lora", config), examples


def check_compaction(smoke: bool, device: str) -> dict:
    tuner, examples = adaq_lora_tuner(smoke, device, 6)
    optimizer = make_optimizer([p for p in tuner.model.parameters() if p.requires_grad], "paged_adamw", 1e-3)
    before = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    for example in examples[:6]:
        training_step(tuner, [{k: torch.tensor([v], device=device) for k, v in example.items()}], optimizer, 0.1)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {"compacted": bool(tuner.allocator.compacted), "optimizer_parameters_before": before,
            "optimizer_parameters_after": sum(p.numel() for p in params),
            "state_shapes_match": all(optimizer.state[p]["state1"].shape == p.shape for p in params),
            "state_paged": all(getattr(optimizer.state[p]["state1"], "is_paged", False) for p in params),
            "state_device": str(optimizer.state[params[0]]["state1"].device)}


def check_resume(smoke: bool, device: str) -> dict:
    """Six steps straight against three, a checkpoint, and three more after a fresh start: the adapters."""
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)  # train() reads only the pad id here
    finished = []
    with tempfile.TemporaryDirectory() as folder:
        for stop, checkpoint_dir in ((6, None), (3, Path(folder)), (6, Path(folder))):
            tuner, examples = adaq_lora_tuner(smoke, device, 6)
            train(tuner, tokenizer, examples, TrainConfig(max_steps=stop, checkpoint_every=3, max_length=64,
                                                          progress=False), checkpoint_dir, examples=examples)
            finished.append({n: p.detach().float() for n, p in tuner.model.named_parameters() if p.requires_grad})
    straight, resumed = finished[0], finished[2]
    # a matrix the budget left no triplet holds empty tensors: their difference is nothing
    difference = max(float((straight[n] - resumed[n]).abs().max()) for n in straight if straight[n].numel())
    return {"max_abs_difference": difference, "exact": difference == 0.0}


def one_method(method: str, smoke: bool, device: str, seq_len: int, steps: int) -> list[dict]:
    """Peak memory of one step (checkpointing off and on) beside the prediction, and tokens per second (on)."""
    paper = load_profile("paper")
    config = replace(paper.adapter, total_steps=1000, t_init=100, t_final=200)
    torch.manual_seed(0)
    model = glm2_model(smoke, device)
    vocab = model.config.vocab_size
    tuner = prepare(model, method, config)
    rows = []
    trains = method != "base"
    optimizer = make_optimizer([p for p in tuner.model.parameters() if p.requires_grad], "paged_adamw",
                               config.learning_rate) if trains else None
    for checkpointing in (False, True):
        set_gradient_checkpointing(tuner.model, checkpointing)
        tuner.model.train()
        seconds = []
        for step in range(1 + (steps if checkpointing and trains else 1)):
            data = batch(vocab, seq_len, device, step)
            if device == "cuda" and step == 1:
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            began = time.perf_counter()
            if trains:
                training_step(tuner, [data], optimizer, paper.train.max_grad_norm)
            else:
                with torch.no_grad():
                    tuner.model(**data, use_cache=False)
            synchronize(device)
            seconds.append(time.perf_counter() - began)
        predicted = None if method.startswith("peft") else predict_training_memory(
            GLM2 | SMOKE_GLM2 if smoke else GLM2, method, config, seq_len, weight_dtype=torch.bfloat16,
            device="cuda", gradient_checkpointing=checkpointing)
        rows.append({
            "method": method, "gradient_checkpointing": checkpointing,
            "measured_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "predicted_mb": predicted.total_mb if predicted else None,
            # bitsandbytes' paged state lives in CUDA managed memory, which torch's allocator does not count
            "predicted_without_optimizer_state_mb": predicted.total_mb - predicted.optimizer_state_mb if predicted else None,
            "median_step_seconds": statistics.median(seconds[1:]),
            "tokens_per_second": seq_len / statistics.median(seconds[1:]),
        })
    del tuner, model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_report.json"), help="the JSON report to write")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, not the GPU")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per step for ChatGLM2-6B")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():  # the first CUDA call: nothing above needs a GPU
        print(f"no CUDA GPU visible to torch {torch.__version__}: run this on a GPU node, or pass --smoke to check "
              "the script on a CPU", file=sys.stderr)
        return 2
    began = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke run: toy sizes)",
              "versions": {name: metadata.version(name) for name in PACKAGES}, "seq_len": args.seq_len}
    stages = [("kernels", lambda: check_kernels(device)),
              ("quantize_on_load", lambda: check_quantize_on_load(args.smoke, device)),
              ("compaction", lambda: check_compaction(args.smoke, device)),
              ("resume", lambda: check_resume(args.smoke, device))]
    stages += [(f"chatglm2_6b {method}", lambda m=method: one_method(m, args.smoke, device, args.seq_len, args.steps))
               for method in TABLE_METHODS + PEERS]
    for name, stage in stages:
        stage_began = time.perf_counter()
        report[name] = stage()
        print(f"{name}: done in {time.perf_counter() - stage_began:.1f} s", file=sys.stderr, flush=True)
        report["seconds"] = time.perf_counter() - began
        write_json_atomic(args.out, report)  # after every stage: a run cut short keeps what it measured
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
