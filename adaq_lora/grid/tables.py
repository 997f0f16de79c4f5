"""Tables 1 and 2 of the paper, regenerated from result.json files, beside the paper's own numbers (Sec. 3; chapter 8).

The paper's published rows are data in `adaq_lora.paper`, labelled as the paper's; nothing else in a table is typed by
hand. Our rows come from the `result.json` files that `experiment.run_experiment` writes, named as the paper names
its rows ("<model>+LoRA", ...), with each score's 95% bootstrap interval. Table 1 is Alpaca_Chinese, Table 2
School_math; a run belongs to a table by its data set, as `data.paper_dataset` names it: the stand-in's name, the
hub id, or a file whose name contains the set's key ("alpaca" or "school_math").

`build_tables` returns plain lists of dicts the book renders; `markdown` and `write_csv` print and save them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev

from ..atomic import staged
from ..data import PAPER_DATASETS, PaperDataset
from ..paper import PAPER_MODEL_LABEL, PAPER_ROWS, PAPER_SOURCE
from ..scoring.metrics import METRIC_NAMES
from ..tuners.registry import method_names, method_spec
from .experiment import RESULT_FILE, load_result

COLUMNS = ("Rouge-1", "Rouge-2", "Rouge-L", "BLEU", "Avg")  # the paper's headers for METRIC_NAMES, in order
ACCURACY_COLUMN = "Accuracy"  # ours only (scoring/accuracy.py): the paper reports none
SCORED = (*METRIC_NAMES, "accuracy")  # what a row holds, with its interval where it has one
MEMORY_COLUMN = "Memory/MB"
RENAMED_ROWS = {  # a recorded folder named apart from the method it ran → (that method, the row's label)
    # ADAQ-LoRA's cpu cells from before its gradient start and sub-4-bit plan (results/README.md): their own row
    "adaq_lora_gaussian_start": ("adaq_lora", "+ADAQ-LoRA, Gaussian start and 6-bit plan"),
    "adaq_lora_nf4_gaussian_start": ("adaq_lora_nf4", "+ADAQ-LoRA on NF4 storage, Gaussian start"),
}


@dataclass(frozen=True)
class TableSpec:
    number: int  # the paper's table number
    dataset: PaperDataset  # the paper's set it reports on

    @property
    def caption(self) -> str:
        return f"Table {self.number}. Comparison results on {self.dataset.title}"

    def holds(self, dataset: str) -> bool:
        return self.dataset.names(dataset)


TABLES = (TableSpec(1, PAPER_DATASETS[0]), TableSpec(2, PAPER_DATASETS[1]))

def collect_results(runs_dir: str | Path) -> list[dict]:
    """Every complete result.json under `runs_dir`, in path order; a half-written run has none and is not listed.
    A run in a folder of `RENAMED_ROWS` is listed under the folder's name (its `ran_as` says the method)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"{runs_dir} is not a folder; give the folder the runs were written under")
    results = []
    for path in sorted(runs_dir.rglob(RESULT_FILE)):
        result = load_result(path.parent)
        if result is None:
            raise ValueError(f"{path} is not a complete result (keys missing or not JSON); rerun that cell")
        row = path.parent.parent.name
        if RENAMED_ROWS.get(row, (None,))[0] == result["method"]:  # a row of its own, not one more seed of the method
            result = {**result, "method": row, "ran_as": result["method"]}
        results.append({**result, "path": str(path)})
    return results


def table_for(dataset: str) -> TableSpec | None:
    return next((table for table in TABLES if table.holds(dataset)), None)


def build_tables(results: list[dict]) -> list[dict]:
    """Tables 1 and 2 as {"number", "caption", "rows"}; each row a dict with the method's name, its source, the
    five scores and the accuracy (None where there is none), their intervals (None for the paper's rows, which
    publish none) and the memory in MB."""
    tables = []
    for spec in TABLES:
        rows = [paper_row(spec.number, method) for method in PAPER_ROWS[spec.number]]
        ours = sorted((r for r in results if spec.holds(r["dataset"])), key=_row_order)
        several_seeds = len({r["seed"] for r in ours}) > 1
        rows += [result_row(result, show_seed=several_seeds) for result in ours]
        tables.append({"number": spec.number, "caption": spec.caption, "rows": rows})
    return tables


def paper_row(table: int, method: str) -> dict:
    *scores, memory = PAPER_ROWS[table][method]
    return {"method": PAPER_MODEL_LABEL + method_spec(method).label, "source": PAPER_SOURCE,
            **dict(zip(METRIC_NAMES, scores)), "accuracy": None, "intervals": None, "memory_mb": memory}


def result_row(result: dict, show_seed: bool = False) -> dict:
    model = Path(result["model"]).name
    setting = f"{result['profile']}, {result['n_test']} test examples"
    source = f"ours ({setting}" + (f", seed {result['seed']})" if show_seed else ")")
    if result["method"] in RENAMED_ROWS:
        label = RENAMED_ROWS[result["method"]][1]
    else:
        label = method_spec(result["method"]).label if result["method"] in method_names() else f"+{result['method']}"
    return {"method": model + label, "source": source, "setting": setting, "seed": result["seed"],
            **{name: result.get(name) for name in SCORED},  # runs recorded before accuracy have none
            "intervals": {name: tuple(result["intervals"][name]) for name in SCORED if name in result["intervals"]},
            "memory_mb": result["memory_mb"]}


