"""The cache: where the package keeps the models it builds once (book preface).

Building a model folder takes a while (the embedded SmolLM2 is de-quantized from its GGUF file; a ChatGLM2
checkpoint is rewritten as GLM), so it is done once into `ADAQ_LORA_CACHE` (default `~/.cache/adaq_lora`). Each
folder enters whole, through `atomic.staged_folder`: a run killed mid-write leaves no half-written folder, and a
folder found in the cache may be trusted.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ADAQ_LORA_CACHE", Path.home() / ".cache" / "adaq_lora"))
