"""Claims about the book as a course text: every chapter of _toc.yml has a numbered title (the preface excepted), a
Summary and Exercises; every chapter has a solutions notebook in the Solutions part that answers each exercise in
order, states a prediction before computing it, and imports the package as the chapters do."""
import json
import re

import yaml

from conftest import load_script

execute_book = load_script("execute_book")
ROOT = execute_book.Path(__file__).resolve().parents[1]


def parts() -> dict[str, list[str]]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return {part["caption"]: [entry["file"] for entry in part["chapters"]] for part in toc["parts"]}


def markdown(entry: str) -> list[str]:
    notebook = json.loads((ROOT / f"{entry}.ipynb").read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown"]


def code(entry: str) -> str:
    notebook = json.loads((ROOT / f"{entry}.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")


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
