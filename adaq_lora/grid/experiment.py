"""One cell of the paper's grid: one method fine-tuned and scored on one data set (Sec. 3, Tables 1-2; chapter 8).

`run_experiment(method, dataset, profile, out_dir=...)` loads the model and the records, splits them 80/20 with
a fixed seed (the same test set for every method and every run seed), keeps the profile's subsets, seeds torch
with the run's seed before the adapters are drawn, trains with the recipe of Sec. 3, answers the test prompts
greedily, scores them (ROUGE-1/2/L and BLEU-4 with 95% bootstrap intervals) and measures training memory. It
writes into `out_dir`:

- `predictions.jsonl`: prompt, reference, prediction and the example's scores and accuracy, one per line;
- `adapters/`: our adapters and their PEFT export (`peft.PeftModel.from_pretrained` loads it), not for base/full;
- `result.json`: everything the tables and the book's plots read, written last and atomically, so a run that
  dies leaves no result that looks complete; the grid resumes by skipping cells whose result is there.

Under torchrun (training/distributed.py) each process trains a replica; rank 0 alone writes into `out_dir`, and the
test answers are split over the ranks. A run with `checkpoint_every` set resumes from its last checkpoint. Memory is the
peak of one training step on the run's longest batch, before training (`cell_start.measure_cell_memory`; `base`:
the forward pass and loss). `adaq_lora` plans its base's precision from the first training examples (`quant/precision.py`)
or from the model's files where the base loads in 4 bits (`quant/file_plan.py`), and writes `precision_plan.json`.
On a CPU without bfloat16 units a bfloat16 base's products run in float32 (`training/float32_products.py`).
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from ..atomic import write_json_atomic, write_jsonl_atomic
from ..config import AdaQConfig, TrainConfig
from ..data import load_records, pad_token_id, prompt_text, split_records
from ..scoring.evaluate import generate_answers
from ..tuners.methods import trainable_parameters
from ..scoring.accuracy import accuracy_scores, answer_kind
from ..scoring.metrics import METRIC_NAMES, bootstrap_intervals, per_example_scores
from ..models import DEFAULT_MODEL
from ..profiles import Profile, cpu_description, load_profile
from ..training import float32_products, steps_for, train
from ..training.distributed import barrier, current_world
from ..tuners import method_spec, save
from .cell_start import measure_cell_memory, start_cell

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.jsonl"
ADAPTERS_DIR = "adapters"
CHECKPOINT_DIR = "checkpoint"
RUN_FILE = "run.json"  # what the folder's run is, written first, so a resumed checkpoint is known to fit
SPLIT_SEED = 0  # the 80/20 split is the same whatever the run's seed: every method meets the same test set
TEST_FRACTION = 0.2  # Sec. 3: 80% training, 20% test
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "adaq-lora")
RESULT_KEYS = (
    "method", "dataset", "model", "profile", "settings", "seed", "n_train", "n_test", "total_steps",
    *METRIC_NAMES, "intervals", "memory_mb", "memory_breakdown", "memory_measured",
    "train_seconds", "median_step_seconds", "tokens_per_second", "eval_seconds", "wall_seconds",
    "trainable_parameters", "rank_pattern", "losses", "lm_losses", "budgets", "versions", "finished_at",
)


@dataclass
class Experiment:
    """A validated cell of the grid with its records loaded: everything that can be refused is checked here."""

    method: str  # a registered method (tuners.registry), ours or a PEFT peer
    dataset: str  # a stand-in name, a hub id or a JSON / JSONL path, as given
    profile: Profile  # the run's settings, overrides applied
    seed: int  # seeds the adapters' start, dropout and the batch order (not the split)
    train_records: list[dict]  # the training subset
    test_records: list[dict]  # the test subset
    world_size: int = 1  # processes training together under torchrun: a step sees batch × grad_accum × world_size

    @property
    def model_name(self) -> str:
        return self.profile.model or DEFAULT_MODEL

    @property
    def total_steps(self) -> int:
        p = self.profile
        return steps_for(len(self.train_records), p.epochs, self.global_batch_size)

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step, over every process."""
        return self.profile.train.batch_size * self.profile.train.grad_accum * self.world_size

    def identity(self) -> dict:
        """What makes two runs the same run: a folder holding another one is not resumed or skipped."""
        return {"method": self.method, "dataset": self.dataset, "model": self.model_name,
                "profile": self.profile.name, "settings": self.profile.to_dict(), "seed": self.seed,
                **({"world_size": self.world_size} if self.world_size > 1 else {})}

    def adaq_config(self) -> AdaQConfig:
        """The profile's `adapter` section with the budget schedule laid out over this run's steps."""
        p, total = self.profile, self.total_steps
        return replace(p.adapter, t_init=int(p.t_init_fraction * total), t_final=int(p.t_final_fraction * total),
                       total_steps=total, extra={"model": self.model_name, "dataset": self.dataset})

    def train_config(self, progress: bool) -> TrainConfig:
        """The profile's `train` section with this run's steps and seed."""
        return replace(self.profile.train, max_steps=self.total_steps, seed=self.seed, progress=progress)


