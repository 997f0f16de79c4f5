"""bfloat16 products taken in float32 (training/float32_products.py): the same numbers as torch's bfloat16 kernels
up to bfloat16 rounding, bfloat16 everywhere between the products, and bitsandbytes' weight decoded as without it."""
import pytest
import torch
import torch.nn.functional as F

from adaq_lora import profiles
from adaq_lora.profiles import load_profile
from adaq_lora.quant.quantize import dequantized_weight, quantize_linear
from adaq_lora.training import float32_products
from adaq_lora.training.float32_products import Float32Products

BF16_ULP = 2.0 ** -7  # bfloat16 keeps 8 significant bits: one unit in the last place is 2^-7 of the leading power of 2


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of the last place of bfloat16 at b's magnitude."""
    scale = torch.exp2(torch.floor(torch.log2(b.float().abs().clamp_min(1e-30)))) * BF16_ULP
    return (a.float() - b.float()).abs() / scale


PRODUCTS = {
    "mm": lambda a, b, c: a @ b,
    "addmm": lambda a, b, c: torch.addmm(c[0], a, b),
    "bmm": lambda a, b, c: torch.bmm(a.unflatten(0, (2, -1)), b.expand(2, -1, -1)),
    "linear": lambda a, b, c: F.linear(a, b.t(), c[0]),
}


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_in_float32_is_the_bfloat16_kernels_within_one_ulp(name):
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(shape, generator=generator).bfloat16() for shape in [(32, 96), (96, 48), (1, 48)])
    native = PRODUCTS[name](a, b, c)
    with float32_products():
        ours = PRODUCTS[name](a, b, c)
    assert ours.dtype == native.dtype == torch.bfloat16 and ours.shape == native.shape
    exact = ((a.float() @ b.float()) + (c.float() if name in ("addmm", "linear") else 0)).reshape(ours.shape)
    assert torch.equal(ours, exact.bfloat16())  # the float32 product, rounded once
    assert (ulps(ours, native) <= 1).float().mean() >= 0.99
    assert not torch.equal(ours.float(), exact)  # the output was rounded to bfloat16: the test can tell


def test_attention_in_float32_is_nearer_the_exact_attention_than_the_bfloat16_kernel():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=generator).bfloat16().requires_grad_() for _ in range(3))

    def output_and_grads(dtype):
        output = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
        return [output, *torch.autograd.grad(output.double().square().sum(), (q, k, v))]

    exact, native = output_and_grads(torch.float64), output_and_grads(torch.bfloat16)
    with float32_products():
        ours = output_and_grads(torch.bfloat16)
    assert all(tensor.dtype == torch.bfloat16 for tensor in ours)
    for mine, theirs, truth in zip(ours, native, exact):  # the kernel rounds its softmax to bfloat16 before P·V
        error, native_error = ((tensor.double() - truth).abs().mean() for tensor in (mine, theirs))
        assert error <= native_error
        assert (mine.double() - theirs.double()).abs().max() <= 0.02 * theirs.double().abs().max()


def test_float32_work_is_left_to_torch():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with float32_products():
        assert torch.equal(a @ b, torch.mm(a, b))
        with pytest.raises(RuntimeError):  # a mixed call fails as it does without the mode
            a.bfloat16() @ b


def test_a_training_step_keeps_bfloat16_and_matches_the_native_one(tiny_llama):
    model = tiny_llama.bfloat16().train()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in model.named_parameters()}

    native_loss, native_grads = loss_and_grads()
    seen = []

    class Counting(Float32Products):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_dispatch__(func, types, args, kwargs)

    with Counting():
        loss, grads = loss_and_grads()
    assert loss.dtype == native_loss.dtype and all(grad.dtype == torch.bfloat16 for grad in grads.values())
    assert abs(loss.item() - native_loss.item()) <= 0.01 * native_loss.item()
    for name, grad in grads.items():
        scale = native_grads[name].float().abs().max().clamp_min(1e-6)
        assert (grad.float() - native_grads[name].float()).abs().max() <= 0.05 * scale, name
    forward_products = sum(func is torch.ops.aten.mm.default for func in seen[: len(seen) // 2])
    assert sum(func is torch.ops.aten.mm.default for func in seen) > forward_products > 0  # backward's come too


def test_a_4bit_layer_decodes_its_weight_to_bfloat16_and_multiplies_in_float32():
    torch.manual_seed(3)
    layer = quantize_linear(torch.nn.Linear(128, 64).bfloat16(), "nf4", True, torch.bfloat16)
    layer.train()
    x = torch.randn(5, 128).bfloat16().requires_grad_()
    with float32_products():
        y = layer(x)
        (grad,) = torch.autograd.grad(y.float().sum(), x)
    weight = dequantized_weight(layer).bfloat16()  # the decoded weight as a bfloat16 run sees it
    expected = F.linear(x.float(), weight.float(), layer.bias.float()).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    assert grad.dtype == torch.bfloat16
    assert torch.equal(grad, (torch.ones(5, 64) @ weight.float()).bfloat16())


@pytest.mark.parametrize("units", [False, True])
def test_only_a_bfloat16_base_on_a_cpu_without_bfloat16_units_multiplies_in_float32(monkeypatch, units):
    monkeypatch.setattr(profiles, "has_bfloat16_units", lambda: units)
    assert load_profile("cpu").multiplies_in_float32() is not units
    assert load_profile("cpu", {"compute_dtype": "float32"}).multiplies_in_float32() is False
    assert load_profile("ci").multiplies_in_float32() is False  # "auto": float32 on the CPU
