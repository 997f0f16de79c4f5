"""The peak memory of one training step, predicted from a model's configuration (paper Tables 1-2; book chapter 8).

The same step and categories as `adaq_lora.measure.memory` measures. Notation: N = batch × sequence tokens, T the
sequence, L layers, hidden h, FFN width f, vocabulary V, n_h query heads and n_kv key/value heads of width d,
c bytes per activation element (4 float32, 2 bfloat16), w bytes per full-precision weight, r the adapter rank
(init_r for SVD adapters: masking a triplet frees nothing).

Static, the same at every instant:
  quantized weights  each decoder linear of n weights in NF4: n/2 bytes of codes and a 16-entry float32 code,
                     plus per 64-weight block a float32 absmax (4 bytes), or with double quantization a uint8
                     absmax (1 byte), a float32 scale per 256 blocks, a 256-entry float32 table and an offset
                     adaq_lora with a precision plan (quant/precision.py): every frozen matrix, embedding and head
                     included, at the plan's budget of bits per weight (the plan spends at most that)
  full precision     embeddings, the output head if untied, norms and biases (× w); the decoder linears too when
                     they are not quantized. Only adaq_lora's precision plan stores the embedding and head below w.
  adapters           LoRA r·(in + out), SVD adapters r·(in + out + 1) per adapted matrix, always float32
  optimizer state    AdamW's two moments, float32: 2 × trainable × 4
  other              the batch (three int64 N-tensors), the SVD triplet masks, and for SVD methods the rank
                     allocator's two importance EMAs per adapter weight (2 × adapters, in importance_dtype)
Dynamic: the tensors the step makes, at the largest of three candidate peaks. (The `base` method trains nothing:
its peak is the end of its forward pass: the logits N·V·c, their float32 copy when c ≠ 4, the log-softmax N·V·4
and the last hidden state N·h·c.)
  A. The start of backward: every tensor saved for backward (below) and the loss's three float32 N × V tensors —
     the log-softmax output and the two gradients backward makes first: 3·N·V·4. With the fused loss
     (training/fused_loss.py, our methods' default) the end of the forward instead: one block of b head rows'
     logits in float32 and their gradient in c (N·b·(4 + c), b = `block_rows`), the block's rows as decoded for a
     planned head (b·h, float32 and c), and the answer rows of the hidden states, ∂C/∂h accumulated in float32
     and its last product: N·h·(4 + 2c). (The training step builds
     Eq. 6's regularizer before the forward pass, so autograd runs its backward last: no adapter gradient yet.)
  B. For a 4-bit base, inside a 4-bit layer: the saved tensors and that layer's weight de-quantized to c for its
     matmul (the largest decoder matrix). It wins only where the vocabulary is small next to the layers.
  C. The optimizer step: every gradient (trainable × its dtype) and the update's temporaries, counted as optimizer
     state: bitsandbytes' CPU update makes three float32 tensors the size of the parameter it updates (four for
     a parameter that is not float32), so the largest parameter sets them; its CUDA kernel is fused and makes none.
Saved for backward, per layer and token:
  norms (2)        the input in float32 (h·4) and 1/rms (4); full fine-tuning also the normalized input before
                   the weight (h·c)
  linear inputs    for each tensor read by linears (attention in, attention out, MLP in, MLP act): full
                   fine-tuning keeps it (width·c); each adapter reading it keeps its dropout output in float32
                   (width·4) and the dropout mask (width·c) — without dropout, x itself (once per tensor, c = 4)
                   or its own float32 copy (c ≠ 4) — and x·Aᵀ (r·4). An SVD adapter also keeps Q·diag(λ),
                   r·in·4 per matrix (not per token).
  attention        sdpa: q, k, v as the kernel gets them (k, v at n_kv·d) and its output (each width·c), and the
                   log-sum-exp (n_h·4). Eager: q, and k, v repeated to n_h·d, and the softmax probabilities n_h·T·4
                   (and n_h·T·c when c ≠ 4).
  MLP              the gate and up outputs and SiLU(gate): 3·f·c (GLM: its fused 2f output and the SiLU, the same)
  after the last layer, the final norm (full fine-tuning: also its output, read by the trainable head)
With gradient checkpointing (the paper profile's setting) a layer keeps only its input, N·h·c, and recomputes the
rest in its backward, so "saved" above becomes L·N·h·c plus the final norm, and a fourth candidate joins:
  R. Inside one layer's backward: the saved inputs, that layer's recomputed tensors (N × the per-layer sum above),
     the gradients flowing through it (two N·h·c: into the layer's output and along its residual), and for a
     4-bit base its largest matrix de-quantized.
Left out as small: the rotary tables, r-sized vectors, library workspaces, and the first layer's attention
input, which needs no gradient when the base is frozen (its norm input and dropout masks are not kept): together
under 1% of the default model's peak. The constants were derived from the modelling code of transformers' Llama
and GLM, then checked tensor by tensor against the measured timeline; tests/test_memory.py compares the two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import AdaQConfig
from ..models import DEFAULT_TARGET_MODULES
from ..paper import PAPER_MODEL_LABEL, PAPER_ROWS, published_memory_mb
from ..quant.nf4 import BLOCKSIZE, SCALE_BLOCKSIZE
from ..training.fused_loss import block_rows
from ..tuners.registry import method_spec
from .memory import CATEGORIES, MemoryBreakdown
from .model_shape import ModelShape, load_chatglm2_6b_config

def dtype_bytes(dtype: torch.dtype | str) -> int:
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype).element_size()


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Bytes of one matrix in bitsandbytes' 4-bit storage: packed codes, the 16-entry code and the block scales."""
    blocks = math.ceil(numel / BLOCKSIZE)
    codes = math.ceil(numel / 2) + 16 * 4
    if not double_quant:
        return codes + 4 * blocks
    return codes + blocks + 4 * math.ceil(blocks / SCALE_BLOCKSIZE) + 256 * 4 + 4  # uint8 absmax, scales, table, offset


