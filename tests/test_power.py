"""Claims about the power statement of chapter 8: the minimum detectable difference is found 80% of the time, it
shrinks as 1/√n, and the paper's test sets are 20% of its data sets, set beside the gaps the paper reports."""
import numpy as np
import pytest

from adaq_lora.grid.power import minimum_detectable_difference, power_markdown, power_rows
from test_claims import write_run


def test_the_minimum_detectable_difference_is_2_8_standard_errors_at_80_percent_power():
    assert minimum_detectable_difference(1.0, 100) == pytest.approx((1.959964 + 0.841621) / 10, rel=1e-6)
    assert minimum_detectable_difference(0.3, 400) == pytest.approx(minimum_detectable_difference(0.3, 100) / 2)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        minimum_detectable_difference(1.0, 1)


def test_a_true_difference_of_that_size_is_found_in_80_percent_of_test_sets():
    rng = np.random.default_rng(0)
    spread, n, trials = 0.4, 200, 4000
    delta = minimum_detectable_difference(spread, n)
    differences = rng.normal(delta, spread, size=(trials, n))
    z = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / np.sqrt(n))
    assert np.mean(np.abs(z) > 1.959964) == pytest.approx(0.80, abs=0.025)


def test_the_statement_sets_our_test_set_beside_the_paper_s_and_its_published_gap(tmp_path):
    adaq = [0.5, 0.7, 0.3, 0.6] * 50
    qlora = [a - 0.05 + (0.2 if i % 3 == 0 else -0.1) for i, a in enumerate(adaq)]
    results = [write_run(tmp_path, "adaq_lora", adaq, 100.0, accuracy=[1.0, 0.0] * 100),
               write_run(tmp_path, "qlora", qlora, 100.0, accuracy=[0.0, 1.0] * 100),
               write_run(tmp_path, "adaq_lora", adaq, 100.0, dataset="alpaca_zh"),
               write_run(tmp_path, "qlora", qlora, 100.0, dataset="alpaca_zh")]
    rows = {(row.group.split(", ")[-1], row.metric): row for row in power_rows(results)}
    assert set(rows) == {("school_math", "Avg"), ("school_math", "accuracy"), ("alpaca_zh", "Avg")}
    avg = rows["school_math", "Avg"]
    differences = np.subtract(adaq, qlora)
    assert (avg.prompts, avg.seeds, avg.seed_spreads) == (200, (1, 1), (0.0, 0.0))
    assert avg.spread == pytest.approx(differences.std(ddof=1))
    assert avg.detectable == pytest.approx(2.801585 * differences.std(ddof=1) / np.sqrt(200), rel=1e-5)
    assert avg.paper_prompts == 49_600 and rows["alpaca_zh", "Avg"].paper_prompts == 9_764
    assert avg.paper_gap == pytest.approx(0.4057 - 0.3989) and rows["alpaca_zh", "Avg"].paper_gap == pytest.approx(0.0021)
    assert rows["school_math", "accuracy"].paper_gap is None  # the paper reports no accuracy
    assert "| 49,600 |" in power_markdown(list(rows.values())) and "none published" in power_markdown(list(rows.values()))


def test_runs_with_nothing_to_compare_give_a_sentence_not_an_empty_table():
    text = power_markdown(power_rows([]))
    assert "|" not in text and text.startswith("*Nothing to size yet")


def test_the_paper_s_single_runs_are_sized_at_one_run_s_spread_and_each_method_s_seed_spread(tmp_path):
    rng = np.random.default_rng(1)
    adaq = {seed: rng.uniform(0.2, 0.8, 100) + 0.02 * seed for seed in (0, 1)}  # seed 1 a little better
    qlora = {seed: adaq[seed] + rng.normal(0.0, 0.1, 100) for seed in (0, 1)}  # independent noise per seed
    results = [write_run(tmp_path, method, list(scores[seed]), 100.0, seed=seed)
               for method, scores in (("adaq_lora", adaq), ("qlora", qlora)) for seed in (0, 1)]
    row, = power_rows(results, power=0.9)
    differences = np.mean([adaq[0], adaq[1]], axis=0) - np.mean([qlora[0], qlora[1]], axis=0)
    assert row.seeds == (2, 2) and row.spread == pytest.approx(differences.std(ddof=1))
    one_run = [(adaq[i] - qlora[j]).std(ddof=1) ** 2 for i in (0, 1) for j in (0, 1)]
    assert row.run_spread == pytest.approx(np.sqrt(np.mean(one_run)))
    assert row.run_spread > 1.2 * row.spread  # averaging two seeds shrinks the spread by about √2
    sigma = [np.std([scores[0].mean(), scores[1].mean()], ddof=1) for scores in (adaq, qlora)]
    assert row.seed_spreads == pytest.approx(sigma)
    assert row.detectable == pytest.approx(minimum_detectable_difference(
        row.spread, 100, power=0.9, seed_variance=(sigma[0] ** 2 + sigma[1] ** 2) / 2))
    assert row.detectable > minimum_detectable_difference(row.spread, 100, power=0.9)  # the seeds add their noise
    assert row.paper_detectable == pytest.approx(minimum_detectable_difference(
        row.run_spread, 49_600, power=0.9, seed_variance=sigma[0] ** 2 + sigma[1] ** 2))
    assert "at 90% power" in power_markdown([row])
