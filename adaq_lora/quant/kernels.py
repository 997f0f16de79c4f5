"""bitsandbytes' CPU kernels, checked once per process against the NF4 reference (book chapter 4, "Quantization").

ADAQ-LoRA's frozen base is only as good as the weight its 4-bit codes decode to (paper, Sec. 1: LoRA with
quantization added). bitsandbytes 0.50.2, the newest release, takes other CPU kernels on a CPU with AVX-512, and
two of them compute something other than the weight the codes stand for:

- its native `dequantize_4bit` gives blocks the wrong scale when a matrix's last dimension is an odd multiple of
  32 (32, 96, 160, …): the codes and scales it stored are right, only the way back is wrong;
- `Linear4bit` in eval mode, given an input that needs no gradient, repacks its weight in place for an
  AVX-512-BF16 kernel, which fails for input widths that are not a multiple of 64 and computes in bfloat16
  otherwise, so inference differs from training.

`import_bitsandbytes()` is how the package reaches bitsandbytes. Its first call probes both kernels on small
matrices against `adaq_lora.quant.nf4` (milliseconds) and routes every faulty case through a correct path, saying so
once in the log (at INFO; `kernel_report()` returns it): a faulty width class of `dequantize_4bit` is decoded as rows of one block each, a shape the
native kernel gets right, or by the reference where that does not divide; a faulty repacking is switched off, so
every `Linear4bit` built afterwards computes as in training. The routes sit in the dispatcher (the
`bitsandbytes::dequantize_4bit` operator) and in bitsandbytes' own repacking switch, so they reach every caller
in the process: `Linear4bit` forward and backward, PEFT's 4-bit layers, exports and plots.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod

import torch

from .nf4 import BLOCKSIZE, dequantize_blockwise, nf4_levels, unpack_nibbles

BITSANDBYTES_PIN = "bitsandbytes==0.50.2"

# The width classes whose kernels differ on AVX-512 CPUs, each probed with one width.
WIDTH_CLASSES = {"multiple of 64": 128, "odd multiple of 32": 96, "not a multiple of 32": 100}

logger = logging.getLogger(__name__)


def width_class(width: int) -> str:
    """The name in `WIDTH_CLASSES` of the class a last dimension belongs to."""
    if width % 64 == 0:
        return "multiple of 64"
    return "odd multiple of 32" if width % 32 == 0 else "not a multiple of 32"


@dataclass(frozen=True)
class KernelReport:
    """What this CPU's bitsandbytes kernels were found to do."""

    faulty_dequantize_widths: tuple[str, ...]  # width classes whose native dequantize_4bit is wrong
    faulty_inference_repacking: bool  # Linear4bit's eval-mode repacking fails or differs from training

    @property
    def routed(self) -> bool:
        return bool(self.faulty_dequantize_widths) or self.faulty_inference_repacking

    def describe(self) -> str:
        if not self.routed:
            return "bitsandbytes' CPU kernels match the NF4 reference on this CPU"
        parts = []
        if self.faulty_dequantize_widths:
            parts.append("dequantize_4bit is wrong for last dimensions that are "
                         f"{' or '.join(self.faulty_dequantize_widths)}: routed through a correct path")
        if self.faulty_inference_repacking:
            parts.append("Linear4bit's eval-mode repacking for AVX-512-BF16 fails or computes in bfloat16: "
                         "switched off, inference computes as training does")
        return f"bitsandbytes on this CPU ({torch.backends.cpu.get_cpu_capability()}): " + "; ".join(parts)


def _without_hub_kernel_notice(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' notice that the optional `kernels` package (a hub download) is missing: offline it
    always is, bitsandbytes then uses its own CPU kernel, and that kernel is the one the probe below checks."""
    return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# installed once, when the package is imported, so that it holds wherever bitsandbytes is imported afterwards
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_without_hub_kernel_notice)


def _raw_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(f"4-bit quantization needs bitsandbytes: pip install {BITSANDBYTES_PIN}") from error
    return bitsandbytes


def four_bit_levels(quant_type: str) -> torch.Tensor:
    """The 16 levels of a 4-bit type: NF4's from the reference, FP4's from bitsandbytes' table."""
    if quant_type == "nf4":
        return nf4_levels()
    return _raw_bitsandbytes().functional.get_4bit_type(quant_type, device="cpu")


def _decode(packed, absmax, levels, blocksize: int, shape, dtype) -> torch.Tensor:
    codes = unpack_nibbles(packed.view(torch.uint8).cpu(), prod(shape))
    values = dequantize_blockwise(codes, absmax.float().cpu(), levels, blocksize)
    return values.reshape(tuple(shape)).to(dtype).to(packed.device)


def reference_dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    """The weight that bitsandbytes' packed codes and QuantState stand for, decoded by `adaq_lora.quant.nf4`."""
    absmax = state.absmax
    if state.nested:  # the scales are 8-bit codes into state2's table, centred on state.offset
        nested = state.state2
        absmax = dequantize_blockwise(absmax.cpu(), nested.absmax.float().cpu(), nested.code.float().cpu(),
                                      nested.blocksize) + state.offset.float().cpu()
    return _decode(packed, absmax, four_bit_levels(state.quant_type), state.blocksize, state.shape, state.dtype)


def _probe_dequantize(functional) -> tuple[str, ...]:
    """The width classes for which `functional.dequantize_4bit` differs from the reference, without double quant
    (where the reference equals bitsandbytes bit for bit)."""
    generator = torch.Generator().manual_seed(0)
    faulty = []
    for name, width in WIDTH_CLASSES.items():
        for rows in (6, 3):  # 6 × width divides into blocks of 64 for every probed width, 3 × 96 does not
            weight = torch.randn(rows, width, generator=generator)
            packed, state = functional.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type="nf4",
                                                     compress_statistics=False)
            if not torch.equal(functional.dequantize_4bit(packed, state), reference_dequantize(packed, state)):
                faulty.append(name)
                break
    return tuple(faulty)


