"""Instruction data: the paper's two sets, local files in their shape, the 80/20 split, and the
tokenized training examples.

Paper Section 3 ("Experiment and Result Analysis"): Alpaca_Chinese and School_math, divided 80/20 into
training and test sets; "by adding prompt instructions before input", the prompt is the instruction
followed by the input and the answer is the output. Book chapters 1 and 7.

A record is a dict with three strings: ``instruction``, ``input`` ("" when the set has none) and
``output``. ``load_records`` reads them from a stand-in name, a hub id or a JSON / JSONL path, and
validates every row before returning, so a set is either loaded whole or refused with an error that
names the file and line (or hub id and row) and the field at fault.

For training, the prompt is wrapped in the tokenizer's chat template as a user turn when the tokenizer
has one (with the generation prompt that opens the assistant turn); otherwise it is followed by a
newline. The answer and the end-of-sequence token follow. Only the answer is learned: prompt positions
carry the label -100, which the cross-entropy loss ignores.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

RECORD_FIELDS = ("instruction", "input", "output")
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
FILE_SUFFIXES = (".json", ".jsonl")
_BETWEEN_ARRAY_ITEMS = re.compile(r"[\s,]*")
IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips


@dataclass(frozen=True)
class FieldMap:
    """Which source column holds each record field; names are mapped explicitly, never guessed."""

    instruction: str = "instruction"  # column with the task statement (required)
    input: str = "input"  # column with the extra input; a row without it (or with null) gets ""
    output: str = "output"  # column with the reference answer (required)

    def __post_init__(self):
        for field in RECORD_FIELDS:
            column = getattr(self, field)
            if not isinstance(column, str) or not column:
                raise ValueError(f"FieldMap.{field} must be a non-empty column name, got {column!r}")

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (self.instruction, self.output)


@dataclass(frozen=True)
class PaperDataset:
    """One of the paper's two sets, and every name a run may give it: the one home of "which set is this"."""

    title: str  # as the paper's table captions name it
    key: str  # a data file whose name holds this (after "-" -> "_") is taken for this set
    standin: str  # our seeded stand-in's name (data/<standin>_standin.jsonl)
    hub_id: str  # the paper's set on the hub
    answer_kind: str  # how an answer is checked for accuracy: scoring/accuracy.py's ANSWER_KINDS

    def names(self, dataset: str | Path) -> bool:
        """Whether `dataset` (a stand-in name, a hub id or a file) is this set."""
        return str(dataset) in (self.standin, self.hub_id) or self.key in Path(dataset).name.lower().replace("-", "_")


PAPER_DATASETS = (
    PaperDataset("Alpaca_Chinese", "alpaca", "alpaca_zh", "shibing624/alpaca-zh", "exact"),
    PaperDataset("School_math", "school_math", "school_math", "BelleGroup/school_math_0.25M", "final_answer"),
)
STANDIN_FILES = {paper_set.standin: f"{paper_set.standin}_standin.jsonl" for paper_set in PAPER_DATASETS}


def paper_dataset(dataset: str | Path) -> PaperDataset | None:
    """The paper's set that `dataset` names, or None for a set of the user's own."""
    return next((paper_set for paper_set in PAPER_DATASETS if paper_set.names(dataset)), None)


# The paper's two sets, as their hub pages list the columns. Both happen to use the record's own
# names; a set that does not gets its own entry here rather than a guess at load time.
HUB_FIELD_MAPS = {
    "shibing624/alpaca-zh": FieldMap(instruction="instruction", input="input", output="output"),
    "BelleGroup/school_math_0.25M": FieldMap(instruction="instruction", input="input", output="output"),
}


def load_records(source: str | Path, field_map: FieldMap | None = None) -> list[dict]:
    """Load instruction records from a stand-in name, a JSON / JSONL path, or a hub id.

    ``source`` is tried in that order: a key of ``STANDIN_FILES`` ("alpaca_zh", "school_math"), then a
    path (a ``Path``, a name ending in .json / .jsonl, or an existing file), then a hub id loaded with
    ``datasets.load_dataset(source, split="train")``. ``field_map`` overrides the column mapping; by
    default a hub id uses its ``HUB_FIELD_MAPS`` entry and everything else the identity map.
    """
    if isinstance(source, str) and source in STANDIN_FILES:
        path = DATA_DIR / STANDIN_FILES[source]
        if not path.is_file():
            raise ValueError(f"stand-in {source!r} should be at {path}, which is missing: "
                             f"regenerate it with `python data/make_standins.py` in the repository root")
        return _load_file(path, field_map or FieldMap())
    if isinstance(source, Path) or str(source).endswith(FILE_SUFFIXES) or Path(source).is_file():
        return _load_file(Path(source), field_map or FieldMap())
    return _load_hub(source, field_map or HUB_FIELD_MAPS.get(source, FieldMap()))


def split_records(records: list[dict], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle with a seeded generator and cut into (train, test); the paper uses an 80/20 split."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    test_size = round(len(records) * test_fraction)
    if test_size == 0 or test_size == len(records):
        raise ValueError(f"cannot split {len(records)} records with test_fraction={test_fraction}: "
                         f"the {'test' if test_size == 0 else 'training'} set would be empty; use more records")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[test_size:]], [records[i] for i in order[:test_size]]


def prompt_text(record: dict) -> str:
    """The user turn: the instruction, then the input on the next line when there is one."""
    if record["input"]:
        return f"{record['instruction']}\n{record['input']}"
    return record["instruction"]