def adapted_linears(shape: ModelShape, method: str, config: AdaQConfig) -> tuple[str, ...]:
    """The leaf names the method puts adapters on (none for base and full)."""
    if method_spec(method).adapter is None:
        return ()
    targets = config.target_modules or DEFAULT_TARGET_MODULES[shape.layout]  # one layout, one set of names
    unknown = sorted(set(targets) - set(shape.linears()))
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; this model's linear layers are "
                         f"{sorted(shape.linears())}")
    return tuple(name for name in shape.linears() if name in targets)


def saved_per_layer_token(shape: ModelShape, method: str, adapted, rank: int, dropout: float, c: int,
                          seq_len: int) -> int:
    """Bytes saved for backward by one decoder layer per token (see the module docstring)."""
    h, f, heads, q = shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_heads * shape.head_dim
    full = method_spec(method).trains_base
    norm = h * 4 + 4 + (h * c if full else 0)
    linears = shape.linears()
    inputs = 0
    for group in shape.input_groups():
        width, readers = linears[group[0]][0], [name for name in group if name in adapted]
        kept_once = full or (dropout == 0 and c == 4 and bool(readers))
        per_reader = 4 + c if dropout > 0 else 4 * (c != 4)
        inputs += width * c * kept_once + width * per_reader * len(readers) + rank * 4 * len(readers)
    if shape.attention == "eager":
        attention = 3 * q * c + heads * seq_len * (4 + c * (c != 4))
    else:
        attention = (2 * q + 2 * shape.num_kv_heads * shape.head_dim) * c + heads * 4
    return 2 * norm + inputs + attention + 3 * f * c


def adapter_matrices(shape: ModelShape, method: str, config: AdaQConfig) -> tuple[int, list[tuple[int, int]]]:
    """The adapters' rank and the (in, out) of every adapted matrix of the model."""
    rank = config.init_r if method_spec(method).svd else config.r
    linears = shape.linears()
    return rank, [linears[name] for name in adapted_linears(shape, method, config)] * shape.num_layers


def adapter_parameters(shape: ModelShape, method: str, config: AdaQConfig) -> int:
    rank, matrices = adapter_matrices(shape, method, config)
    return sum(rank * (i + o + method_spec(method).svd) for i, o in matrices)  # an SVD adapter adds λ


def trainable_parameters(shape: ModelShape, method: str, config: AdaQConfig) -> int:
    return shape.parameter_count() if method_spec(method).trains_base else adapter_parameters(shape, method, config)