class FolderHoldsAnotherRun(ValueError):
    """The output folder's run.json names another run: refused before anything there is read or replaced."""


def plan_experiment(method: str, dataset: str, profile: str, seed: int = 0, overrides: dict | None = None) -> Experiment:
    """Check the arguments (ValueError naming the valid choices) and load the records, before any model is loaded."""
    method_spec(method)  # refuses an unknown method, naming the valid ones
    settings = load_profile(profile, overrides)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"profile {profile!r} needs a CUDA GPU and torch sees none (torch {torch.__version__}); "
                         "use profile 'ci' or 'cpu' on this machine")
    train_records, test_records = split_records(load_records(dataset), TEST_FRACTION, seed=SPLIT_SEED)
    experiment = Experiment(method, dataset, settings, seed, _subset(train_records, settings.train_size, "train", dataset),
                            _subset(test_records, settings.test_size, "test", dataset), current_world().size)
    experiment.adaq_config()  # refuses a schedule with no step left for the budget to fall
    return experiment


def run_experiment(method: str, dataset: str, profile: str, *, out_dir: str | Path, seed: int = 0,
                   overrides: dict | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run one cell and return its result, or return the complete result already in `out_dir` (unless `force`)."""
    return execute(plan_experiment(method, dataset, profile, seed, overrides), out_dir, force=force, progress=progress)


def execute(experiment: Experiment, out_dir: str | Path, force: bool = False, progress: bool = True,
            observe=None) -> dict:
    """Run `experiment` into `out_dir`; `observe(tuner)`, if given, returns the loop's `after_step` observer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = experiment.identity()
    previous = read_json(out_dir / RUN_FILE)
    if previous is not None and previous != identity and not force:
        raise FolderHoldsAnotherRun(f"{out_dir} holds another run ({_difference(previous, identity)}); choose "
                                    "another folder, or pass force=True (--force) to replace it")
    world = current_world()
    fresh = force or previous != identity  # a fresh start: nothing of an earlier run is resumed or returned
    if not fresh and (existing := load_result(out_dir)) is not None:
        return existing
    if world.main:  # rank 0 alone writes; the others wait until the folder is ready
        if fresh:
            shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
            (out_dir / RESULT_FILE).unlink(missing_ok=True)
        write_json_atomic(out_dir / RUN_FILE, identity)
    barrier()

    began = time.perf_counter()
    tuner, tokenizer, examples = start_cell(experiment, progress)
    if tuner.precision_plan is not None and world.main:  # what the plan decided, matrix by matrix, before any step
        tuner.precision_plan.save(out_dir)
        if progress:
            print(f"precision plan: {tuner.precision_plan.summary()}", file=sys.stderr)
    training, train_config = None, experiment.train_config(progress)
    memory = measure_cell_memory(experiment, tuner, examples, pad_token_id(tokenizer))
    with float32_products(in_float32 := experiment.profile.multiplies_in_float32()):
        if method_spec(experiment.method).trains:
            training = train(tuner, tokenizer, experiment.train_records, train_config,
                             checkpoint_dir=out_dir / CHECKPOINT_DIR, examples=examples,
                             after_step=observe(tuner) if observe is not None else None)
            if world.main and not method_spec(experiment.method).trains_base:  # a full fine-tune's weights: the model
                save(tuner, out_dir / ADAPTERS_DIR)
        eval_began = time.perf_counter()
        predictions = generate_answers(tuner.model, tokenizer, experiment.test_records, experiment.profile.max_new_tokens,
                                       experiment.profile.eval_batch_size, progress=progress and world.main, shard=True)
        eval_seconds = time.perf_counter() - eval_began
    references = [record["output"] for record in experiment.test_records]
    per_example = per_example_scores(predictions, references, lang="zh")
    per_example |= accuracy_scores(predictions, references, answer_kind(experiment.dataset))
    if world.main:
        _write_predictions(out_dir / PREDICTIONS_FILE, experiment.test_records, predictions, per_example)
    intervals = bootstrap_intervals(per_example, n_resamples=experiment.profile.bootstrap_resamples, seed=0)

    result = {
        **identity,
        "n_train": len(experiment.train_records), "n_test": len(experiment.test_records),
        "total_steps": experiment.total_steps if training else 0,
        "world_size": world.size, "global_batch_size": experiment.global_batch_size,
        **{name: statistics.fmean(values) for name, values in per_example.items()},  # the metrics and accuracy
        "intervals": {name: list(interval) for name, interval in intervals.items()},
        **memory,
        **{key: getattr(training, key) if training else None
           for key in ("train_seconds", "start_seconds", "median_step_seconds", "tokens_per_second")},
        "eval_seconds": eval_seconds, "wall_seconds": time.perf_counter() - began,
        "trainable_parameters": trainable_parameters(tuner.model), "rank_pattern": tuner.rank_pattern(),
        **{key: getattr(training, key) if training else [] for key in ("losses", "lm_losses", "budgets")},
        "versions": package_versions(), "cpu": cpu_description(), "float32_products": in_float32,  # step times
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if world.main:
        write_json_atomic(out_dir / RESULT_FILE, result)
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)  # the result is complete: nothing left to resume
    barrier()  # no rank returns before the result is written
    return result


def load_result(out_dir: str | Path) -> dict | None:
    """The result in `out_dir` if it is complete (every key of RESULT_KEYS), else None."""
    result = read_json(Path(out_dir) / RESULT_FILE)
    if result is None or not set(RESULT_KEYS) <= set(result):
        return None
    return result


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _subset(records: list[dict], size: int | None, split: str, dataset: str) -> list[dict]:
    if size is not None and size > len(records):
        raise ValueError(f"{split}_size={size} but the {split} split of {dataset!r} holds {len(records)} records; "
                         f"set {split}_size to at most {len(records)}, or null for all")
    return records if size is None else records[:size]


def flat_keys(data: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys: {"adapter": {"r": 8}} → {"adapter.r": 8}."""
    items = {}
    for key, value in data.items():
        items.update(flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return items


def _difference(previous: dict, identity: dict) -> str:
    old, new = flat_keys(previous), flat_keys(identity)
    order = sorted(new, key=lambda key: "." in key)  # the run's identity first, then its settings
    return "; ".join(f"{key}: {old.get(key)!r} there, {new[key]!r} asked" for key in order if old.get(key) != new[key])


def _write_predictions(path: Path, records: list[dict], predictions: list[str], per_example: dict) -> None:
    write_jsonl_atomic(path, [{"prompt": prompt_text(record), "reference": record["output"], "prediction": prediction,
                               "scores": {name: values[index] for name, values in per_example.items()}}
                              for index, (record, prediction) in enumerate(zip(records, predictions))])
