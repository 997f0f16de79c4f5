"""Showing the package's own code and numbers inside the book's chapters (all chapters).

The chapters teach the code that runs, not a copy of it: `show_source` prints a function or class from this
package as the chapter's listing, and `show_markdown` renders a table computed from measured values. A chapter's
prose lives in its Markdown cells, where a reader of the notebook sees it; `glue_values` hands the measured numbers
to that prose by name (myst-nb's `glue`, pasted in the built book with ``{glue:text}`name:.3f` ``). The figures more
than one chapter draws, or too long to read in a cell, are drawn here: `memory_bars` (memory by category) and
`precision_plan_maps` (a precision plan over the decoder), `budget_and_loss_curves` and `rank_pattern_map` (a run
under a rank budget and the ranks it kept).
"""
from __future__ import annotations

import inspect


def show_source(obj) -> "IPython.display.Markdown":
    """The source of `obj` as a highlighted listing, headed by the module it lives in."""
    from IPython.display import Markdown

    module = inspect.getmodule(obj).__name__
    return Markdown(f"`{module}.{obj.__qualname__}`\n\n```python\n{inspect.getsource(obj)}```")


def show_markdown(text: str) -> None:
    """Markdown built from measured values, displayed: the tables a chapter computes (prose goes in Markdown cells).
    It displays wherever it is called, not only as a cell's last expression, so no table is lost mid-cell."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def glue_values(**values) -> None:
    """Glue each value under its name for the Markdown cells of this notebook (myst-nb's `glue`, output hidden).

    Torch and NumPy scalars are stored as Python numbers, since myst-nb formats a pasted value from its plain text
    (`np.float64(0.5)` would not parse). Where myst-nb is not installed (Colab), the values are printed instead,
    one `name = value` per line, so that the reader of the notebook still sees the numbers the prose names."""
    plain = {name: value.item() if hasattr(value, "item") else value for name, value in values.items()}
    try:
        from myst_nb import glue
    except ImportError:
        print("\n".join(f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}"
                         for name, value in plain.items()))
        return
    for name, value in plain.items():
        glue(name, value, display=False)


def memory_bars(ax, breakdowns: dict, title: str = "", unit: str = "MB", totals: bool = True) -> None:
    """One stacked bar per label of `breakdowns` (label → `MemoryBreakdown`), a segment per memory category, its
    total on top: the figure of the preface (predicted) and of chapter 6 (measured). `unit` "GiB" divides by 1024."""
    import numpy as np
    from matplotlib import pyplot as plt

    scale = 1024 if unit == "GiB" else 1
    first = next(iter(breakdowns.values()))
    categories = list(first.categories_mb)
    colors = plt.cm.tab10(np.arange(len(categories)))
    for position, (label, breakdown) in enumerate(breakdowns.items()):
        bottom = 0.0
        for color, category in zip(colors, categories):
            value = breakdown.categories_mb[category] / scale
            ax.bar(position, value, 0.6, bottom=bottom, color=color,
                   label=category.replace("_", " ") if position == 0 else None)
            bottom += value
        if totals:
            ax.text(position, bottom, f"{bottom:.1f}" if scale > 1 else f"{bottom:.0f}", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(range(len(breakdowns)), [label.replace(", ", ",\n") for label in breakdowns], fontsize=8)
    ax.set_ylabel(f"peak memory of one training step ({unit})")
    ax.set_title(title)


def precision_plan_maps(plan) -> "matplotlib.figure.Figure":
    """Two maps of a `PrecisionPlan` over the decoder (matrix type × layer): each matrix's importance (log10 of the
    loss storage at the fewest bits would cost) and the bits per weight the plan gave it (chapter 6)."""
    import numpy as np
    from matplotlib import pyplot as plt

    from .quant.blockwise import PRECISION_BITS

    decoder = {name: precision for name, precision in plan.precisions.items() if ".layers." in name}
    kinds = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in decoder))
    layers = sorted({int(name.split(".layers.")[1].split(".")[0]) for name in decoder})
    bits, importance = np.full((len(kinds), len(layers)), np.nan), np.full((len(kinds), len(layers)), np.nan)
    for name, precision in decoder.items():
        cell = kinds.index(name.rsplit(".", 1)[-1]), layers.index(int(name.split(".layers.")[1].split(".")[0]))
        bits[cell] = PRECISION_BITS[precision]
        importance[cell] = np.log10(plan.importance[name] + 1e-30)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5))  # stacked: side by side, a page shrinks them past reading
    for ax, values, style, label, title in (
            (axes[0], importance, dict(cmap="viridis"), "log10 ΔL at the fewest bits", "importance of each frozen decoder matrix"),
            (axes[1], bits, dict(cmap="coolwarm", vmin=2, vmax=16), "bits per weight",
             f"the plan at {plan.budget_bits:g} bits per weight")):
        fig.colorbar(ax.imshow(values, aspect="auto", **style), ax=ax, label=label)
        ax.set(title=title, xlabel="decoder layer", yticks=range(len(kinds)), yticklabels=kinds)
    fig.tight_layout()
    return fig


def budget_and_loss_curves(history: dict, t_init: int, t_freeze: int, window: int = 5) -> "matplotlib.figure.Figure":
    """A run under a rank budget, step by step (chapter 5): the budget b(t) and the visible triplets, and the two terms
    of the loss, C (each step's and its mean over `window` steps) and γΣR; dashed at t_init and at `t_freeze` (T -
    t_final). `history` holds the lists "budget", "visible", "cost" and "regularizer", one entry per step."""
    import numpy as np
    from matplotlib import pyplot as plt

    steps = np.arange(1, len(history["cost"]) + 1)
    fig, (budget_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 3.8))
    budget_ax.plot(steps, history["budget"], lw=3, alpha=0.5, label="budget b(t)")
    budget_ax.plot(steps, history["visible"], "k.", ms=4, label="visible triplets")
    loss_ax.plot(steps, history["cost"], alpha=0.4, label="C (cross-entropy), per step")
    loss_ax.plot(steps[window - 1:], np.convolve(history["cost"], np.ones(window) / window, mode="valid"),
                 color="tab:blue", label=f"C, mean of {window} steps")
    loss_ax.plot(steps, history["regularizer"], label="γ Σ R (Eq. 6)")
    for ax in (budget_ax, loss_ax):
        ax.axvline(t_init, color="tab:green", ls="--", label="t_init")
        ax.axvline(t_freeze, color="tab:red", ls="--", label="T - t_final")
    budget_ax.set(title="Rank budget and visible triplets", xlabel="optimizer step", ylabel="triplets (all matrices)")
    loss_ax.set(title="The two terms of L", xlabel="optimizer step", ylabel="loss (nats per token)")
    budget_ax.legend()
    loss_ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def rank_pattern_map(pattern: dict, init_r: int, target_r: int) -> tuple:
    """The rank each adapted matrix kept (`pattern`: module name → rank) as a map, decoder layer × matrix type, each
    cell labelled with its rank (chapter 5). Returns the figure and the map as a DataFrame (rows: layers)."""
    import re

    import numpy as np
    import pandas as pd
    from matplotlib import pyplot as plt

    cells = {(int(re.search(r"\.(\d+)\.", name).group(1)), name.rsplit(".", 1)[-1]): rank
             for name, rank in pattern.items()}  # (layer, matrix type) → rank
    grid = pd.Series(cells).unstack(fill_value=0).reindex(columns=list(dict.fromkeys(kind for _, kind in cells)))
    fig, ax = plt.subplots(figsize=(6, max(4, 0.28 * len(grid))))
    image = ax.imshow(grid.values, cmap="viridis", vmin=0, vmax=init_r, aspect="auto")
    for (row, col), rank in np.ndenumerate(grid.values):
        ax.text(col, row, rank, ha="center", va="center", fontsize=7, color="white" if rank < init_r / 2 else "black")
    ax.set_xticks(range(grid.shape[1]), [kind.replace("_proj", "") for kind in grid.columns])
    ax.set_yticks(range(len(grid)), grid.index)
    ax.set(title=f"Rank kept per matrix (init_r = {init_r}, average target {target_r})", xlabel="matrix type",
           ylabel="decoder layer")
    fig.colorbar(image, ax=ax, label="rank kept (triplets)")
    fig.tight_layout()
    return fig, grid


def sweep_table(rows: dict, columns: tuple[tuple[str, str, str], ...] = ()) -> str:
    """A held-in sweep (benchmarks/held_in.py) as Markdown: per data set and variant, means over its seeds of the
    last-quarter cross-entropy (and its ratio to qlora's on the same seeds), held-in Avg and accuracy, step time, peak
    memory and `columns` ((header, row key, format); "—" where a row lacks the key), in the order the rows were run."""
    import statistics

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows.values():
        groups.setdefault((row["dataset"], row["variant"]), []).append(row)
    lines = ["| data set | variant | seeds | last-quarter CE | × qlora's | held-in Avg | held-in accuracy | s/step "
             "| peak MiB | " + "".join(f"{header} | " for header, _, _ in columns),
             "|---" * (9 + len(columns)) + "|"]
    for (dataset, variant), members in sorted(groups.items(), key=lambda item: item[0][0]):
        def mean(key):
            return statistics.fmean(row[key] for row in members)

        seeds = sorted(row["seed"] for row in members)
        means = sweep_means(rows, dataset, variant)
        ratio = "—" if means is None else f"{means['loss_ratio']:.2f}"
        extra = "".join(f"{mean(key):{spec}} | " if all(key in row for row in members) else "— | "
                        for _, key, spec in columns)
        lines.append(f"| {dataset} | {variant} | {','.join(map(str, seeds))} | {mean('last_quarter_cross_entropy'):.3f} "
                     f"| {ratio} | {mean('held_in_avg'):.3f} | {mean('held_in_accuracy'):.3f} "
                     f"| {mean('median_step_seconds'):.2f} | {mean('memory_mb'):.0f} | {extra}")
    return "\n".join(lines)


def start_sweep_table(rows: dict) -> str:
    """The start sweep (benchmarks/sweep_start.py, chapter 3): `sweep_table` with the start's seconds."""
    return sweep_table(rows, (("start s", "start_seconds", ".0f"),))


def budget_sweep_table(rows: dict) -> str:
    """The budget sweep (benchmarks/sweep_budget.py, chapter 6): `sweep_table` with the plan's bits a weight and the
    frozen base's, as the run's memory breakdown holds it (scales, norms and the code tables included)."""
    return sweep_table(rows, (("plan bits", "plan_bits", ".2f"), ("bits held", "frozen_bits_measured", ".2f")))


def sweep_means(rows: dict, dataset: str, variant: str) -> dict | None:
    """Means over the seeds a sweep holds for (dataset, variant), with the ratio of the last-quarter cross-entropy to
    qlora's on the same seeds; None if it holds none (or qlora lacks one of its seeds)."""
    import statistics

    members = [row for row in rows.values() if (row["dataset"], row["variant"]) == (dataset, variant)]
    seeds = {row["seed"] for row in members}
    peers = [row for row in rows.values() if (row["dataset"], row["variant"]) == (dataset, "qlora") and row["seed"] in seeds]
    if not members or len(peers) != len(members):
        return None
    mean = {key: statistics.fmean(row[key] for row in members)
            for key in ("last_quarter_cross_entropy", "held_in_avg", "held_in_accuracy", "memory_mb")}
    peer = {key: statistics.fmean(row[key] for row in peers) for key in mean}
    return {**mean, "seeds": sorted(seeds), "loss_ratio": mean["last_quarter_cross_entropy"] /
            peer["last_quarter_cross_entropy"], "avg_change": mean["held_in_avg"] - peer["held_in_avg"]}


def smallest_budget_within(rows: dict, budgets, datasets=("school_math", "alpaca_zh"), loss_ratio: float = 1.25,
                           avg_margin: float = 0.05, starts=("", ", LoftQ start")) -> str | None:
    """Chapter 6's rule for a profile's default, on the budget sweep's held-in runs: the variant ("4 bits", "4 bits,
    LoftQ start", …) with the fewest bits a weight whose mean last-quarter cross-entropy is at most `loss_ratio` ×
    qlora's and whose held-in Avg is at least qlora's − `avg_margin` on every data set, the first of `starts` where two
    pass at the same budget (None if no variant measured on all data sets passes)."""
    for budget in sorted(budgets):
        for start in starts:
            means = [sweep_means(rows, dataset, f"{budget:g} bits{start}") for dataset in datasets]
            if all(m is not None and m["loss_ratio"] <= loss_ratio and m["avg_change"] >= -avg_margin for m in means):
                return f"{budget:g} bits{start}"
    return None


def budget_curves(rows: dict, datasets: tuple[str, ...] = ("school_math", "alpaca_zh")):
    """Three panels for chapter 6 from the budget sweep: last-quarter cross-entropy over qlora's, held-in accuracy
    and peak memory against the plan's bits a weight (means over seeds; qlora dashed; LoftQ's start as triangles)."""
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for dataset in datasets:
        qlora = sweep_means(rows, dataset, "qlora")
        for marker, suffix in (("o-", " bits"), ("^", " bits, LoftQ start")):
            variants = sorted({row["variant"] for row in rows.values() if row["dataset"] == dataset
                               and row["variant"].endswith(suffix) and row["variant"][0].isdigit()},
                              key=lambda v: float(v.split()[0]))
            points = [(float(v.split()[0]), sweep_means(rows, dataset, v)) for v in variants]
            points = [(bits, means) for bits, means in points if means is not None]
            if not points:
                continue
            bits = [b for b, _ in points]
            line, = axes[0].plot(bits, [m["loss_ratio"] for _, m in points], marker,
                                 label=dataset + ("" if suffix == " bits" else ", LoftQ start"))
            for ax, key in ((axes[1], "held_in_accuracy"), (axes[2], "memory_mb")):
                ax.plot(bits, [m[key] for _, m in points], marker, color=line.get_color())
                if suffix == " bits":
                    ax.axhline(qlora[key], ls="--", color=line.get_color(), lw=1)
    axes[0].axhline(1.0, ls="--", color="grey", lw=1)
    for ax, title, unit in zip(axes, ("last-quarter cross-entropy / qlora's", "held-in accuracy (qlora dashed)",
                                      "peak memory of a step (qlora dashed)"), ("ratio", "accuracy", "MiB")):
        ax.set(title=title, xlabel="budget: bits a frozen weight", ylabel=unit)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def start_sweep_curves(rows: dict, dataset: str, variants: list[str], seed: int = 0, window: int = 20):
    """Two panels for chapter 3 from the start sweep: each variant's cross-entropy (mean of `window` steps) and
    ‖ΔW‖_F of one traced matrix (a middle layer's down_proj) against the step, on `dataset` with `seed`."""
    import numpy as np
    from matplotlib import pyplot as plt

    fig, (loss_ax, norm_ax) = plt.subplots(1, 2, figsize=(12, 4))
    for variant in variants:
        row = next((r for r in rows.values() if (r["dataset"], r["variant"], r["seed"]) == (dataset, variant, seed)), None)
        if row is None:
            continue
        losses = np.convolve(row["lm_losses"], np.ones(window) / window, mode="valid")
        line, = loss_ax.plot(np.arange(window, len(row["lm_losses"]) + 1), losses, label=variant)
        traced = [name for name in row["delta_w_trace"][0]["delta_w_norm"] if name.endswith("down_proj")][0]
        norm_ax.plot([point["step"] for point in row["delta_w_trace"]],
                     [point["delta_w_norm"][traced] for point in row["delta_w_trace"]], color=line.get_color(),
                     label=variant)
    loss_ax.set(title=f"Cross-entropy, mean of {window} steps ({dataset}, seed {seed})", xlabel="optimizer step",
                ylabel="C (nats per answer token)")
    norm_ax.set(title=f"‖ΔW‖_F of {traced.removeprefix('model.')}", xlabel="optimizer step", ylabel="Frobenius norm",
                yscale="log")
    loss_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
