"""Generate the two offline stand-ins for the paper's data sets (paper Section 3; book chapter on data).

``school_math_standin.jsonl`` imitates BELLE's School_math: Chinese word problems of three to five steps, from
thirteen families (``standin_math.py``), with a step-by-step solution that ends in a final answer.
``alpaca_zh_standin.jsonl`` imitates Alpaca_Chinese: Chinese instructions, an optional input, and a short answer
that can be checked, from twenty-one families (``standin_tasks.py``). Both use the hub sets' schema
(instruction / input / output). Only the standard library is used and every draw comes from a seeded
``random.Random``, so each run writes byte-identical files.

Usage: python data/make_standins.py [--out DIR]
"""

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from standin_math import school_math_record  # this script's folder is first on sys.path when it runs
from standin_tasks import alpaca_zh_record

RECORDS_PER_SET = 1000
SCHOOL_MATH_SEED = 20261202
ALPACA_ZH_SEED = 20261203


def distinct_records(make_record, seed, count):
    """Draw records until ``count`` distinct (instruction, input) pairs exist, in draw order."""
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < count:
        record = make_record(rng)
        key = (record["instruction"], record["input"])
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


def write_jsonl(path, records):
    """Write one sorted-key JSON object per line, atomically (temp file in the same folder, then replace)."""
    handle, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the School_math and Alpaca_Chinese stand-ins.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write into (default: the folder of this script)")
    out = parser.parse_args(argv).out
    if not out.is_dir():
        parser.error(f"--out {out} is not an existing folder")
    for name, make_record, seed in (("school_math_standin.jsonl", school_math_record, SCHOOL_MATH_SEED),
                                    ("alpaca_zh_standin.jsonl", alpaca_zh_record, ALPACA_ZH_SEED)):
        write_jsonl(out / name, distinct_records(make_record, seed, RECORDS_PER_SET))


if __name__ == "__main__":
    main()
