"""The README's one-screen example fine-tunes the default model with adaq_lora on the CPU and runs as shown."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## A first fine-tune in one screen", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's example section has no python block"
    return match.group(1)


def test_the_readme_example_runs_as_shown_and_its_budget_falls(tmp_path):
    (tmp_path / "example.py").write_text(readme_example())
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    budgets = [int(b) for b in re.findall(r"rank budget (\d+)", done.stdout)]
    assert len(budgets) == 8
    assert budgets[0] == 8 * 210 and budgets[-1] == 4 * 210
    assert budgets == sorted(budgets, reverse=True)
    config = json.loads((tmp_path / "runs/readme-example/adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA"
