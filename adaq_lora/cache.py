"""The cache: where the package keeps the models it builds once, and how a folder enters it whole (book preface).

Building a model folder takes a while (the embedded SmolLM2 is de-quantized from its GGUF file; a ChatGLM2
checkpoint is rewritten as GLM), so it is done once into `ADAQ_LORA_CACHE` (default `~/.cache/adaq_lora`). Each
folder is written beside its final name and renamed into place: a rename within one file system is atomic, so a
run killed mid-write leaves no half-written folder, and a folder found in the cache may be trusted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ADAQ_LORA_CACHE", Path.home() / ".cache" / "adaq_lora"))


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
