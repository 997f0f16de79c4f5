"""Claims about the book as a course text: every chapter of _toc.yml has a numbered title (the preface excepted), a
Summary and Exercises; every chapter has a solutions notebook in the Solutions part that answers each exercise in
order, states a prediction before computing it, and imports the package as the chapters do."""
import ast
import json
import re

import yaml

from conftest import load_script

execute_book = load_script("execute_book")
ROOT = execute_book.Path(__file__).resolve().parents[1]


def parts() -> dict[str, list[str]]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return {part["caption"]: [entry["file"] for entry in part["chapters"]] for part in toc["parts"]}


def sources(entry: str, cell_type: str) -> list[str]:
    notebook = json.loads((ROOT / f"{entry}.ipynb").read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == cell_type]


def markdown(entry: str) -> list[str]:
    return sources(entry, "markdown")


def code_cells(entry: str) -> list[str]:
    return sources(entry, "code")


def code(entry: str) -> str:
    return "\n".join(code_cells(entry))


def python_cells(entry: str) -> list[ast.Module]:
    """The parsed code cells, without shell or magic lines and without the Colab install cell."""
    return [ast.parse(cell) for cell in code_cells(entry)
            if not cell.lstrip().startswith(("!", "%")) and "google.colab" not in cell]


def exercises(entry: str) -> list[int]:
    section = next(text for text in markdown(entry) if text.startswith("## Exercises"))
    return [int(number) for number in re.findall(r"^(\d+)\. ", section, re.MULTILINE)]


def chapters() -> list[str]:
    return [entry for entry in parts()["Chapters"] if (ROOT / f"{entry}.ipynb").exists()]


def test_every_chapter_has_its_numbered_title_a_summary_and_three_to_six_exercises():
    assert len(chapters()) == 9
    for number, entry in enumerate(chapters()):
        cells = markdown(entry)
        title = cells[0].splitlines()[0]
        assert title.startswith("# Preface" if number == 0 else f"# {number}. "), (entry, title)
        assert any(text.startswith("## Summary") for text in cells), entry
        assert 3 <= len(exercises(entry)) <= 6 and exercises(entry) == list(range(1, len(exercises(entry)) + 1)), entry


def test_every_chapter_has_solutions_that_answer_each_exercise_with_a_prediction_first():
    solutions = parts()["Solutions"]
    assert solutions == [f"{entry}_solutions" for entry in chapters()]
    for chapter, entry in zip(chapters(), solutions):
        answered = [(int(m.group(1)), text) for text in markdown(entry)
                    if (m := re.match(r"## Exercise (\d+)", text))]
        assert [number for number, _ in answered] == exercises(chapter), entry
        assert all("**Prediction.**" in text for _, text in answered), entry
        assert "from adaq_lora" in code(entry), entry


def glued_names(entry: str) -> set[str]:
    """The names a notebook's code glues: the keywords of its `glue_values(...)` calls."""
    return {keyword.arg for tree in python_cells(entry) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "glue_values" for keyword in node.keywords}


def test_every_number_the_prose_pastes_is_glued_by_the_same_notebook():
    pasted_anywhere = 0
    for entry in [*parts()["Chapters"], *parts()["Solutions"]]:
        if not (ROOT / f"{entry}.ipynb").exists():
            continue
        pasted = {name for text in markdown(entry) for name in execute_book.GLUE_ROLE.findall(text)}
        unglued = pasted - glued_names(entry)
        assert not unglued, (entry, sorted(unglued))
        pasted_anywhere += len(pasted)
    assert pasted_anywhere > 0


def test_no_code_cell_writes_the_argument_as_prose():
    """Prose a reader must see lives in Markdown cells. A code cell's labels, titles and table rows are short or
    start with "|"; a string literal of six words or more is a sentence, and a cell holds at most 25 words of them."""
    for entry in [*parts()["Chapters"], *parts()["Solutions"]]:
        if not (ROOT / f"{entry}.ipynb").exists():
            continue
        for tree in python_cells(entry):
            docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
            sentences = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                         and isinstance(node.value, str) and id(node) not in docstrings
                         and not node.value.lstrip().startswith("|") and len(node.value.split()) >= 6]
            assert sum(len(text.split()) for text in sentences) <= 25, (entry, sentences)
