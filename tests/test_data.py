"""Claims about loading, validating, splitting and tokenizing instruction records."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from adaq_lora import data
from adaq_lora.scoring.accuracy import answer_correct, answer_kind, final_line, numbers
from adaq_lora.data import (FieldMap, build_example, build_prompt, collate_examples, encode_prompt, load_records,
                            prompt_text, split_records)

REPO = Path(__file__).resolve().parents[1]
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
RECORD = {"instruction": "把下面的数量换算成厘米。", "input": "3米", "output": "3米=300厘米"}


def char_tokenizer(chat_template=None):
    """A real fast tokenizer, one token per character (BPE without merges), BOS added to plain text."""
    characters = set("".join(SPECIAL_TOKENS) + "\n abcdefghijklmnopqrstuvwxyz0123456789")
    for name in data.STANDIN_FILES.values():
        characters |= set((REPO / "data" / name).read_text(encoding="utf-8"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(characters))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=["<|user|>", "<|assistant|>"])
    tokenizer.chat_template = chat_template
    return tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# Loading


def test_each_of_the_papers_sets_is_known_by_its_stand_in_its_hub_id_and_a_file_named_for_it():
    school_math, alpaca = data.paper_dataset("school_math"), data.paper_dataset("alpaca_zh")
    assert (school_math.title, alpaca.title) == ("School_math", "Alpaca_Chinese")
    assert data.paper_dataset("BelleGroup/school_math_0.25M") is school_math
    assert data.paper_dataset("/data/my-school-math.jsonl") is school_math
    assert data.paper_dataset("shibing624/alpaca-zh") is alpaca
    assert data.paper_dataset("/data/recipes.jsonl") is None
    assert answer_kind("/data/recipes.jsonl") == "exact"  # a set of one's own is checked exactly


def test_each_standin_loads_a_thousand_records_of_three_strings():
    for name in ("school_math", "alpaca_zh"):
        records = load_records(name)
        assert len(records) == 1000
        assert all(set(record) == {"instruction", "input", "output"} for record in records)
        assert all(isinstance(value, str) for record in records for value in record.values())
    assert all(record["input"] == "" for record in load_records("school_math"))
    assert sum(record["input"] != "" for record in load_records("alpaca_zh")) > 500


def test_a_school_math_shaped_jsonl_file_loads_with_an_empty_input(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"instruction": "题目：1+1等于几？", "output": "1+1=2。\n答：2。"},
                                                 {"instruction": "题目：2×3等于几？", "output": "答：6。"}])
    assert load_records(str(path)) == [
        {"instruction": "题目：1+1等于几？", "input": "", "output": "1+1=2。\n答：2。"},
        {"instruction": "题目：2×3等于几？", "input": "", "output": "答：6。"}]


def test_an_alpaca_shaped_json_array_loads_and_a_null_input_reads_as_empty(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([RECORD, {"instruction": "你好", "input": None, "output": "你好！"}],
                               ensure_ascii=False, indent=2), encoding="utf-8")
    assert load_records(path) == [RECORD, {"instruction": "你好", "input": "", "output": "你好！"}]


def test_a_json_file_holding_json_lines_loads_as_belle_ships_it(tmp_path):
    path = write_jsonl(tmp_path / "school_math_0.25M.json", [RECORD, RECORD])
    assert load_records(path) == [RECORD, RECORD]


def test_a_field_map_names_the_source_columns(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "问", "context": "文", "answer": "答"}])
    field_map = FieldMap(instruction="question", input="context", output="answer")
    assert load_records(path, field_map) == [{"instruction": "问", "input": "文", "output": "答"}]


def test_a_field_map_refuses_an_empty_column_name():
    with pytest.raises(ValueError, match="FieldMap.output"):
        FieldMap(output="")


@pytest.mark.parametrize("lines, line_number, words", [
    (['{"instruction": "a", "output": "b"}', '{"instruction": "a", "output": }'], 2, ["not valid JSON"]),
    (['{"instruction": "a", "output": "b"}', "", '{"instruction": "a"}'], 3, ["missing field", "'output'"]),
    (['{"instruction": "a", "output": "b"}', '{"instruction": 5, "output": "b"}'], 2, ["'instruction'", "int"]),
    (['{"instruction": "a", "input": ["x"], "output": "b"}'], 1, ["'input'", "list"]),
    (['["instruction", "output"]'], 1, ["expected a JSON object"]),
])
def test_a_bad_jsonl_line_is_refused_naming_the_file_line_and_field(tmp_path, lines, line_number, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_records(path)
    assert f"bad.jsonl, line {line_number}:" in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_a_bad_item_in_a_json_array_is_refused_naming_the_line_it_starts_on(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a",\n   "output": "b"},\n\n  {"instruction": "a",\n   "output": 7}\n]',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json, line 5: field 'output' must be a string"):
        load_records(path)


def test_a_malformed_json_array_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(ValueError, match=r"broken\.json, line 3: not valid JSON"):
        load_records(path)


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "\n  \n", "the file is empty"),
    ("empty.json", "[]", "holds no records"),
    ("notes.txt", "instruction: a", "unsupported file type '.txt'"),
])
def test_an_empty_or_unsupported_file_is_refused_naming_it(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_records(path)
    assert name in str(error.value)


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere\.jsonl: no such file"):
        load_records(str(tmp_path / "nowhere.jsonl"))


def test_a_missing_standin_file_says_how_to_regenerate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match="make_standins.py") as error:
        load_records("alpaca_zh")
    assert "alpaca_zh_standin.jsonl" in str(error.value)


def test_a_hub_id_offline_is_refused_naming_the_id_and_the_ways_out(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as error:
        load_records("shibing624/alpaca-zh")
    message = str(error.value)
    assert "'shibing624/alpaca-zh'" in message
    for way_out in ("internet", ".jsonl path", "school_math", "alpaca_zh"):
        assert way_out in message


def serve_from_hub(monkeypatch, rows):
    """Stand in for the network only: load_dataset returns a real datasets.Dataset built from rows."""
    requested = []

    def load_dataset(hub_id, split):
        requested.append((hub_id, split))
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"instruction": []})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return requested


def test_a_hub_set_loads_through_its_field_map(monkeypatch):
    requested = serve_from_hub(monkeypatch, [{"prompt": "问", "response": "答"}])
    monkeypatch.setitem(data.HUB_FIELD_MAPS, "someone/qa", FieldMap(instruction="prompt", output="response"))
    assert load_records("someone/qa") == [{"instruction": "问", "input": "", "output": "答"}]
    assert requested == [("someone/qa", "train")]


def test_an_unknown_hub_set_lacking_columns_lists_the_missing_ones(monkeypatch):
    serve_from_hub(monkeypatch, [{"instruction": "问", "response": "答"}])
    with pytest.raises(ValueError, match=r"'someone/qa' lacks required column\(s\) \['output'\]"):
        load_records("someone/qa")


def test_a_hub_row_with_a_null_answer_is_refused_naming_the_row(monkeypatch):
    serve_from_hub(monkeypatch, [{"instruction": "问", "output": "答"}, {"instruction": "问", "output": None}])
    with pytest.raises(ValueError, match=r"someone/qa, row 1: field 'output' must be a string"):
        load_records("someone/qa")


def test_an_empty_hub_split_is_refused(monkeypatch):
    serve_from_hub(monkeypatch, [])
    with pytest.raises(ValueError, match="train split is empty"):
        load_records("someone/qa")


# Splitting


def numbered_records(count):
    return [{"instruction": f"q{index}", "input": "", "output": f"a{index}"} for index in range(count)]


def test_the_split_is_80_20_disjoint_and_covers_every_record():
    records = numbered_records(1000)
    train, test = split_records(records)
    assert (len(train), len(test)) == (800, 200)
    train_ids = {record["instruction"] for record in train}
    test_ids = {record["instruction"] for record in test}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {record["instruction"] for record in records}


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    records = numbered_records(50)
    assert split_records(records, seed=3) == split_records(records, seed=3)
    assert split_records(records, seed=3)[1] != split_records(records, seed=4)[1]


@pytest.mark.parametrize("count, fraction, message", [
    (10, 0.0, "strictly between 0 and 1"), (10, 1.0, "strictly between 0 and 1"),
    (2, 0.2, "test set would be empty"), (3, 0.9, "training set would be empty")])
def test_a_split_that_would_leave_a_side_empty_is_refused(count, fraction, message):
    with pytest.raises(ValueError, match=message):
        split_records(numbered_records(count), test_fraction=fraction)


# Prompts and tokenization


def test_the_prompt_is_the_instruction_then_the_input():
    assert prompt_text(RECORD) == "把下面的数量换算成厘米。\n3米"
    assert prompt_text({**RECORD, "input": ""}) == "把下面的数量换算成厘米。"


def test_without_a_chat_template_the_prompt_is_followed_by_a_newline_and_gets_a_bos():
    tokenizer = char_tokenizer()
    assert build_prompt(RECORD, tokenizer) == "把下面的数量换算成厘米。\n3米\n"
    ids = encode_prompt(RECORD, tokenizer)
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == 1 + len("把下面的数量换算成厘米。\n3米\n")


def test_with_a_chat_template_the_prompt_is_a_user_turn_opening_the_assistant_turn():
    tokenizer = char_tokenizer(CHAT_TEMPLATE)
    assert build_prompt(RECORD, tokenizer) == "<|user|>\n把下面的数量换算成厘米。\n3米\n<|assistant|>\n"
    ids = encode_prompt(RECORD, tokenizer)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|user|>")
    assert tokenizer.bos_token_id not in ids


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE])
def test_prompt_positions_are_masked_and_answer_positions_carry_their_ids(chat_template):
    tokenizer = char_tokenizer(chat_template)
    example = build_example(RECORD, tokenizer, max_length=128)
    prompt_length = len(encode_prompt(RECORD, tokenizer))
    assert example["labels"][:prompt_length] == [-100] * prompt_length
    assert example["labels"][prompt_length:] == example["input_ids"][prompt_length:]
    assert example["labels"][prompt_length:] == (tokenizer.convert_tokens_to_ids(list(RECORD["output"]))
                                                 + [tokenizer.eos_token_id])
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    assert len(example["input_ids"]) == prompt_length + len(RECORD["output"]) + 1


def test_truncation_keeps_the_prompt_and_cuts_the_answer_to_max_length():
    tokenizer = char_tokenizer()
    prompt_length = len(encode_prompt(RECORD, tokenizer))
    example = build_example(RECORD, tokenizer, max_length=prompt_length + 3)
    assert len(example["input_ids"]) == len(example["labels"]) == len(example["attention_mask"]) == prompt_length + 3
    assert example["labels"][prompt_length:] == tokenizer.convert_tokens_to_ids(list("3米="))


def test_a_prompt_that_fills_max_length_is_refused_with_its_length():
    tokenizer = char_tokenizer()
    prompt_length = len(encode_prompt(RECORD, tokenizer))
    with pytest.raises(ValueError, match=f"the prompt takes {prompt_length} tokens"):
        build_example(RECORD, tokenizer, max_length=prompt_length)


def test_a_batch_is_right_padded_with_ignored_labels():
    tokenizer = char_tokenizer()
    short = build_example({**RECORD, "input": ""}, tokenizer, max_length=128)
    long = build_example(RECORD, tokenizer, max_length=128)
    batch = collate_examples([short, long], pad_token_id=tokenizer.pad_token_id)
    width, gap = len(long["input_ids"]), len(long["input_ids"]) - len(short["input_ids"])
    assert gap == len("\n3米")
    assert {name: tuple(tensor.shape) for name, tensor in batch.items()} == {
        "input_ids": (2, width), "labels": (2, width), "attention_mask": (2, width)}
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, -gap:].tolist() == [tokenizer.pad_token_id] * gap
    assert batch["labels"][0, -gap:].tolist() == [-100] * gap
    assert batch["attention_mask"][0].tolist() == [1] * (width - gap) + [0] * gap
    assert batch["input_ids"][1].tolist() == long["input_ids"]


def test_collating_without_a_pad_id_is_refused():
    with pytest.raises(ValueError, match="pad_token_id must be an int"):
        collate_examples([{"input_ids": [1], "labels": [1], "attention_mask": [1]}], pad_token_id=None)


# The stand-in generator


def test_the_generator_rewrites_the_committed_standins_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(REPO / "data" / "make_standins.py"), "--out", str(tmp_path)], check=True)
    for name in data.STANDIN_FILES.values():
        assert (tmp_path / name).read_bytes() == (REPO / "data" / name).read_bytes()


def test_every_standin_reference_is_right_by_the_checker_its_data_set_is_scored_with():
    for name in ("school_math", "alpaca_zh"):
        kind = answer_kind(name)
        assert all(answer_correct(r["output"], r["output"], kind) for r in load_records(name)), name


def test_school_math_solutions_take_three_to_five_steps_and_end_in_an_answer_line():
    steps = Counter(len(r["output"].splitlines()) - 1 for r in load_records("school_math"))
    assert set(steps) == {3, 4, 5}
    assert min(steps.values()) > 100  # each length is common, not a corner case
    assert all(r["output"].splitlines()[-1].startswith("答：") for r in load_records("school_math"))


def test_the_answer_line_holds_the_result_of_a_step_not_a_number_of_the_question():
    for record in load_records("school_math"):
        step_results = {n for line in record["output"].splitlines()[:-1] for n in numbers(line.split("=")[-1])}
        assert set(numbers(final_line(record["output"]))) <= step_results, record


def test_the_standins_come_from_many_families_in_varied_words():
    math = load_records("school_math")
    assert sum(r["instruction"].count("。") >= 1 for r in math) > 900  # facts in sentences, then the question
    assert len({r["instruction"][3:8] for r in math}) > 100  # openings vary: names, distractors, phrasings
    openings = Counter(r["instruction"][:6] for r in load_records("alpaca_zh"))
    assert len(openings) > 40 and max(openings.values()) < 120  # no one task dominates
