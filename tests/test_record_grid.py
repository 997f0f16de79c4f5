"""Claims about the recorder of the cpu grid (scripts/record_grid.py): seed by seed, base once per data set, each
cell's files kept under results/ and the adapters left behind, cells already recorded skipped, and a CPU
without bfloat16 units refused unless told."""
import json

import pytest

from conftest import load_script

record_grid = load_script("record_grid")


def test_the_grid_runs_seed_by_seed_with_the_untrained_model_once_per_data_set():
    cells = record_grid.cells([0, 1, 2])
    assert len(cells) == 2 * (5 + 4 + 4)
    assert [seed for _, _, seed in cells] == sorted(seed for _, _, seed in cells)  # a cut grid is whole seeds
    assert [(d, s) for d, m, s in cells if m == "base"] == [("school_math", 0), ("alpaca_zh", 0)]
    assert {m for _, m, _ in cells} == {"base", "qlora", "adaq_lora", "adaq_lora_nf4", "lora"}


def test_a_finished_cell_keeps_its_result_and_predictions_only(tmp_path, monkeypatch):
    monkeypatch.setattr(record_grid, "REPO", tmp_path)
    cell = ("school_math", "qlora", 1)
    work = record_grid.work_dir(*cell)
    (work / "adapters").mkdir(parents=True)
    for name in ("result.json", "predictions.jsonl", "adapters/adapter.safetensors"):
        (work / name).write_text(json.dumps({"name": name}))
    kept = record_grid.keep(cell, commit=False)
    assert kept == tmp_path / "results" / "cpu" / "school_math" / "qlora" / "seed1"
    assert sorted(p.name for p in kept.iterdir()) == ["predictions.jsonl", "result.json"]


def test_a_cell_cut_short_while_kept_is_not_taken_for_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(record_grid, "REPO", tmp_path)
    cell = ("school_math", "qlora", 1)
    record_grid.work_dir(*cell).mkdir(parents=True)
    (record_grid.work_dir(*cell) / "result.json").write_text("{}")  # its predictions.jsonl never came
    with pytest.raises(FileNotFoundError):
        record_grid.keep(cell, commit=False)
    assert not (record_grid.recorded_dir(*cell) / "result.json").exists()  # result.json is copied last
    record_grid.main(["--list", "--seeds", "1"])
    assert "school_math/qlora/1" in capsys.readouterr().out.split()  # so the cell is run again


def test_the_listing_names_only_cells_not_yet_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(record_grid, "REPO", tmp_path)
    done = record_grid.recorded_dir("alpaca_zh", "lora", 0)
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    record_grid.main(["--list", "--seeds", "0"])
    listed = capsys.readouterr().out.split()
    assert "alpaca_zh/lora/0" not in listed and "school_math/lora/0" in listed and len(listed) == 9


def test_the_recorder_lists_only_the_data_sets_and_methods_asked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(record_grid, "REPO", tmp_path)
    record_grid.main(["--list", "--seeds", "0"])
    assert len(capsys.readouterr().out.split()) == 10  # seed 0: both data sets × the five methods
    record_grid.main(["--list", "--seeds", "1", "2", "--datasets", "alpaca_zh", "--methods", "lora", "qlora"])
    assert capsys.readouterr().out.split() == ["alpaca_zh/qlora/1", "alpaca_zh/lora/1", "alpaca_zh/qlora/2",
                                               "alpaca_zh/lora/2"]  # the grid's own order; base only for seed 1


def test_side_by_side_runs_every_job_with_one_thread_and_reports_the_ones_that_failed():
    import subprocess
    import sys

    from adaq_lora.grid.jobs import run_side_by_side

    seen = []
    check = "import os, sys; sys.exit(0 if os.environ['OMP_NUM_THREADS'] == '1' and int(sys.argv[1]) % 2 == 0 else 1)"
    start = lambda item, env: subprocess.Popen([sys.executable, "-c", check, str(item)], env=env)
    finished = lambda item, process: seen.append(item) or process.returncode == 0
    assert run_side_by_side([0, 1, 2, 3], start, finished, jobs=2, poll_seconds=0.05) == [1, 3]
    assert sorted(seen) == [0, 1, 2, 3]