def markdown(tables: list[dict], fold_seeds: bool = False) -> str:
    """Each table in two parts that fit a page: Method, Source, Avg, Accuracy and Memory/MB (what the paper's claims
    are about), then the four scores Avg averages. A method run with several seeds is one row there, its mean ± the
    seeds' standard deviation; its per-seed rows, with their 95% intervals, follow in a third table, folded away
    (a MyST dropdown) where `fold_seeds`."""
    blocks = []
    for table in tables:
        rows = seed_means(table["rows"])
        blocks.append(_table(f"**{table['caption']}**", ("Method", "Source", "Avg", ACCURACY_COLUMN, MEMORY_COLUMN),
                             [[row["method"], row["source"], _score_cell(row, "avg"), _score_cell(row, "accuracy"),
                               _memory_cell(row["memory_mb"])] for row in rows]))
        blocks.append(_table(f"*Table {table['number']}, the scores Avg averages*", ("Method", "Source", *COLUMNS[:-1]),
                             [[row["method"], row["source"], *(_score_cell(row, name) for name in METRIC_NAMES[:-1])]
                              for row in rows]))
        if len(rows) < len(table["rows"]):
            per_seed = _table(f"*Table {table['number']}, run by run*", ("Method", "Source", "Avg", ACCURACY_COLUMN,
                                                                          MEMORY_COLUMN),
                              [[row["method"], row["source"], _score_cell(row, "avg"), _score_cell(row, "accuracy"),
                                _memory_cell(row["memory_mb"])] for row in table["rows"] if "seed" in row])
            blocks.append(f":::{{dropdown}} Table {table['number']} run by run, with 95% intervals\n{per_seed}\n:::"
                          if fold_seeds else per_seed)
    note = ("Ours: the mean over the test examples [95% bootstrap interval]; over several seeds, the mean of the runs ± "
            "their standard deviation. Accuracy: the share of right answers (final numbers for School_math, exact "
            "answers for Alpaca_Chinese), ours only. Memory: the peak of one training step in MB (2^20 bytes); for the "
            "base model, of a forward pass.")
    return "\n\n".join(blocks + [note]) + "\n"


def seed_means(rows: list[dict]) -> list[dict]:
    """The rows with each method's several seeds (same model, method, profile and test set) made one row: the mean of
    every score ± the seeds' standard deviation (`spread`), the mean memory, no interval."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row.get("setting", id(row))), []).append(row)
    merged = []
    for (method, setting), runs in groups.items():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        mean = {name: None if any(r[name] is None for r in runs) else fmean(r[name] for r in runs) for name in SCORED}
        merged.append({"method": method, "source": f"ours ({setting}, {len(runs)} seeds)", **mean, "intervals": None,
                       "spread": {name: stdev(r[name] for r in runs) for name in SCORED if mean[name] is not None},
                       "memory_mb": None if any(r["memory_mb"] is None for r in runs) else fmean(r["memory_mb"] for r in runs)})
    return merged


def write_csv(tables: list[dict], path: str | Path) -> Path:
    """One row per table row: the scores, each interval's low and high (empty for the paper's), the memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["table", "method", "source"]
    for name in SCORED:
        fields += [name, f"{name}_low", f"{name}_high"]
    fields.append("memory_mb")
    with staged(path) as staging, open(staging, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for table in tables:
            for row in table["rows"]:
                line = {"table": table["number"], "method": row["method"], "source": row["source"],
                        "memory_mb": row["memory_mb"]}
                for name in SCORED:
                    low, high = (row["intervals"] or {}).get(name, (None, None))
                    line.update({name: row[name], f"{name}_low": low, f"{name}_high": high})
                writer.writerow(line)
    return path


def _row_order(result: dict) -> tuple:
    """Ours grouped by model, profile and seed; the paper's rows in its order, then our other adapter methods, full
    fine-tuning and the PEFT peers, then anything unknown."""
    paper = list(PAPER_ROWS[1])
    others = sorted((name for name in method_names() if name not in paper),
                    key=lambda name: (method_spec(name).peer, method_spec(name).trains_base))  # stable: registry order
    methods = paper + others
    methods = methods[:methods.index("adaq_lora") + 1] + list(RENAMED_ROWS) + methods[methods.index("adaq_lora") + 1:]
    rank = methods.index(result["method"]) if result["method"] in methods else len(methods)
    return result["model"], result["profile"], result["seed"], rank


def _score_cell(row: dict, name: str) -> str:
    if row[name] is None:
        return "—"
    if name in row.get("spread", {}):
        return f"{row[name]:.4f} ± {row['spread'][name]:.4f}"
    if not row["intervals"] or name not in row["intervals"]:
        return f"{row[name]:.4f}"
    low, high = row["intervals"][name]
    return f"{row[name]:.4f} [{low:.4f}, {high:.4f}]"


def _memory_cell(memory_mb) -> str:
    return "n/a" if memory_mb is None else f"{memory_mb:.0f}"


def _table(caption: str, header, lines) -> str:
    return "\n".join([caption, "", _markdown_line(header), _markdown_line(["---"] * len(header)),
                      *map(_markdown_line, lines)])


def _markdown_line(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
