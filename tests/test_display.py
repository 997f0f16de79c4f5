"""Claims about the book's display helpers: a stacked bar per breakdown whose segments add up to its total, a
precision plan's two maps holding one cell per decoder matrix at its bits, and values glued for the prose as plain
numbers (printed where myst-nb is absent), a run's mean loss over its window and a rank pattern's map holding
one cell per layer and matrix type."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from adaq_lora.display import (budget_and_loss_curves, memory_bars, precision_plan_maps,  # noqa: E402
                               rank_pattern_map)
from adaq_lora.measure.memory import MemoryBreakdown  # noqa: E402
from adaq_lora.quant.precision import PrecisionPlan  # noqa: E402


def test_memory_bars_stack_every_category_and_label_each_total():
    breakdowns = {label: MemoryBreakdown.from_bytes({"adapters": 2**20 * a, "activations": 2**20 * b})
                  for label, a, b in (("LoRA", 10, 30), ("QLoRA", 5, 20))}
    fig, ax = plt.subplots()
    memory_bars(ax, breakdowns)
    heights = [patch.get_height() for patch in ax.patches]
    assert len(heights) == 2 * len(next(iter(breakdowns.values())).categories_mb)
    assert [text.get_text() for text in ax.texts] == ["40", "25"]
    plt.close(fig)


def test_the_plan_maps_hold_each_decoder_matrix_at_its_bits():
    names = [f"model.layers.{layer}.{kind}" for layer in range(3) for kind in ("q_proj", "down_proj")]
    precisions = dict(zip(names, ["nf4", "int8", "bf16", "nf4", "nf4", "int8"]))
    plan = PrecisionPlan(budget_bits=6.0, precisions={**precisions, "model.embed_tokens": "int8"},
                         importance={name: 10.0 ** -i for i, name in enumerate([*names, "model.embed_tokens"])},
                         nbytes={}, parameters={})
    fig = precision_plan_maps(plan)
    bits = fig.axes[1].images[0].get_array()
    assert bits.shape == (2, 3)  # two matrix types × three layers; the embedding is not a decoder matrix
    assert np.array_equal(bits, [[4, 16, 4], [8, 4, 8]])
    plt.close(fig)


def test_glued_values_reach_myst_nb_as_plain_numbers(monkeypatch):
    import myst_nb
    import torch

    from adaq_lora.display import glue_values

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.append((name, value, display)))
    glue_values(loss=torch.tensor(2.5), share=np.float64(0.25), label="NF4")
    assert glued == [("loss", 2.5, False), ("share", 0.25, False), ("label", "NF4", False)]
    assert [type(value) for _, value, _ in glued] == [float, float, str]


def test_without_myst_nb_the_values_are_printed_for_the_notebook_reader(monkeypatch, capsys):
    import sys

    from adaq_lora.display import glue_values

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import fails, as in Colab
    glue_values(loss=2.123456, steps=20)
    assert capsys.readouterr().out.splitlines() == ["loss = 2.123", "steps = 20"]


def test_the_loss_panel_averages_the_cost_over_its_window():
    history = {"budget": [8, 8, 6, 4], "visible": [8, 8, 6, 4], "cost": [1.0, 3.0, 5.0, 7.0],
               "regularizer": [0.1, 0.1, 0.1, 0.1]}
    fig = budget_and_loss_curves(history, t_init=2, t_freeze=3, window=2)
    budget_ax, loss_ax = fig.axes
    assert list(budget_ax.lines[0].get_ydata()) == [8, 8, 6, 4]
    assert list(loss_ax.lines[1].get_ydata()) == [2.0, 4.0, 6.0]  # C, mean of 2 steps, from step 2 on
    plt.close(fig)


def test_the_rank_pattern_map_holds_each_matrix_at_its_layer_and_type():
    pattern = {f"model.layers.{layer}.{kind}": rank for layer, kind, rank in
               ((0, "q_proj", 4), (0, "down_proj", 0), (1, "q_proj", 2), (1, "down_proj", 6))}
    fig, grid = rank_pattern_map(pattern, init_r=8, target_r=3)
    assert list(grid.columns) == ["q_proj", "down_proj"] and list(grid.index) == [0, 1]
    assert np.array_equal(fig.axes[0].images[0].get_array(), [[4, 0], [2, 6]])
    assert grid.values.sum() == 12
    plt.close(fig)


def sweep_row(dataset, variant, seed, loss, avg, plan_bits=None):
    row = {"dataset": dataset, "variant": variant, "seed": seed, "last_quarter_cross_entropy": loss,
           "held_in_avg": avg, "held_in_accuracy": 0.1, "memory_mb": 100.0, "median_step_seconds": 1.0}
    return {f"{dataset} | {variant} | seed {seed}": row | ({} if plan_bits is None else {"plan_bits": plan_bits})}


def test_the_budget_rule_takes_the_fewest_bits_within_the_loss_ratio_and_avg_margin_on_every_data_set():
    from adaq_lora.display import budget_curves, budget_sweep_table, smallest_budget_within, sweep_means

    rows = {}
    for dataset in ("a", "b"):
        rows |= sweep_row(dataset, "qlora", 0, 1.0, 0.50)
        rows |= sweep_row(dataset, "3 bits", 0, 2.0, 0.50, 3.0)  # loss 2× qlora's: out
        rows |= sweep_row(dataset, "4 bits", 0, 1.2, 0.40 if dataset == "b" else 0.5, 4.0)  # Avg −0.10 on b: out
        rows |= sweep_row(dataset, "6 bits", 0, 1.1, 0.48, 6.0)
    assert sweep_means(rows, "a", "3 bits")["loss_ratio"] == pytest.approx(2.0)
    assert smallest_budget_within(rows, (3.0, 4.0, 6.0), datasets=("a", "b")) == "6 bits"
    assert smallest_budget_within(rows, (3.0, 4.0, 6.0), datasets=("a",)) == "4 bits"
    assert smallest_budget_within(rows, (3.0,), datasets=("a", "b")) is None
    for dataset in ("a", "b"):
        rows |= sweep_row(dataset, "3 bits, LoftQ start", 0, 1.2, 0.49, 3.0)  # another start passes at 3 bits
    assert smallest_budget_within(rows, (3.0, 4.0, 6.0), datasets=("a", "b")) == "3 bits, LoftQ start"
    assert sweep_means(rows, "a", "5 bits") is None  # never measured: no figure, not a zero
    assert "| a | 4 bits | 0 | 1.200 | 1.20 |" in budget_sweep_table(rows)
    fig = budget_curves(rows, datasets=("a", "b"))
    assert list(fig.axes[0].lines[0].get_xdata()) == [3.0, 4.0, 6.0]


def test_a_computed_table_is_displayed_where_it_is_called_not_only_as_a_cell_s_last_expression(monkeypatch):
    import IPython.display

    from adaq_lora.display import show_markdown

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert show_markdown("| a |\n|---|\n| 1 |") is None  # nothing returned for a cell to show a second time
    assert [item.data for item in shown] == ["| a |\n|---|\n| 1 |"]