def _probe_inference_repacking(bnb) -> bool:
    """True when an eval-mode `Linear4bit` (widths 64 and 96, input without grad) does not compute x Wᵀ in float32."""
    generator = torch.Generator().manual_seed(0)
    for width in (64, 96):
        layer = bnb.nn.Linear4bit(width, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(torch.randn(32, width, generator=generator), requires_grad=False,
                                         blocksize=BLOCKSIZE, quant_type="nf4", module=layer).to("cpu")
        inputs = torch.randn(4, width, generator=generator)
        expected = inputs @ reference_dequantize(layer.weight.data, layer.weight.quant_state).T
        try:
            with torch.no_grad():
                actual = layer.eval()(inputs)
        except RuntimeError:
            return True
        if not torch.allclose(actual, expected, rtol=1e-5, atol=1e-5):
            return True
    return False


def probe_kernels(bnb) -> KernelReport:
    """Run both probes on this CPU (as the kernels stand now, routes included if any are installed)."""
    return KernelReport(_probe_dequantize(bnb.functional), _probe_inference_repacking(bnb))


class _DequantizeRoute:
    """`bitsandbytes::dequantize_4bit` on CPU tensors of a faulty width class, decoded another way.

    Registered at the dispatcher's BackendSelect key, which every call passes (grad, no_grad and inference mode
    alike) before the CPU kernel; it hands the call on to that kernel unchanged unless the class is faulty.
    """

    def __init__(self, faulty_widths: tuple[str, ...]):
        self.faulty_widths = faulty_widths
        self.operator = torch.ops.bitsandbytes.dequantize_4bit.default
        self.library = torch.library.Library("bitsandbytes", "IMPL")
        self.library.impl("dequantize_4bit", self, "BackendSelect", with_keyset=True)

    def __call__(self, keyset, packed, absmax, blocksize, quant_type, shape, dtype):
        keyset = keyset.remove(torch._C.DispatchKey.BackendSelect)
        if packed.device.type != "cpu" or width_class(shape[-1]) not in self.faulty_widths:
            return self.operator.redispatch(keyset, packed, absmax, blocksize, quant_type, shape, dtype)
        count = prod(shape)
        # Blocks run along the flat weight, so the same codes read as rows of one block each decode the same
        # values: where blocks of `blocksize` are themselves in a correct class, the native kernel does the work.
        if count % blocksize == 0 and width_class(blocksize) not in self.faulty_widths:
            flat = self.operator.redispatch(keyset, packed, absmax, blocksize, quant_type,
                                            [count // blocksize, blocksize], dtype)
            return flat.reshape(shape)
        return _decode(packed, absmax, four_bit_levels(quant_type), blocksize, shape, dtype)

    def remove(self) -> None:
        self.library._destroy()


class KernelRoutes:
    """The routes installed for a `KernelReport`; `remove()` restores bitsandbytes as it was."""

    def __init__(self, report: KernelReport):
        bnb = _raw_bitsandbytes()
        self.report = report
        self._dequantize = _DequantizeRoute(report.faulty_dequantize_widths) if report.faulty_dequantize_widths \
            else None
        self._repacking_switch = bnb.nn.modules.has_avx512bf16
        if report.faulty_inference_repacking:
            # Linear4bit reads this once, in __init__, to decide whether eval mode repacks its weight.
            bnb.nn.modules.has_avx512bf16 = lambda: False

    def remove(self) -> None:
        if self._dequantize is not None:
            self._dequantize.remove()
        _raw_bitsandbytes().nn.modules.has_avx512bf16 = self._repacking_switch


_routes: KernelRoutes | None = None


def import_bitsandbytes():
    """The `bitsandbytes` module with this CPU's faulty kernels routed, or an ImportError that says how to install it.

    The first call probes the kernels, installs the routes the probes ask for and logs what it found and did.
    """
    global _routes
    bnb = _raw_bitsandbytes()
    if _routes is None:
        report = probe_kernels(bnb)
        routes = KernelRoutes(report)
        if report.routed:  # the routes are correct: information, not a warning (`kernel_report()` says it on demand)
            logger.info(report.describe())
            if probe_kernels(bnb).routed:
                routes.remove()
                raise RuntimeError(f"{report.describe()}; yet the routed kernels are still wrong, so the 4-bit base "
                                   "would be wrong here. Report the CPU (torch.backends.cpu.get_cpu_capability()) "
                                   f"and the bitsandbytes version ({bnb.__version__}).")
        _routes = routes
    return bnb


def kernel_report() -> KernelReport:
    """What the probes found on this CPU (probing now if nothing has reached bitsandbytes yet)."""
    import_bitsandbytes()
    return _routes.report
