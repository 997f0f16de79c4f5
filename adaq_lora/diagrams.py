"""Concept diagrams of the book, drawn from the package's own tables and functions (chapters 1, 3, 4 and 5).

- `lora_diagram`: Eq. 1, a frozen W0 (n × d) beside the trainable B (n × r) and A (r × d), with B = 0 at the start.
- `svd_mask_diagram`: Eq. 5, ΔW = P Λ Q with one triplet masked (λ_i = 0, P_*i and Q_i* kept), against pruning a
  LoRA pair, which zeroes a column of B and a row of A (Sec. 2.2).
- `nf4_diagram`: the 4-bit base of Sec. 1 in QLoRA's format: blocks of 64 weights, each stored as the 4-bit index of
  one of the 16 NF4 levels (`adaq_lora.quant.nf4.nf4_levels`) times the block's absmax, and the absmax scales double
  quantized to 8 bits in blocks of 256.
- `budget_diagram`: the cubic rank budget of Sec. 2.3 (`adaq_lora.adapters.rank_allocator.cubic_budget`), from
  n · init_r to n · target_r, with the warm-up t_init, the final phase t_final and a re-masking every ΔT steps.

The matrices follow the book's shapes: n outputs and d inputs (the paper writes d × k). Each function returns the
figure; a chapter shows it with `plt.show()`. Nothing here needs a model or a run profile.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch, Rectangle

from .adapters.rank_allocator import cubic_budget
from .quant.nf4 import BLOCKSIZE, SCALE_BLOCKSIZE, nf4_levels, quantize_blockwise

FONT = 10
FROZEN, TRAINABLE, VECTOR, MASKED = "0.72", "tab:orange", "#9ecae1", "0.88"
TRIPLETS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")  # one colour per triplet (pair) i


def _canvas(ax, width: float, height: float, equal: bool = True) -> None:
    """Data coordinates 0..width × 0..height, no frame; `equal` keeps a matrix's drawn shape true to its shape."""
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    if equal:
        ax.set_aspect("equal")
    ax.axis("off")


def _box(ax, x: float, y: float, width: float, height: float, color, text: str = "", hatch: str | None = None,
         size: float = FONT) -> None:
    """A filled rectangle with its lower left corner at (x, y) and `text` in its middle."""
    ax.add_patch(Rectangle((x, y), width, height, facecolor=color, edgecolor="black", hatch=hatch, lw=1))
    if text:
        ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple, end: tuple, color="black") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=1.3, color=color))


def lora_diagram() -> Figure:
    """Eq. 1: Y = W0 x + (α/r) B A x. W0 frozen, A Gaussian, B zero at the start, so ΔW = 0 before training."""
    fig, ax = plt.subplots(figsize=(9, 4))
    _canvas(ax, 20, 9)
    _box(ax, 0.3, 2.7, 0.5, 3.6, VECTOR)
    ax.text(0.55, 2.3, "$x$\n(d)", ha="center", va="top", fontsize=FONT)
    _box(ax, 2.5, 5.4, 3.6, 3.0, FROZEN, "$W_0$\nn × d\nfrozen")
    _box(ax, 2.5, 1.6, 3.6, 0.6, TRAINABLE, "$A$   r × d")
    ax.text(4.3, 1.3, "starts Gaussian, $\\mathcal{N}(0, \\sigma^2)$", ha="center", va="top", fontsize=9)
    _box(ax, 8.0, 0.4, 0.6, 3.0, TRAINABLE, "0\n0\n0\n0", size=9)
    ax.text(8.9, 1.9, "$B$   n × r\nstarts at 0", ha="left", va="center", fontsize=FONT)
    _arrow(ax, (0.8, 5.4), (2.5, 6.9))
    _arrow(ax, (0.8, 3.6), (2.5, 1.9))
    _arrow(ax, (6.1, 1.9), (8.0, 1.9))
    ax.text(7.05, 2.1, "$Ax$\n(r)", ha="center", va="bottom", fontsize=9)
    ax.add_patch(Circle((12.0, 4.9), 0.45, facecolor="white", edgecolor="black"))
    ax.text(12.0, 4.9, "+", ha="center", va="center", fontsize=14)
    _arrow(ax, (6.1, 6.9), (11.65, 5.15))
    ax.text(9.0, 6.4, "$W_0x$", ha="center", va="bottom", fontsize=FONT)
    _arrow(ax, (8.6, 3.2), (11.65, 4.6))
    ax.text(10.9, 3.3, "$\\times\\ \\alpha / r$", ha="left", va="center", fontsize=FONT)
    _box(ax, 13.2, 3.4, 0.5, 3.0, VECTOR)
    _arrow(ax, (12.45, 4.9), (13.2, 4.9))
    ax.text(14.0, 4.9, "$Y = W_0x + (\\alpha/r)\\,BAx$\n(n)", ha="left", va="center", fontsize=11)
    ax.text(14.0, 2.2, "trains r·(n + d) numbers,\nnot n·d; $\\Delta W = (\\alpha/r)\\,BA = 0$\nat the start",
            ha="left", va="top", fontsize=9)
    ax.legend(handles=[Patch(facecolor=FROZEN, edgecolor="black", label="frozen"),
                       Patch(facecolor=TRAINABLE, edgecolor="black", label="trainable")],
              loc="upper right", fontsize=9)
    ax.set_title("LoRA (Eq. 1): a trainable low-rank BA beside the frozen $W_0$", fontsize=11)
    return fig


