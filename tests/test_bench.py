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


def run_bench(script, *args, tmp_path):
    import os

    env = dict(os.environ, MINILLAVA_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                            timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_train_step_runs(tmp_path):
    out = run_bench("train_step.py", "--size", "toy", "--repeats", "1", tmp_path=tmp_path)
    assert "minillava / transformers step time" in out and "| transformers |" in out


def test_generate_runs(tmp_path):
    out = run_bench("generate.py", "--size", "toy", "--repeats", "1", "--new-tokens", "3", "--batches", "1,2",
                    tmp_path=tmp_path)
    assert "| 2 | no |" in out and "| True |" in out  # same tokens as transformers


def test_padding_runs(tmp_path):
    out = run_bench("padding.py", "--fast", "--batch-sizes", "4", tmp_path=tmp_path)
    assert "| 4 |" in out


def test_stage1_runs(tmp_path):
    out = run_bench("stage1.py", "--size", "toy", "--repeats", "1", tmp_path=tmp_path)
    assert "| stage 1, cached vision features |" in out


def test_mfu_runs(tmp_path):
    out = run_bench("mfu.py", "--fast", tmp_path=tmp_path)
    assert "| small |" in out and "MFU" in out


def test_toy_sweep_runs(tmp_path):
    out = run_bench("toy_sweep.py", "--tiny", tmp_path=tmp_path)
    assert "| *majority answer* |" in out and "| tower x2 |" in out


def test_gpu_check_runs_on_cpu(tmp_path):
    out = run_bench("gpu_check.py", "--tiny", "--steps", "2", "--batch-size", "2", tmp_path=tmp_path)
    assert "| bf16 + checkpointing + compile | cpu |" in out
    assert "KV-cache decoding == full recomputation: True" in out


def test_binding_lookup_runs_and_its_questions_are_answerable(tmp_path):
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("binding_lookup", BENCH / "binding_lookup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    features, questions, answers = bench.make_batch(random.Random(0), 50, suffix=3)
    assert questions.shape == (50, 2 + 3 + 1) and (questions[:, -1] == bench.ANSWER).all()
    for f, q, a in zip(features, questions, answers):  # the answer is the other attribute of the named object
        named = q[1].item()
        on = f[:, named - bench.FIRST_COLOUR] if q[0] == bench.ASK_SHAPE else \
            f[:, bench.COLOURS + named - bench.FIRST_SHAPE]
        patch = f[on > 0][0]  # (F,): the one patch holding the named attribute
        expected = bench.FIRST_COLOUR + patch[:bench.COLOURS].argmax() if q[0] == bench.ASK_COLOUR else \
            bench.FIRST_SHAPE + patch[bench.COLOURS:bench.COLOURS + bench.SHAPES].argmax()
        assert a.item() == expected.item() and (on > 0).sum() == 1
    out = run_bench("binding_lookup.py", "--steps", "8", "--batch-size", "4", "--lr", "3e-4", tmp_path=tmp_path)
    assert "| 0.0003 | 8 | 32 |" in out


def test_tower_objectives_runs_and_labels_the_right_patches(tmp_path):
    import importlib.util

    from minillava.toyworld import SHAPES, Scene, Thing

    spec = importlib.util.spec_from_file_location("tower_objectives", BENCH / "tower_objectives.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # a 128 x 128 canvas on an 8 x 8 grid (16 px cells): a large circle (half-width 22) centred at (40, 40)
    # covers the patch centres 24, 40, 56 in x and y -> 9 patches; everything else is unlabelled
    scene = Scene(128, 128, (Thing("circle", "red", "large", 40, 40),), None, None, seed=0)
    labels = bench.patch_labels(scene, grid=8)
    on = (labels[:, 1] != -100).nonzero().flatten().tolist()
    assert on == [gy * 8 + gx for gy in (1, 2, 3) for gx in (1, 2, 3)]
    assert (labels[on, 1] == SHAPES.index("circle")).all() and (labels[on, 0] == 0).all()
    out = run_bench("tower_objectives.py", "--fast", tmp_path=tmp_path)
    assert "| patch labels |" in out and "| tagging (the default) |" in out
