"""Benchmarks are not timed tests; this only checks that each script runs on a tiny budget."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_hd_tokens_runs():
    result = subprocess.run([sys.executable, str(BENCH / "hd_tokens.py"), "--cell", "32", "--patch", "8",
                             "--width", "32", "--layers", "1", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 1000x100 |" in result.stdout and "HD encode time / base" in result.stdout


def test_toy_run_bench_runs():
    result = subprocess.run([sys.executable, str(BENCH / "toy_run.py"), "--fast"], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "min wall, peak RSS" in result.stdout


def run_bench(script, *args, cache):
    """Run a bench script; ``cache``: its MINILLAVA_CACHE (the suite's shared ``toy_cache``)."""
    import os

    env = dict(os.environ, MINILLAVA_CACHE=str(cache))
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                            timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("checkpointing", [[], ["--checkpointing"]])
def test_train_step_runs(toy_cache, checkpointing):
    out = run_bench("train_step.py", "--size", "toy", "--vocab", "4000", "--repeats", "1", *checkpointing,
                    cache=toy_cache)
    assert "minillava / transformers' default: step time" in out and "| transformers + logits_to_keep |" in out
    assert f"gradient checkpointing {'on' if checkpointing else 'off'}" in out
    losses = [float(x.split()[-1]) for x in out.split("first-step losses ")[1].split("\n")[0].split(", ")]
    assert len(losses) == 3 and max(losses) - min(losses) < 1e-5  # the same weights, batch and loss


def test_step_breakdown_runs(toy_cache):
    """The breakdown's tower-up-to-the-kept-layer equals the model's own features (asserted inside the script)."""
    out = run_bench("step_breakdown.py", "--size", "toy", "--vocab", "4000", "--repeats", "1", cache=toy_cache)
    assert "| tower, up to the kept layer |" in out and "unused tower work" in out


def test_generate_runs(toy_cache):
    out = run_bench("generate.py", "--size", "toy", "--repeats", "1", "--new-tokens", "3", "--batches", "1,2",
                    cache=toy_cache)
    assert "| 2 | no |" in out and "| True |" in out  # same tokens as transformers


def test_padding_runs(toy_cache):
    out = run_bench("padding.py", "--fast", "--batch-sizes", "4", cache=toy_cache)
    assert "| 4 |" in out


def test_stage1_runs(toy_cache):
    out = run_bench("stage1.py", "--size", "toy", "--repeats", "1", cache=toy_cache)
    assert "| stage 1, cached vision features |" in out


def test_mfu_runs(toy_cache):
    out = run_bench("mfu.py", "--fast", cache=toy_cache)
    assert "| small |" in out and "MFU" in out


def test_toy_sweep_runs(toy_cache):
    out = run_bench("toy_sweep.py", "--tiny", cache=toy_cache)
    assert "| *majority answer* |" in out and "| stage 2 x2 |" in out


def test_gpu_check_runs_on_cpu(toy_cache):
    out = run_bench("gpu_check.py", "--tiny", "--steps", "2", "--batch-size", "2", cache=toy_cache)
    assert "| bf16 + checkpointing + compile | cpu |" in out
    assert "KV-cache decoding == full recomputation: True" in out

