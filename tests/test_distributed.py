"""Claims about data parallelism (training/distributed.py), on the CPU with 2 gloo processes: two processes train as
one process accumulating two micro-batches (losses, rank pattern, adapters, answers), the ranks' masks agree at
every step and a disagreement is named, compaction and resume work under DDP, and only rank 0 writes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from adaq_lora import AdaQConfig
from adaq_lora.config import TrainConfig
from adaq_lora.training import train
from adaq_lora.training.distributed import World, check_masks_agree, join_world, refuse_sharded
from adaq_lora.tuners import prepare
from conftest import TINY_LLAMA, make_tiny_llama

SETTINGS = {"train_size": 16, "test_size": 3, "max_new_tokens": 4, "eval_batch_size": 1, "max_length": 256,
            "lora_dropout": 0, "gradient_checkpointing": "true"}  # dropout off: each rank draws its own


def adaq_lora_run(out, processes: int, snapshot, cache) -> dict:
    """`adaq-lora run` on the ci profile, under torchrun with `processes` processes (grad_accum=2 in one)."""
    sets = SETTINGS | {"model": snapshot} | ({"grad_accum": 2} if processes == 1 else {})
    command = ["-m", "adaq_lora.cli", "run", "--method", "adaq_lora", "--dataset", "school_math", "--profile", "ci",
               "--quiet", "--out", str(out), *(arg for key, value in sets.items() for arg in ("--set", f"{key}={value}"))]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAQ_LORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *launcher, *command], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def test_two_processes_train_as_one_process_accumulating_two_micro_batches(chatglm2_snapshot, tmp_path):
    one = adaq_lora_run(tmp_path / "one", 1, chatglm2_snapshot, tmp_path / "cache")
    two = adaq_lora_run(tmp_path / "two", 2, chatglm2_snapshot, tmp_path / "cache")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 2 and one["total_steps"] == two["total_steps"] == 8
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["rank_pattern"] == one["rank_pattern"]
    assert sum(two["rank_pattern"].values()) == 8 * len(two["rank_pattern"])  # compacted to target_r under DDP
    for name in ("adaq_adapters.safetensors", "adapter_model.safetensors"):
        ours, theirs = load_file(tmp_path / "one" / "adapters" / name), load_file(tmp_path / "two" / "adapters" / name)
        assert ours.keys() == theirs.keys()
        for key in ours:  # float32 sums in another order (gradients, the start's sketches): agree to ~1e-5 relative
            torch.testing.assert_close(theirs[key], ours[key], rtol=1e-4, atol=1e-5)
    read = lambda run: [json.loads(line)["prediction"] for line in (tmp_path / run / "predictions.jsonl").open()]
    assert read("two") == read("one")  # evaluation split over the ranks, gathered in order


def in_two_processes(worker, folder) -> None:
    """Run `worker(rank, folder)` in 2 gloo processes joined as torchrun would join them."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    mp.spawn(_join_and_run, args=(worker, str(folder), port), nprocs=2, join=True)


def _join_and_run(rank, worker, folder, port):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    assert join_world("cpu") == World(rank, 2, rank)
    try:
        worker(rank, folder)
    finally:
        dist.destroy_process_group()


def _train_tiny(folder, steps: int, max_steps: int, checkpoint: bool):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(), "adaq_lora", AdaQConfig(r=4, init_r=4, target_r=2, t_init=1, t_final=2,
                                                               total_steps=max_steps, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(3)
    examples = [{"input_ids": ids, "labels": ids, "attention_mask": [1] * 10}
                for ids in torch.randint(1, TINY_LLAMA["vocab_size"], (16, 10), generator=generator).tolist()]
    config = TrainConfig(max_steps=steps, checkpoint_every=3 if checkpoint else 0, progress=False)
    train(tuner, SimpleNamespace(pad_token_id=0), examples, config, f"{folder}/checkpoint" if checkpoint else None,
          examples=examples)
    return {name: p.detach().clone() for name, p in tuner.model.named_parameters() if p.requires_grad}


def _resume_worker(rank, folder):
    import adaq_lora.training.loop as loop

    writes = []
    real_save = loop.torch_save_atomic
    loop.torch_save_atomic = lambda path, payload: writes.append(str(path)) or real_save(path, payload)
    straight = _train_tiny(folder, 6, 6, checkpoint=False)
    _train_tiny(folder, 3, 6, checkpoint=True)  # killed after its checkpoint at step 3
    resumed = _train_tiny(folder, 6, 6, checkpoint=True)  # a fresh process group resumes it
    torch.save({"writes": writes, "equal": all(torch.equal(straight[n], resumed[n]) for n in straight),
                "compacted_shapes": {n: tuple(t.shape) for n, t in resumed.items()}}, f"{folder}/rank{rank}.pt")


def test_a_two_process_run_resumes_to_the_straight_run_and_only_rank_0_writes(tmp_path):
    in_two_processes(_resume_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["equal"] and ranks[1]["equal"]
    assert len(ranks[0]["writes"]) == 2 and ranks[1]["writes"] == []  # checkpoints at step 3 and step 6
    assert ranks[0]["compacted_shapes"] == ranks[1]["compacted_shapes"]
    assert any(shape[0] < 4 for name, shape in ranks[0]["compacted_shapes"].items() if name.endswith("lora_A"))


def _diverging_masks_worker(rank, folder):
    torch.manual_seed(0)
    tuner = prepare(make_tiny_llama(), "adaq_lora", AdaQConfig(r=4, init_r=4, target_r=2, total_steps=30))
    check_masks_agree(tuner.model, step=1)  # the same masks: no error
    if rank == 1:
        layer = next(module for module in tuner.model.modules() if hasattr(module, "triplet_mask"))
        layer.triplet_mask[0] = False
    with pytest.raises(RuntimeError, match="masks differ after step 7"):
        check_masks_agree(tuner.model, step=7)
    Path(folder, f"rank{rank}.ok").touch()


def test_ranks_whose_masks_differ_are_stopped_with_the_step_named(tmp_path):
    in_two_processes(_diverging_masks_worker, tmp_path)
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()


def test_sharded_data_parallelism_is_refused_naming_ddp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="DistributedDataParallel is the supported route"):
        join_world("cpu")

    class FullyShardedDataParallel(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="train it with DistributedDataParallel"):
        refuse_sharded(torch.nn.Sequential(FullyShardedDataParallel()))


def test_one_process_is_a_world_of_one_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join_world("cpu") == World() and not dist.is_initialized()


@pytest.mark.parametrize("index, method, dataset", [(0, "base", "shibing624/alpaca-zh"),
                                                    (3, "adaq_lora", "shibing624/alpaca-zh"),
                                                    (6, "qlora", "BelleGroup/school_math_0.25M")])
def test_the_slurm_array_runs_each_cell_of_the_tables_under_torchrun(index, method, dataset, tmp_path):
    """scripts/slurm_grid.sh with `srun` standing in: which command each array index launches."""
    (tmp_path / "srun").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_grid.sh"
    done = subprocess.run(["bash", str(script), "--set", "train_size=100"], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(index),
                                             "GPUS_PER_NODE": "4"})
    assert done.returncode == 0, done.stderr
    out = f"runs/paper/{dataset.split('/')[1]}/{method}"
    assert done.stdout.splitlines()[-1] == (
        f".venv/bin/torchrun --standalone --nproc_per_node=4 -m adaq_lora.cli run --method {method} --dataset "
        f"{dataset} --profile paper --out {out} --set train_size=100")
    outside = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                             env={"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "8"})
    assert outside.returncode == 2 and "outside 0-7" in outside.stderr
