"""Long runs side by side: each in a process of its own with one torch thread, at most `jobs` at a time.

Two threads per process on a two-core machine made steps 10-70× slower; one thread each, two at a time, keeps both
cores busy without that. Used by the grid's recorder (`scripts/record_grid.py`) and the start sweep
(`benchmarks/sweep_start.py`), which each say what to start and what to keep of a finished run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Hashable

ONE_THREAD = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # added to each run's environment


def run_side_by_side(todo: list[Hashable], start: Callable[[Hashable, dict], subprocess.Popen],
                     finished: Callable[[Hashable, subprocess.Popen], bool], jobs: int = 2,
                     poll_seconds: float = 5.0) -> list[Hashable]:
    """Start `start(item, env)` for each item of `todo`, `jobs` at a time, and call `finished(item, process)` as each
    one ends; returns the items whose `finished` said False (it is told the exit code through `process`)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    todo, running, failed = list(todo), {}, []
    env = {**os.environ, **ONE_THREAD}
    while todo or running:
        while todo and len(running) < jobs:
            item = todo.pop(0)
            running[item] = start(item, env)
            print(f"started {item}", file=sys.stderr, flush=True)
        time.sleep(poll_seconds)
        for item, process in list(running.items()):
            if process.poll() is not None:
                del running[item]
                if not finished(item, process):
                    failed.append(item)
    return failed