def static_bytes(shape: ModelShape, method: str, config: AdaQConfig, w: int, tokens: int) -> dict[str, int]:
    """Weights, adapters, optimizer state and the step's other lasting tensors (the module docstring's "Static")."""
    rank, matrices = adapter_matrices(shape, method, config)
    layers, decoder = shape.num_layers, shape.linears().values()
    adapters = adapter_parameters(shape, method, config)
    norms_and_biases = layers * (shape.bias_size() + 2 * shape.hidden_size) + shape.hidden_size
    other_weights = shape.embedding_parameters() + norms_and_biases
    decoder_weights = layers * sum(i * o for i, o in decoder)
    quantized = method_spec(method).quantized
    nf4 = layers * sum(nf4_bytes(i * o, config.double_quant) for i, o in decoder)
    if method_spec(method).precision_plan and config.precision_budget_bits is not None:
        planned = (decoder_weights + shape.embedding_parameters()) * config.precision_budget_bits / 8
        nf4, other_weights = math.ceil(planned), norms_and_biases
    ema = dtype_bytes(config.importance_dtype)
    scored = adapters if config.importance_per == "element" else 3 * len(matrices) * rank  # values with two EMAs each
    svd_extras = len(matrices) * rank * 4 + 2 * scored * ema if method_spec(method).svd else 0  # masks, EMAs
    return {
        "quantized_weights": nf4 if quantized else 0,
        "full_precision_weights": (other_weights + (0 if quantized else decoder_weights)) * w,
        "adapters": adapters * 4,
        "optimizer_state": 2 * trainable_parameters(shape, method, config) * 4,
        "other": 3 * tokens * 8 + svd_extras,
    }


def dynamic_bytes(shape: ModelShape, method: str, config: AdaQConfig, w: int, c: int, seq_len: int, tokens: int,
                  device: str, checkpointing: bool = False) -> dict[str, int]:
    """The tensors the step makes, at the largest of the candidate peaks A, B, C (and R) of the module docstring."""
    vocab, hidden, decoder = shape.vocab_size, shape.hidden_size, shape.linears().values()
    if not method_spec(method).trains:
        return {"activations": tokens * vocab * (c + 4 * (c != 4) + 4) + tokens * hidden * c}
    svd = method_spec(method).svd
    rank, matrices = adapter_matrices(shape, method, config)
    adapted = adapted_linears(shape, method, config)
    per_token = saved_per_layer_token(shape, method, adapted, rank, config.lora_dropout, c, seq_len)
    final_norm = hidden * 4 + 4 + (2 * hidden * c if method_spec(method).trains_base else 0)
    svd_products = sum(rank * i * 4 for i, _ in matrices) if svd else 0
    dequantized = max(i * o for i, o in decoder) * c if method_spec(method).quantized else 0
    if config.fused_loss and not method_spec(method).peer:  # a chunk's logits, and ∂C/∂h with its answer rows
        rows = block_rows(tokens, vocab, hidden)
        planned_head = method_spec(method).precision_plan and config.precision_budget_bits is not None
        decoded_rows = rows * hidden * (4 + c * (c != 4)) if planned_head else 0
        loss_tensors = tokens * rows * (4 + c) + decoded_rows + tokens * hidden * (4 + 2 * c)
    else:
        loss_tensors = 3 * tokens * vocab * 4
    if checkpointing:
        saved = tokens * (shape.num_layers * hidden * c + final_norm)
        one_layer = tokens * (per_token + 2 * hidden * c) + svd_products // shape.num_layers
        peaks = [{"activations": saved + loss_tensors},  # A
                 {"activations": saved + one_layer + dequantized}]  # R
    else:
        saved = tokens * (shape.num_layers * per_token + final_norm) + svd_products
        peaks = [{"activations": saved + loss_tensors}]  # A
        if dequantized:  # B
            peaks.append({"activations": saved + dequantized})
    if method_spec(method).trains_base:
        gradient_bytes, largest = w, max(vocab * hidden, *(i * o for i, o in decoder))
    else:
        gradient_bytes, largest = 4, max(rank * max(i, o) for i, o in matrices)
    temporaries = (3 + (gradient_bytes != 4)) * largest * 4 if device == "cpu" else 0
    gradients = trainable_parameters(shape, method, config) * gradient_bytes
    peaks.append({"gradients": gradients, "optimizer_state": temporaries})  # C
    return max(peaks, key=lambda part: sum(part.values()))


