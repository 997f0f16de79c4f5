"""Claims about the book's concept diagrams: each is one figure with its panels, the NF4 diagram draws the package's
own 16 levels and QLoRA's bits per weight, the budget curve falls from n · init_r to n · target_r, and the mask
diagram zeroes one λ where LoRA's pruning zeroes a column of B and a row of A."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from adaq_lora.diagrams import (MASKED, budget_diagram, lora_diagram, nf4_diagram,  # noqa: E402
                                svd_mask_diagram)
from adaq_lora.quant.nf4 import nf4_levels  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(ax) -> list[str]:
    return [text.get_text() for text in ax.texts]


def artist(ax, gid: str):
    return next(line for line in ax.lines if line.get_gid() == gid)


def zeroed_boxes(ax) -> int:
    return sum(isinstance(patch, Rectangle) and patch.get_facecolor() == to_rgba(MASKED) for patch in ax.patches)


def test_the_lora_diagram_labels_the_three_shapes_and_starts_b_at_zero():
    fig = lora_diagram()
    (ax,) = fig.axes
    shown = "\n".join(texts(ax))
    assert "n × d" in shown and "r × d" in shown and "n × r" in shown
    assert "0\n0\n0\n0" in texts(ax)  # B's entries
    assert any("starts at 0" in text for text in texts(ax)) and any("Gaussian" in text for text in texts(ax))


def test_masking_zeroes_one_lambda_where_pruning_zeroes_a_column_and_a_row():
    fig = svd_mask_diagram(masked=2)
    ax_svd, ax_lora = fig.axes
    assert zeroed_boxes(ax_svd) == 1  # λ_3 only: P's column and Q's row keep their colour
    assert zeroed_boxes(ax_lora) == 2  # B's column and A's row
    lambdas = [text for text in texts(ax_svd) if text.startswith("$\\lambda_") and text.endswith("$")]
    assert lambdas == ["$\\lambda_1$", "$\\lambda_2$", "$\\lambda_4$"]


def test_the_nf4_diagram_draws_the_package_levels_and_the_bits_per_weight():
    fig = nf4_diagram()
    ax_levels, ax_store = fig.axes
    drawn = artist(ax_levels, "nf4-levels").get_xdata()
    assert np.array_equal(np.asarray(drawn), nf4_levels().numpy())
    assert [text for text in texts(ax_levels) if text.isdigit()] == [str(code) for code in range(16)]
    assert any("≈ 4.127" in text for text in texts(ax_store))


def test_the_budget_falls_from_n_init_r_to_n_target_r_and_remasks_every_delta_t():
    fig = budget_diagram(matrices=5, init_r=12, target_r=6, total_steps=60, t_init=6, t_final=12, delta_t=4)
    (ax,) = fig.axes
    budget = np.asarray(artist(ax, "budget").get_ydata())
    assert len(budget) == 61 and budget[0] == 5 * 12 and budget[-1] == 5 * 6
    assert (np.diff(budget) <= 0).all() and (budget[:7] == 60).all()
    remask = [line for line in ax.lines if line.get_gid() is None and line.get_marker() == "o"][0].get_xdata()
    assert list(remask) == [*range(6, 48, 4), 48]