def _factors(ax, left: tuple, right: tuple, zeroed: int, masked: int | None) -> None:
    """A tall n × r factor (r coloured columns) at `left` and a wide r × d factor (r coloured rows) at `right`.
    Column and row `zeroed` are drawn as zeros (pruned); a `masked` triplet's λ sits in a diagonal Λ between them."""
    cell, height, width = 0.55, 4.0, 4.0
    for i, color in enumerate(TRIPLETS):
        pruned = i == zeroed
        _box(ax, left[0] + i * cell, left[1], cell, height, MASKED if pruned else color, "0" if pruned else "",
             hatch="///" if pruned else None)
        top = right[1] + (len(TRIPLETS) - 1 - i) * cell
        _box(ax, right[0], top, width, cell, MASKED if pruned else color, "0" if pruned else "",
             hatch="///" if pruned else None)
        if masked is not None:
            for j in range(len(TRIPLETS)):
                diagonal = i == j
                fill = (MASKED if i == masked else color) if diagonal else "white"
                label = ("0" if i == masked else f"$\\lambda_{i + 1}$") if diagonal else ""
                _box(ax, 3.4 + j * cell, top, cell, cell, fill, label, hatch="///" if diagonal and i == masked else None,
                     size=9)


def svd_mask_diagram(masked: int = 2) -> Figure:
    """Eq. 5 with triplet `masked` (0-based) hidden, beside LoRA with the same pair pruned (Sec. 2.2)."""
    shown = masked + 1
    fig, (ax_svd, ax_lora) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw=dict(width_ratios=[11, 8]))
    _canvas(ax_svd, 11, 6.5)
    _canvas(ax_lora, 8, 6.5)
    _factors(ax_svd, (0.4, 1.5), (6.3, 2.4), zeroed=-1, masked=masked)
    for x, label in ((1.5, "$P$  n × r"), (4.5, "$\\Lambda$  r × r"), (8.3, "$Q$  r × d")):
        ax_svd.text(x, 5.8, label, ha="center", va="bottom", fontsize=FONT)
    ax_svd.text(3.0, 3.5, "·", ha="center", va="center", fontsize=16)
    ax_svd.text(5.95, 3.5, "·", ha="center", va="center", fontsize=16)
    ax_svd.text(5.5, 1.2, f"masked: $\\lambda_{shown} = 0$; $P_{{*{shown}}}$ and $Q_{{{shown}*}}$ kept,\n"
                f"$\\lambda_{shown}$ still gets a gradient: it can come back", ha="center", va="top", fontsize=9)
    ax_svd.set_title("SVD adapter: $\\Delta W = P\\Lambda Q$ (Eq. 5)", fontsize=11)
    _factors(ax_lora, (0.4, 1.5), (3.5, 2.4), zeroed=masked, masked=None)
    ax_lora.text(1.5, 5.8, "$B$  n × r", ha="center", va="bottom", fontsize=FONT)
    ax_lora.text(5.5, 5.8, "$A$  r × d", ha="center", va="bottom", fontsize=FONT)
    ax_lora.text(3.0, 3.5, "·", ha="center", va="center", fontsize=16)
    ax_lora.text(4.0, 1.2, f"pruned: $B_{{*{shown}}} = 0$ and $A_{{{shown}*}} = 0$,\n"
                 "both gradients zero: it cannot come back", ha="center", va="top", fontsize=9)
    ax_lora.set_title("LoRA: $\\Delta W = BA$, pruned instead", fontsize=11)
    fig.legend(handles=[Patch(facecolor=color, edgecolor="black", label=f"triplet (pair) {i + 1}")
                        for i, color in enumerate(TRIPLETS)]
               + [Patch(facecolor=MASKED, edgecolor="black", hatch="///", label="zero")],
               loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.1, wspace=0.05)
    return fig


