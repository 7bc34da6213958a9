"""Benchmarks are not timed tests; this only checks that each script runs on a tiny budget."""

import subprocess
import sys
from pathlib import Path

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