def predict_training_memory(model_config, method: str, adaq_config: AdaQConfig | None = None, seq_len: int = 128,
                            batch_size: int = 1, *, weight_dtype: torch.dtype | str = torch.float32,
                            compute_dtype: torch.dtype | str | None = None, device: str = "cpu",
                            attention: str | None = None, gradient_checkpointing: bool = False) -> MemoryBreakdown:
    """The predicted peak of one training step of `method` on a model of `model_config`, by category.

    `model_config`: a transformers config or a dict (FIELDS names what it needs). `weight_dtype` stores the
    weights that are not 4-bit; `compute_dtype` (default: weight_dtype) is the activations' dtype; `device`
    ("cpu" or "cuda") decides the optimizer update's temporaries; `attention` overrides the config's attention
    implementation (default sdpa); `gradient_checkpointing` as `TrainConfig.gradient_checkpointing` trains.
    """
    if method_spec(method).peer:
        raise ValueError(f"the memory model predicts our methods; {method!r} is PEFT's: measure it instead")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    shape = ModelShape.from_config(model_config, attention)
    config = adaq_config or AdaQConfig()
    w, c = dtype_bytes(weight_dtype), dtype_bytes(compute_dtype or weight_dtype)
    tokens = seq_len * batch_size
    by_category = dict.fromkeys(CATEGORIES, 0) | static_bytes(shape, method, config, w, tokens)
    for category, nbytes in dynamic_bytes(shape, method, config, w, c, seq_len, tokens, device,
                                          gradient_checkpointing and method_spec(method).trains).items():
        by_category[category] += nbytes
    return MemoryBreakdown.from_bytes(by_category)


@dataclass
class PaperMemoryRow:
    row: str  # the row's label in the paper's Tables 1-2
    method: str  # our method for that row
    predicted: MemoryBreakdown  # our prediction for ChatGLM2-6B on a CUDA GPU in bfloat16
    setting: str  # what the prediction is for: device, dtypes, tokens, checkpointing
    published_alpaca_chinese_mb: int  # the paper's published Memory/MB in Table 1 (Alpaca_Chinese), not ours
    published_school_math_mb: int  # the paper's published Memory/MB in Table 2 (School_math), not ours


def paper_memory_comparison(seq_len: int = 512, batch_size: int = 1, adaq_config: AdaQConfig | None = None,
                            gradient_checkpointing: bool | None = None) -> list[PaperMemoryRow]:
    """Our prediction for each row of the paper's tables beside the Memory/MB the paper publishes.

    The setting: ChatGLM2-6B (data/chatglm2-6b.json) on a CUDA GPU, weights and activations in bfloat16 (the
    model ships in float16, the same 2 bytes), NF4 with double quantization for qlora and adaq_lora, batch 1
    (Sec. 3), gradient checkpointing as the paper profile trains (on) unless `gradient_checkpointing` says. The
    paper gives neither its sequence length nor whether it checkpointed: 512, the tokens per example of our paper
    profile, is an assumption and a parameter. The "GLM2" row is the untrained model, so `base` is predicted as the
    weights and one forward pass with the loss, without gradients or optimizer state.
    """
    from ..profiles import load_profile  # the paper profile's settings: its precision budget for ChatGLM2-6B

    paper = load_profile("paper")
    adaq_config = adaq_config or AdaQConfig(precision_budget_bits=paper.adapter.precision_budget_bits)
    checkpointing = paper.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    setting = (f"ChatGLM2-6B on a CUDA GPU, bfloat16, {batch_size}×{seq_len} tokens, gradient checkpointing "
               f"{'on' if checkpointing else 'off'}")
    model_config = load_chatglm2_6b_config()
    return [PaperMemoryRow(row, method,
                           predict_training_memory(model_config, method, adaq_config, seq_len, batch_size,
                                                   weight_dtype=torch.bfloat16, device="cuda",
                                                   gradient_checkpointing=checkpointing),
                           setting, alpaca, school_math)
            for method in PAPER_ROWS[1]
            for row, alpaca, school_math in [(PAPER_MODEL_LABEL + method_spec(method).label,
                                              published_memory_mb(1, method), published_memory_mb(2, method))]]
