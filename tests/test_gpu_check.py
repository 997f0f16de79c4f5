"""The GPU check (scripts/gpu_check.py) is ready to run: it needs none of the book's scoring or data packages, it
stops with a clear message where no GPU is, and its whole code runs at toy sizes on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
ABSENT_ON_GPU_NODES = ("datasets", "jieba", "nltk", "rouge_chinese", "matplotlib", "papermill")


def run_without_book_packages(*args: str) -> subprocess.CompletedProcess:
    """The script with the packages a minimal GPU node lacks made unimportable."""
    code = (f"import sys, runpy; sys.modules.update(dict.fromkeys({ABSENT_ON_GPU_NODES!r})); "
            f"sys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_without_a_gpu_it_stops_at_its_first_cuda_call_and_says_what_to_do(tmp_path):
    done = run_without_book_packages("--out", str(tmp_path / "report.json"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no CUDA GPU visible" in done.stderr and "--smoke" in done.stderr
    assert not (tmp_path / "report.json").exists()


def test_its_whole_code_runs_at_toy_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "report.json"
    done = run_without_book_packages("--smoke", "--seq-len", "32", "--steps", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert max(report["kernels"][name] for name in report["kernels"] if name.startswith("dequantize")) == 0.0
    assert report["quantize_on_load"]["logits_finite"] and report["quantize_on_load"]["decoder_matrices_above_nf4"] > 0
    assert report["compaction"]["compacted"] and report["compaction"]["state_shapes_match"]
    assert report["compaction"]["optimizer_parameters_after"] < report["compaction"]["optimizer_parameters_before"]
    assert report["resume"]["exact"]
    for method in ("base", "lora", "qlora", "adaq_lora", "peft-qlora", "peft-adalora"):
        rows = report[f"chatglm2_6b {method}"]
        assert [row["gradient_checkpointing"] for row in rows] == [False, True]
        assert all(row["tokens_per_second"] > 0 for row in rows)
        assert (rows[0]["predicted_mb"] is None) == method.startswith("peft")
