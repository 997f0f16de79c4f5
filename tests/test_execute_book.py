"""scripts/execute_book.py tidies each executed notebook for reading: one line per progress bar, and
papermill's injected-parameters cell folded away."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def execute_book():
    return load_script("execute_book")


def stream(name: str, text: str):
    return nbformat.v4.new_output("stream", name=name, text=text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("calibration:   0%|  | 0/8\rcalibration:  50%|# | 4/8\rcalibration: 100%|##| 8/8\n", "calibration: 100%|##| 8/8\n"),
        ("\rtrain:  10%\rtrain: 100%\nafter the bar\n", "train: 100%\nafter the bar\n"),
        ("first\r\nsecond\r\n", "first\nsecond\n"),  # CRLF ends a line; it does not redraw it
        ("a bar cleared on close\r                      \r", ""),  # tqdm's leave=False
        ("no carriage return | at all\n", "no carriage return | at all\n"),
    ],
)
def test_carriage_returns_keep_the_text_after_the_last_one_on_each_line(execute_book, text, shown):
    assert execute_book.apply_carriage_returns(text) == shown


def test_consecutive_streams_of_one_name_merge_into_their_final_lines(execute_book):
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"})
    outputs = [
        stream("stderr", "\rcalibration:   0%|"),
        stream("stderr", "\rcalibration:  50%|"),
        stream("stderr", "\rcalibration: 100%|\n"),
        stream("stdout", "calibrated\n"),
        figure,
        stream("stderr", "one\n"),
        stream("stderr", "two\n"),
    ]

    merged = execute_book.merge_streams(outputs)

    assert merged == [
        stream("stderr", "calibration: 100%|\n"),
        stream("stdout", "calibrated\n"),
        figure,
        stream("stderr", "one\ntwo\n"),
    ]
    assert merged[2] is figure, "outputs other than streams are kept as they are"
    assert outputs[0].text == "\rcalibration:   0%|", "the input outputs are not changed"


def test_interleaved_streams_stay_apart_and_in_order(execute_book):
    outputs = [stream("stdout", "a\n"), stream("stderr", "b\n"), stream("stdout", "c\n")]
    assert execute_book.merge_streams(outputs) == outputs


def test_a_stream_left_blank_is_dropped(execute_book):
    outputs = [
        stream("stderr", "\rcalibration: 100%|"),
        stream("stderr", "\r                  \r"),  # tqdm's leave=False clears its line on closing
        stream("stdout", "median step 1.64 s\n"),
        stream("stderr", "\n"),  # the training bar's line end, after the print above
    ]
    assert execute_book.merge_streams(outputs) == [stream("stdout", "median step 1.64 s\n")]


def test_tidy_tags_only_the_injected_cell_and_merges_its_outputs(execute_book, tmp_path: Path):
    parameters = nbformat.v4.new_code_cell('profile = "ci"', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('profile = "cpu"\n', metadata={"tags": ["injected-parameters"]})
    work = nbformat.v4.new_code_cell("run()", outputs=[stream("stderr", "\rbar 1/2"), stream("stderr", "\rbar 2/2\n")])
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[parameters, injected, work]), path)

    execute_book.tidy_for_reading(path)

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.metadata.get("tags") for cell in cells] == [["parameters"], ["injected-parameters", "hide-cell"], None]
    assert cells[2].outputs == [stream("stderr", "bar 2/2\n")]


def test_runner_leaves_one_line_per_progress_bar_in_the_executed_copy(execute_book, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("JUPYTER_PATH", raising=False)  # the runner sets it; restored after the test
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text('title: "t"\nexecute:\n  execute_notebooks: "off"\n', encoding="utf-8")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/chapter\n", encoding="utf-8")
    bar = "import sys, time\nfor i in range(4):\n    print(f'\\rbar {i}/3', end='', file=sys.stderr, flush=True)\n    time.sleep(0.05)\nprint(file=sys.stderr)"
    cells = [nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(bar)]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "book" / "chapter.ipynb")

    assert execute_book.main(["--root", str(tmp_path), "--profile", "ci"]) == 0

    executed = nbformat.read(tmp_path / "_build" / "site" / "book" / "chapter.ipynb", as_version=4)
    assert [cell.metadata.get("tags") for cell in executed.cells] == [
        ["parameters"],
        ["injected-parameters", "hide-cell"],
        [],  # papermill gives every cell a tags list
    ]
    assert executed.cells[1].source.strip().endswith('profile = "ci"')
    assert executed.cells[2].outputs == [stream("stderr", "bar 3/3\n")]


def test_a_pasted_value_that_no_cell_glued_stops_the_build_naming_cell_and_name(execute_book, tmp_path: Path,
                                                                               monkeypatch, capsys):
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text('title: "t"\nexecute:\n  execute_notebooks: "off"\n', encoding="utf-8")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/chapter\n", encoding="utf-8")
    cells = [nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("from adaq_lora.display import glue_values\nglue_values(shown=1.5)"),
             nbformat.v4.new_markdown_cell("Measured {glue:text}`shown:.1f`, and {glue:text}`forgotten:.2f`.")]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "book" / "chapter.ipynb")

    assert execute_book.main(["--root", str(tmp_path), "--profile", "ci"]) == 1

    message = capsys.readouterr().err
    assert "cell 4: forgotten" in message and "shown" not in message.split("(")[1].split(")")[0]
