"""Claims about the `adaq-lora` command: a wrong method, data set, profile or --set key is refused with the valid
choices listed (exit status 2, no traceback), and `tables` prints Tables 1 and 2 in the paper's layout with the
paper's rows labelled as the paper's and ours with their intervals."""
import csv
import json
import os
import subprocess
import sys

import pytest

from adaq_lora.grid.cli import main
from adaq_lora.grid.experiment import RESULT_KEYS
from adaq_lora.scoring.metrics import METRIC_NAMES
from adaq_lora.paper import PAPER_SOURCE

RUN = ["run", "--method", "lora", "--dataset", "school_math", "--profile", "ci", "--out"]


def refused(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_wrong_method_is_refused_with_every_valid_method_listed(capsys, tmp_path):
    err = refused(["run", "--method", "qlora2", "--dataset", "school_math", "--profile", "ci", "--out", str(tmp_path)],
                  capsys)
    assert "unknown method 'qlora2'; valid methods: base, full, lora, qlora, adalora, adaq_lora, adaq_lora_nf4, peft-lora" in err


def test_a_wrong_data_set_is_refused_naming_the_stand_ins(capsys, tmp_path):
    err = refused(["run", "--method", "lora", "--dataset", "school_maths", "--profile", "ci", "--out", str(tmp_path)],
                  capsys)
    assert "'school_maths'" in err and "stand-in name (alpaca_zh, school_math)" in err


def test_a_wrong_profile_is_refused_with_the_three_profiles_listed(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "lora", "--dataset", "school_math", "--profile", "gpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'gpu'" in err
    assert all(name in err.split("choose from")[1] for name in ("ci", "cpu", "paper"))


def test_a_wrong_set_key_is_refused_with_the_valid_keys_listed(capsys, tmp_path):
    err = refused(RUN + [str(tmp_path), "--set", "epoch=2"], capsys)
    assert "unknown profile key(s) ['epoch']; valid keys: description, model, datasets" in err
    assert "epochs" in err and "bootstrap_resamples" in err
    assert "expected an integer or null" in refused(RUN + [str(tmp_path), "--set", "train_size=lots"], capsys)
    assert "is not key=value" in refused(RUN + [str(tmp_path), "--set", "train_size"], capsys)


def test_the_installed_command_answers_a_mistake_in_one_line_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "adaq_lora.grid.cli", *RUN, str(tmp_path), "--set", "rank=4"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "adaq-lora run: error: unknown profile key(s) ['rank']; valid keys:" in done.stderr


def write_result(folder, method, dataset, score, memory_mb):
    """A result.json as run_experiment writes it, with every key, for a method scoring `score` on every metric."""
    result = dict.fromkeys(RESULT_KEYS)
    result.update({"method": method, "dataset": dataset, "model": "SmolLM2-135M-Instruct", "profile": "ci", "seed": 0,
                   "n_test": 16, "memory_mb": memory_mb,
                   **dict.fromkeys(METRIC_NAMES, score),
                   "intervals": {name: [score - 0.05, score + 0.05] for name in METRIC_NAMES}})
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result), encoding="utf-8")


def test_tables_prints_the_paper_s_layout_with_the_paper_s_rows_labelled_beside_ours(capsys, tmp_path):
    write_result(tmp_path / "alpaca_zh" / "qlora", "qlora", "alpaca_zh", 0.25, 431.6)
    write_result(tmp_path / "school_math" / "adaq_lora", "adaq_lora", "school_math", 0.5, 398.2)
    write_result(tmp_path / "school_math" / "base", "base", "school_math", 0.125, None)
    assert main(["tables", str(tmp_path), "--csv", str(tmp_path / "tables.csv")]) == 0
    out = capsys.readouterr().out
    table1, table2 = out.split("**Table 2. Comparison results on School_math**")
    assert "**Table 1. Comparison results on Alpaca_Chinese**" in table1
    header = "| Method | Source | Avg | Accuracy | Memory/MB |"  # what the claims are about, readable on a page
    scores = "| Method | Source | Rouge-1 | Rouge-2 | Rouge-L | BLEU |"  # the four Avg averages, a table of their own
    assert header in table1 and header in table2 and scores in table1 and scores in table2
    assert f"| GLM2+LoRA | {PAPER_SOURCE} | 0.2010 | — | 40132 |" in table1
    assert f"| GLM2+LoRA | {PAPER_SOURCE} | 0.3036 | 0.1484 | 0.1950 | 0.1572 |" in table1
    assert f"| GLM2+ADAQ-LoRA | {PAPER_SOURCE} | 0.5553 | 0.3294 | 0.3789 | 0.3592 |" in table2
    assert "| SmolLM2-135M-Instruct+QLoRA | ours (ci, 16 test examples) | 0.2500 [0.2000, 0.3000] |" in table1
    assert "| 432 |" in table1
    assert "| SmolLM2-135M-Instruct | ours (ci, 16 test examples) | 0.1250 [0.0750, 0.1750] |" in table2
    assert table2.index("SmolLM2-135M-Instruct |") < table2.index("SmolLM2-135M-Instruct+ADAQ-LoRA")
    assert "| n/a |" in table2
    rows = list(csv.DictReader((tmp_path / "tables.csv").open(encoding="utf-8")))
    assert len(rows) == 4 + 1 + 4 + 2
    ours = next(row for row in rows if row["method"] == "SmolLM2-135M-Instruct+ADAQ-LoRA")
    assert (ours["table"], ours["avg"], ours["avg_low"], ours["avg_high"]) == ("2", "0.5", "0.45", "0.55")
    paper = next(row for row in rows if row["method"] == "GLM2+QLoRA" and row["table"] == "1")
    assert (paper["source"], paper["rouge-1"], paper["rouge-1_low"], paper["memory_mb"]) == (PAPER_SOURCE, "0.3368", "",
                                                                                             "9231")


def test_tables_of_a_folder_without_runs_shows_the_paper_s_rows_alone(capsys, tmp_path):
    assert main(["tables", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(PAPER_SOURCE) == 2 * 8 and "ours" not in out.split("Ours:")[0]  # the two parts of both tables


def test_a_folder_holding_another_run_is_refused_saying_how_to_go_on(capsys, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"method": "qlora", "seed": 0}))
    err = refused([*RUN, str(tmp_path)], capsys)
    assert f"{tmp_path} holds another run (" in err and "--force" in err and "Traceback" not in err


def test_several_seeds_are_one_row_of_their_mean_and_spread_with_the_runs_folded_beneath():
    from adaq_lora.grid.tables import build_tables, markdown

    runs = [{**dict.fromkeys(RESULT_KEYS), "method": "qlora", "dataset": "school_math", "model": "SmolLM2-135M-Instruct",
             "profile": "cpu", "seed": seed, "n_test": 8, "memory_mb": 100.0 + seed, **dict.fromkeys(METRIC_NAMES, score),
             "accuracy": score, "intervals": {"avg": [score - 0.1, score + 0.1]}}
            for seed, score in enumerate((0.2, 0.4))]
    text = markdown(build_tables(runs), fold_seeds=True)
    assert "| SmolLM2-135M-Instruct+QLoRA | ours (cpu, 8 test examples, 2 seeds) | 0.3000 ± 0.1414 | 0.3000 ± 0.1414 | 100 |" in text
    folded = text.split(":::{dropdown} Table 2 run by run, with 95% intervals")[1].split(":::")[0]
    assert "| ours (cpu, 8 test examples, seed 1) | 0.4000 [0.3000, 0.5000] |" in folded
    assert "seed 0" not in text.split(":::{dropdown}")[0]  # the runs appear only in the fold
