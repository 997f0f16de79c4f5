"""Claims about the ROUGE / BLEU scores and their bootstrap intervals."""

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from adaq_lora.scoring.metrics import (METRIC_NAMES, SCORE_NAMES, bootstrap_intervals, paired_bootstrap,
                               per_example_scores, score)

MATH_ANSWER = "每支铅笔的价格是12÷3=4元。\n买5支需要4×5=20元。\n答：需要20元。"


@pytest.mark.parametrize("text, lang", [(MATH_ANSWER, "zh"), ("The capital of France is Paris.", "en")])
def test_identical_strings_score_one_on_every_metric(text, lang):
    scores = score([text], [text], lang=lang)
    assert set(scores) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert scores[name] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("prediction, reference, lang", [
    ("苹果和香蕉", "汽车开得快", "zh"), ("red green blue", "a dog ran home", "en")])
def test_strings_sharing_nothing_score_zero(prediction, reference, lang):
    assert score([prediction], [reference], lang=lang) == {name: 0.0 for name in METRIC_NAMES}


@pytest.mark.parametrize("prediction", ["", "   \n"])
def test_an_empty_prediction_scores_zero_rather_than_raising(prediction):
    assert score([prediction], [MATH_ANSWER]) == {name: 0.0 for name in METRIC_NAMES}


@pytest.mark.parametrize("prediction, reference, lang", [
    ("猫 狗 鸟", "猫 狗 鱼", "zh"), ("the cat sat", "the cat ran", "en")])
def test_two_shared_words_of_three_give_rouge_1_of_two_thirds(prediction, reference, lang):
    # unigrams: 2 of 3 shared each way, so P = R = F = 2/3; bigrams: 1 of 2 shared, so F = 1/2
    scores = score([prediction], [reference], lang=lang)
    assert scores["rouge-1"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["rouge-2"] == pytest.approx(1 / 2, abs=1e-6)
    assert scores["rouge-l"] == pytest.approx(2 / 3, abs=1e-6)


@pytest.mark.parametrize("prediction", ["每支铅笔4元，买5支要20元。\n答：需要20元。", "铅笔每支4元，5支共20元"])
def test_chinese_scores_match_rouge_chinese_and_nltk_called_directly(prediction):
    # the second prediction shares no 4-gram with the reference, so the smoothing method shows
    rouge = Rouge().get_scores(" ".join(jieba.cut(prediction)), " ".join(jieba.cut(MATH_ANSWER)))[0]
    bleu = sentence_bleu([list(MATH_ANSWER)], list(prediction), smoothing_function=SmoothingFunction().method3)
    scores = score([prediction], [MATH_ANSWER])
    assert scores["rouge-1"] == pytest.approx(rouge["rouge-1"]["f"], abs=1e-12)
    assert scores["rouge-2"] == pytest.approx(rouge["rouge-2"]["f"], abs=1e-12)
    assert scores["rouge-l"] == pytest.approx(rouge["rouge-l"]["f"], abs=1e-12)
    assert scores["bleu-4"] == pytest.approx(bleu, abs=1e-12)
    assert 0.1 < scores["rouge-1"] < 0.9 and 0.01 < scores["bleu-4"] < 0.9


def test_the_score_is_the_mean_over_examples_and_avg_the_mean_of_the_four():
    predictions = [MATH_ANSWER, "猫 狗 鸟", ""]
    references = [MATH_ANSWER, "猫 狗 鱼", "答：6。"]
    per_example = per_example_scores(predictions, references)
    assert per_example["rouge-1"] == pytest.approx([1.0, 2 / 3, 0.0], abs=1e-6)
    scores = score(predictions, references)
    assert scores["rouge-1"] == pytest.approx((1 + 2 / 3) / 3, abs=1e-6)
    assert scores["avg"] == pytest.approx(sum(scores[name] for name in SCORE_NAMES) / 4, abs=1e-12)


def test_mismatched_lengths_are_refused_naming_both():
    with pytest.raises(ValueError, match="got 3 predictions but 2 references"):
        score(["a", "b", "c"], ["a", "b"])


@pytest.mark.parametrize("predictions, lang, message", [([], "zh", "no predictions"), (["a"], "fr", "lang")])
def test_no_predictions_or_an_unknown_language_is_refused(predictions, lang, message):
    with pytest.raises(ValueError, match=message):
        score(predictions, predictions, lang=lang)


def spread_scores(seed, count=200, shift=0.0):
    values = np.clip(np.random.default_rng(seed).normal(0.4 + shift, 0.15, count), 0, 1)
    return {name: values.tolist() for name in METRIC_NAMES}


def test_the_bootstrap_interval_contains_the_mean_and_repeats_with_the_seed():
    per_example = spread_scores(seed=1)
    intervals = bootstrap_intervals(per_example, n_resamples=500, seed=7)
    mean = float(np.mean(per_example["avg"]))
    for name in METRIC_NAMES:
        low, high = intervals[name]
        assert low < mean < high
        # the standard error of a mean of 200 values with spread 0.15 is about 0.0106; 95% is +/- 1.96 of it
        assert high - low == pytest.approx(2 * 1.96 * 0.15 / np.sqrt(200), rel=0.25)
    assert bootstrap_intervals(per_example, n_resamples=500, seed=7) == intervals
    assert bootstrap_intervals(per_example, n_resamples=500, seed=8) != intervals


def test_the_bootstrap_interval_of_constant_scores_is_that_constant():
    intervals = bootstrap_intervals({"avg": [0.25] * 10}, n_resamples=50)
    assert intervals == {"avg": (0.25, 0.25)}


@pytest.mark.parametrize("per_example, message", [
    ({}, "no metrics"), ({"avg": [0.1, 0.2], "bleu-4": [0.1]}, "one value per example"),
    ({"avg": []}, "no examples")])
def test_malformed_per_example_scores_are_refused(per_example, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(per_example)


def test_the_paired_bootstrap_says_a_beats_b_when_a_is_clearly_better():
    b = spread_scores(seed=2)
    gains = np.random.default_rng(5).normal(0.05, 0.1, 200)
    a = {name: (np.asarray(values) + gains).tolist() for name, values in b.items()}
    comparison = paired_bootstrap(a, b, n_resamples=500)
    assert comparison.metric == "avg"
    assert comparison.mean_difference == pytest.approx(gains.mean(), abs=1e-12)
    assert 0 < comparison.interval[0] < comparison.mean_difference < comparison.interval[1]
    assert comparison.a_better_fraction == 1.0


def test_the_paired_bootstrap_is_undecided_between_two_similar_methods():
    comparison = paired_bootstrap(spread_scores(seed=3), spread_scores(seed=4), metric="rouge-1", n_resamples=500)
    low, high = comparison.interval
    assert low < comparison.mean_difference < high
    assert low < 0 < high
    assert 0.025 < comparison.a_better_fraction < 0.975
    assert paired_bootstrap(spread_scores(seed=3), spread_scores(seed=4), metric="rouge-1",
                            n_resamples=500) == comparison


def test_the_paired_bootstrap_refuses_different_test_sets_naming_both_sizes():
    with pytest.raises(ValueError, match="A has 200 examples but B has 150"):
        paired_bootstrap(spread_scores(seed=1), spread_scores(seed=2, count=150))


@pytest.mark.parametrize("options, message", [
    ({"metric": "bleu"}, "metric 'bleu' is missing"), ({"n_resamples": 0}, "n_resamples"),
    ({"confidence": 95}, "confidence")])
def test_the_paired_bootstrap_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(spread_scores(seed=1), spread_scores(seed=2), **options)