def nf4_diagram(shown_weights: int = 8) -> Figure:
    """NF4 with double quantization: one block's weights on the 16 levels, and what a row of blocks stores."""
    levels = nf4_levels()
    block = torch.randn(BLOCKSIZE, generator=torch.Generator().manual_seed(0)) * 0.02  # one block of a weight row
    codes, absmax = quantize_blockwise(block, levels, BLOCKSIZE)
    fig, (ax_levels, ax_store) = plt.subplots(2, 1, figsize=(9, 4.4), gridspec_kw=dict(height_ratios=[1, 1.15]))
    ax_levels.hlines(0, -1, 1, color="black", lw=0.8)
    ax_levels.plot(levels.numpy(), [0] * len(levels), "|", color="tab:red", ms=16, mew=2, gid="nf4-levels")
    for code, level in enumerate(levels.tolist()):
        ax_levels.text(level, 0.28, str(code), ha="center", va="bottom", fontsize=9, color="tab:red")
    normalized = (block / absmax).numpy()
    for value, code in zip(normalized[:shown_weights], codes[:shown_weights].tolist()):
        ax_levels.plot([value, levels[code].item()], [-0.75, -0.1], color="tab:blue", lw=0.9)
        ax_levels.plot(value, -0.75, "o", color="tab:blue", ms=5)
    ax_levels.text(-1.17, 0.35, "4-bit code", ha="right", va="center", fontsize=9, color="tab:red")
    ax_levels.text(-1.17, -0.75, "w / absmax", ha="right", va="center", fontsize=9, color="tab:blue")
    ax_levels.set(xlim=(-1.45, 1.05), ylim=(-1.0, 0.8))
    ax_levels.axis("off")
    ax_levels.set_title("The 16 NF4 levels (normal quantiles scaled to [−1, 1]): a weight w stores the code of the "
                        "level nearest w / absmax", fontsize=10)

    _canvas(ax_store, 20, 6, equal=False)
    blocks, width, gap = 4, 3.0, 0.3
    for j in range(blocks):
        x = 3.2 + j * (width + gap)
        _box(ax_store, x, 4.3, width, 1.1, VECTOR, f"{BLOCKSIZE} weights\n{BLOCKSIZE} × 4-bit codes", size=9)
        _box(ax_store, x + width / 2 - 0.6, 2.5, 1.2, 0.8, "#dbdb8d", f"$s_{j + 1}$", size=FONT)
        _arrow(ax_store, (x + width / 2, 4.3), (x + width / 2, 3.3))
    right = 3.2 + blocks * (width + gap)
    for y in (4.85, 2.9):
        ax_store.text(right + 0.1, y, "…", ha="left", va="center", fontsize=14)
    _box(ax_store, 3.2, 0.4, right - 3.2 + 0.9, 1.1, "#c5b0d5",
         f"{SCALE_BLOCKSIZE} scales: 8-bit codes (less their mean) + 1 float32 scale", size=9)
    for j in range(blocks):
        _arrow(ax_store, (3.2 + j * (width + gap) + width / 2, 2.5), (3.2 + j * (width + gap) + width / 2, 1.5))
    for y, label in ((4.85, "a weight row,\nblocks of 64"), (2.9, "absmax scale\nper block"),
                     (0.95, "double\nquantization")):
        ax_store.text(3.0, y, label, ha="right", va="center", fontsize=9)
    bits = 4 + 8 / BLOCKSIZE + 32 / (BLOCKSIZE * SCALE_BLOCKSIZE)
    ax_store.text(19.9, 2.9, f"bits per weight\n4 + 8/{BLOCKSIZE}\n+ 32/({BLOCKSIZE}·{SCALE_BLOCKSIZE})\n≈ {bits:.3f}",
                  ha="right", va="center", fontsize=FONT, bbox=dict(facecolor="white", edgecolor="0.5"))
    fig.tight_layout()
    return fig


def budget_diagram(matrices: int = 8, init_r: int = 12, target_r: int = 8, total_steps: int = 100, t_init: int = 10,
                   t_final: int = 20, delta_t: int = 5) -> Figure:
    """b(t) of Sec. 2.3 for `matrices` adapted matrices, drawn with the allocator's own `cubic_budget`."""
    initial, target = matrices * init_r, matrices * target_r
    steps = list(range(total_steps + 1))
    budget = [cubic_budget(t, initial, target, t_init, t_final, total_steps) for t in steps]
    freeze = total_steps - t_final
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    ax.axvspan(0, t_init, color="tab:green", alpha=0.15)
    ax.axvspan(freeze, total_steps, color="tab:red", alpha=0.12)
    ax.plot(steps, budget, color="black", lw=2, label="budget b(t)", gid="budget")
    remask = [*range(t_init, freeze, delta_t), freeze]  # the last one fixes the mask
    ax.plot(remask, [budget[t] for t in remask], "o", color="tab:blue", ms=6,
            label=f"re-masking every ΔT = {delta_t} steps: the b(t) best triplets stay")
    middle = (initial + target) / 2
    ax.text(t_init / 2, middle, f"warm-up\n$t_{{init}}$ = {t_init}\nnothing\nmasked", ha="center", va="center",
            fontsize=9)
    ax.text((freeze + total_steps) / 2, middle, f"final phase\n$t_{{final}}$ = {t_final}\nmask fixed", ha="center",
            va="center", fontsize=9)
    ax.set_yticks([target, initial], [f"n·target_r = {target}", f"n·init_r = {initial}"])
    ax.set_ylim(target - 0.15 * (initial - target), initial + 0.15 * (initial - target))
    ax.set(xlim=(0, total_steps), xlabel=f"optimizer step t (T = {total_steps})",
           ylabel="triplets kept, all matrices")
    ax.set_title(f"The cubic rank budget (Sec. 2.3), n = {matrices} matrices, init_r = {init_r} → target_r = "
                 f"{target_r}", fontsize=11)
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return fig