def build_prompt(record: dict, tokenizer) -> str:
    """The text a model continues to answer ``record``: used for training and for generation alike."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt_text(record)}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt_text(record) + "\n"


def encode_prompt(record: dict, tokenizer) -> list[int]:
    """Token ids of ``build_prompt``; a chat template writes its own special tokens, plain text gets the
    tokenizer's usual ones (a BOS where the tokenizer adds one)."""
    # ChatGLM2's template is plain text that its model reads behind the usual [gMASK] sop prefix; its tokenizer
    # says so with chat_template_adds_special_tokens = False.
    add_special_tokens = (not _has_chat_template(tokenizer)
                          or not getattr(tokenizer, "chat_template_adds_special_tokens", True))
    return tokenizer(build_prompt(record, tokenizer), add_special_tokens=add_special_tokens)["input_ids"]


def build_example(record: dict, tokenizer, max_length: int) -> dict[str, list[int]]:
    """Token ids, labels and attention mask for one record, truncated to ``max_length`` tokens.

    The sequence is prompt + answer + EOS; truncation cuts from the end, so a long answer loses its tail
    (and its EOS). A prompt that leaves no room for a single answer token is refused, because an example
    with every label ignored teaches nothing and makes the mean loss undefined.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer of at least 2, got {max_length!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token so answers can end")
    prompt_ids = encode_prompt(record, tokenizer)
    if len(prompt_ids) >= max_length:
        raise ValueError(f"the prompt takes {len(prompt_ids)} tokens, leaving no room for the answer within "
                         f"max_length={max_length} (instruction starts {record['instruction'][:30]!r}); "
                         f"raise max_length or drop this record")
    answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def tokenize_records(records: list[dict], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """``build_example`` of every record: the one tokenization a run makes, shared by calibration, memory and training."""
    return [build_example(record, tokenizer, max_length) for record in records]


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (Llama-style tokenizers have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate_examples(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of ``build_example`` outputs into long tensors; padded labels are -100.

    Use with a DataLoader as ``functools.partial(collate_examples, pad_token_id=...)``.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if not isinstance(pad_token_id, int):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}; "
                         f"a tokenizer without a pad token can pad with its eos_token_id")
    width = max(len(example["input_ids"]) for example in examples)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([example[key] + [fill] * (width - len(example[key])) for example in examples],
                            dtype=torch.long)

    return {"input_ids": padded("input_ids", pad_token_id), "labels": padded("labels", IGNORE_INDEX),
            "attention_mask": padded("attention_mask", 0)}


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _load_file(path: Path, field_map: FieldMap) -> list[dict]:
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; give a .json or .jsonl file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give an existing .json / .jsonl path, a hub id, "
                         f"or a stand-in name ({', '.join(STANDIN_FILES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerates a byte-order mark
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; it should hold instruction records")
    # A JSON array is one document; anything else is read as JSON Lines, which is also how BELLE
    # ships its .json files.
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = _json_array_rows(text, path)
    else:
        rows = json_lines_rows(text, path)
    if not rows:
        raise ValueError(f"{path}: holds no records (an empty JSON array)")
    return [_to_record(row, field_map, where) for where, row in rows]


def json_lines_rows(text: str, path: Path) -> list[tuple[str, object]]:
    """Each non-blank line of a JSON Lines text parsed, beside "<path>, line N" for messages about it."""
    rows = []
    # Split on "\n" only: str.splitlines would also split at U+2028, which may sit inside a string.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}, line {line_number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {line_number}: not valid JSON ({err.msg}, column {err.colno}); "
                             f"each line should be one JSON object") from None
    return rows


def _json_array_rows(text: str, path: Path) -> list[tuple[str, object]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
    # Walk the parsed text once more to learn the line each item starts on, for error messages.
    decoder = json.JSONDecoder()
    rows, position, line_number = [], text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for item in items:
        start = _BETWEEN_ARRAY_ITEMS.match(text, position).end()
        line_number += text.count("\n", position, start)
        rows.append((f"{path}, line {line_number}", item))
        _, end = decoder.raw_decode(text, start)
        line_number += text.count("\n", start, end)
        position = end
    return rows


def _load_hub(hub_id: str, field_map: FieldMap) -> list[dict]:
    try:
        import datasets  # only for hub data sets: the stand-ins and local files need no `datasets`

        table = datasets.load_dataset(hub_id, split="train")
    except OSError as err:
        raise ValueError(
            f"cannot load hub data set {hub_id!r} ({type(err).__name__}: {err}). Connect to the internet "
            f"(and unset HF_HUB_OFFLINE), or download the set and pass its .json / .jsonl path, "
            f"or use a stand-in name ({', '.join(STANDIN_FILES)})") from err
    if len(table) == 0:
        raise ValueError(f"hub data set {hub_id!r}: the train split is empty")
    missing = [column for column in field_map.required_columns if column not in table.column_names]
    if missing:
        raise ValueError(f"hub data set {hub_id!r} lacks required column(s) {missing} (it has {table.column_names}); "
                         f"add an entry to HUB_FIELD_MAPS or pass field_map=FieldMap(...)")
    return [_to_record(row, field_map, f"{hub_id}, row {index}") for index, row in enumerate(table)]


def _to_record(row, field_map: FieldMap, where: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with fields "
                         f"{list(field_map.required_columns)}, got {type(row).__name__}")
    missing = [column for column in field_map.required_columns if column not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; the record has {sorted(row)}. "
                         f"Fix the data or pass field_map=FieldMap(...) naming its columns")
    record = {}
    for field in RECORD_FIELDS:
        column = getattr(field_map, field)
        # The input is optional: a row may lack it, and datasets fills a column a row lacks with None.
        value = row.get(column) if field == "input" else row[column]
        if field == "input" and value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {column!r} must be a string, got {type(value).__name__} {value!r:.60}")
        record[field] = value
    return record
