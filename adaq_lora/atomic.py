"""Atomic writes: a file is either its old self or complete, never half-written (book chapter 7).

Every writer stages into a hidden file (or folder) in the target's folder and renames it over the target: a rename
within one file system is atomic, so a run killed mid-write leaves the previous file (or none), and a reader that
finds a file may trust it. Results, predictions, adapters, plans, checkpoints, tables and the model folders of the
cache (`cache.py`) all go through here.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def staged(path: str | Path):
    """Yield a staging path beside `path`; on a clean exit it replaces `path`, on an error it is removed."""
    path = Path(path)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


@contextmanager
def staged_folder(target: str | Path):
    """Yield an empty folder beside `target`; on a clean exit it becomes `target`, on an error it is removed.

    Two processes may build the same folder at once: the first rename wins, the second finds `target` there
    and drops its own copy, which holds the same thing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield staging
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with staged(path) as staging:
        Path(staging).write_text(text, encoding="utf-8", newline="")


def write_json_atomic(path: str | Path, data: dict) -> None:
    with staged(path) as staging, open(staging, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, ensure_ascii=False)


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line; ensure_ascii=False keeps Chinese readable, json.dumps escapes line breaks."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with staged(path) as staging:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging, metadata=metadata)


def torch_save_atomic(path: str | Path, payload: dict) -> None:
    with staged(path) as staging:
        torch.save(payload, staging)
