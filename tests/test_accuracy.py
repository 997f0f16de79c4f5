"""Answer accuracy (scoring/accuracy.py): right answers count, templates do not."""
from fractions import Fraction

import pytest

from adaq_lora.scoring.accuracy import accuracy_scores, answer_correct, answer_kind, numbers, working_correct
from adaq_lora.scoring.metrics import score

REFERENCE = "已经行驶了10×3=30千米。\n全程是30+114=144千米。\n答：全程一共有144千米。"
WRONG = "已经行驶了10×3=30千米。全程是30+114=416千米。答：全程一共有416千米。"


def test_a_wrong_answer_in_the_reference_s_template_scores_high_rouge_but_no_accuracy():
    assert score([WRONG], [REFERENCE])["avg"] > 0.8
    assert accuracy_scores([WRONG, REFERENCE], [REFERENCE, REFERENCE], "final_answer")["accuracy"] == [0.0, 1.0]


def test_numbers_are_compared_as_values_not_as_text():
    assert numbers("3.0 与 3/4，45%，1,200元") == [Fraction(3), Fraction(3, 4), Fraction(9, 20), Fraction(1200)]
    assert answer_correct("答：一共3.00千克。", "答：一共有3千克。", "final_answer")
    assert answer_correct("……\n答：这两个数分别是236和189。", "答：236和189", "final_answer")
    assert not answer_correct("答：189和236", "答：236和189", "final_answer")  # in order
    assert not answer_correct("", "答：5", "final_answer")


def test_the_final_answer_is_the_last_line_with_da_else_the_last_line():
    assert answer_correct("先算 2+2=4。\n再算 4+1=5。\n5", "答：5", "final_answer")
    assert not answer_correct("答：5。\n不对，答：6。", "答：5", "final_answer")


def test_exact_answers_ignore_whitespace_and_punctuation_but_not_case():
    assert answer_correct(" 锌元素的化学符号是 Zn ", "锌元素的化学符号是Zn。", "exact")
    assert answer_correct("ＡＰＰＬＥ", "APPLE", "exact")  # full-width letters are the same letters
    assert not answer_correct("锌元素的化学符号是zn", "锌元素的化学符号是Zn。", "exact")
    assert not answer_correct("apple", "APPLE", "exact")  # "rewrite in capitals" is answered by its capitals
    assert not answer_correct("锌元素的化学符号是Zr。", "锌元素的化学符号是Zn。", "exact")


def test_a_right_final_number_after_a_wrong_step_is_right_but_not_with_correct_working():
    lucky = "已经行驶了10×3=40千米。\n全程是30+114=144千米。\n答：全程一共有144千米。"  # 10×3 is not 40
    scores = accuracy_scores([lucky, REFERENCE, WRONG], [REFERENCE] * 3, "final_answer")
    assert scores == {"accuracy": [1.0, 1.0, 0.0], "accuracy_working": [0.0, 1.0, 0.0]}
    assert "accuracy_working" not in accuracy_scores(["APPLE"], ["APPLE"], "exact")  # no working to check


@pytest.mark.parametrize("working, holds", [
    ("(2+3)×4=20", True), ("2+3×4=14", True), ("2+3×4=20", False), ("10÷3=3.33", True), ("10÷3=3.4", False),
    ("7-2=5=5", True), ("2×3=6-1=5", False),  # a chain states every side equal: 6 is not 5
    ("30千米+114千米=144千米", True),  # the operands stand apart from their units: not read as a step
    ("答：一共5个", True), ("5÷0=0", True),  # no step; a step that cannot be evaluated is not judged
])
def test_each_step_of_the_working_is_checked_in_exact_arithmetic(working, holds):
    assert working_correct(working) is holds


def test_each_data_set_has_its_kind_and_unknown_kinds_are_refused():
    assert answer_kind("school_math") == answer_kind("BelleGroup/school_math_0.25M") == "final_answer"
    assert answer_kind("alpaca_zh") == answer_kind("shibing624/alpaca-zh") == "exact"
    with pytest.raises(ValueError, match="unknown answer kind"):
        answer_correct("a", "a", "fuzzy")


def test_recorded_runs_are_re_scored_from_their_own_predictions_and_say_what_changed(tmp_path):
    import json

    from conftest import load_script

    rescore = load_script("add_accuracy").rescore
    rows = [{"prompt": "p", "reference": REFERENCE, "prediction": prediction, "scores": {"avg": 0.9}}
            for prediction in (WRONG, REFERENCE, REFERENCE, "答：144\u2028")]  # U+2028 stays raw in JSON
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    result = {"dataset": "school_math", "n_test": 4, "settings": {"bootstrap_resamples": 200},
              "intervals": {"avg": [0.8, 0.95]}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert rescore(tmp_path) == {"accuracy": 4, "accuracy_working": 4}  # none had either: every answer is new
    scored = json.loads((tmp_path / "result.json").read_text())
    assert scored["accuracy"] == scored["accuracy_working"] == 0.75 and scored["intervals"]["avg"] == [0.8, 0.95]
    low, high = scored["intervals"]["accuracy"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().split("\n") if line]
    assert [line["scores"]["accuracy"] for line in lines] == [0.0, 1.0, 1.0, 1.0]
    assert rescore(tmp_path) is None  # scored as the package scores now: left as it is
    lines[1]["scores"]["accuracy_working"] = 0.0  # as if scored by an older rule
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    assert rescore(tmp_path) == {"accuracy": 0, "accuracy_working": 1}


def test_a_sign_and_the_decimals_after_a_thousands_separator_count():
    assert not answer_correct("答：-3", "答：3", "final_answer")
    assert answer_correct("答：气温是−3℃。", "答：-3度", "final_answer")
    assert numbers("还剩245-105=140") == [245, 105, 140]  # a minus between digits is the operation
    assert numbers("1,200.5元") == [Fraction(2401, 2)]
    assert not answer_correct("答：1,200.9元", "答：1200元", "final_answer")
