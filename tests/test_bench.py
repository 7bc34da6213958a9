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


def run_bench(script, *args, cache):
    """Run a bench script; ``cache``: its MINILLAVA_CACHE (the suite's shared ``toy_cache``)."""
    import os

    env = dict(os.environ, MINILLAVA_CACHE=str(cache))
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                            timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_train_step_runs(toy_cache):
    out = run_bench("train_step.py", "--size", "toy", "--repeats", "1", cache=toy_cache)
    assert "minillava / transformers step time" in out and "| transformers |" in out


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
    assert "| *majority answer* |" in out and "| tower x2 |" in out


def test_gpu_check_runs_on_cpu(toy_cache):
    out = run_bench("gpu_check.py", "--tiny", "--steps", "2", "--batch-size", "2", cache=toy_cache)
    assert "| bf16 + checkpointing + compile | cpu |" in out
    assert "KV-cache decoding == full recomputation: True" in out


def test_binding_lookup_runs_and_its_questions_are_answerable(toy_cache):
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
    out = run_bench("binding_lookup.py", "--steps", "8", "--batch-size", "4", "--lr", "3e-4", cache=toy_cache)
    assert "| 0.0003 | 8 | 32 |" in out


def test_binding_lookup_on_real_layouts_and_tower_features(toy_cache):
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("binding_lookup", BENCH / "binding_lookup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bank = bench.SceneBank("layout", n_scenes=60, held_out=20)
    features, questions, answers = bank.batch(random.Random(0), 30, suffix=2)
    assert features.shape == (30, 64, bench.FEATURES) and questions.shape == (30, 2 + 2 + 1)
    sizes = []
    for f, q, a in zip(features, questions, answers):
        named = q[1].item()  # every patch holding the named attribute belongs to the one named object
        on = f[:, named - bench.FIRST_COLOUR] if q[0] == bench.ASK_SHAPE else \
            f[:, bench.COLOURS + named - bench.FIRST_SHAPE]
        patches = f[on > 0]  # (P, F)
        other = patches[:, :bench.COLOURS] if q[0] == bench.ASK_COLOUR else \
            patches[:, bench.COLOURS:bench.COLOURS + bench.SHAPES]
        first = bench.FIRST_COLOUR if q[0] == bench.ASK_COLOUR else bench.FIRST_SHAPE
        assert (other.argmax(1) + first == a).all()
        sizes.append(len(patches))
    assert min(sizes) >= 1 and max(sizes) > 1  # real objects cover several patches
    held_out = bank.batch(random.Random(1), 250, suffix=2, n_objects=2, test=True)[0]  # (n, 64, F)
    assert len(held_out) == sum(len(s.things) == 2 for s in bank.scenes[40:])  # only held-out 2-object scenes
    assert ((held_out[:, :, :bench.COLOURS].sum(1) > 0).sum(1) == 2).all()  # (each object has its own colour)
    out = run_bench("binding_lookup.py", "--features", "tower", "--fast", "--scenes", "200", "--steps", "8",
                    "--batch-size", "4", "--lr", "3e-4", cache=toy_cache)
    assert "features tower" in out and "| 0.0003 | 8 | 32 |" in out
    assert "tower pretrained for the default steps; linear probe of an object's features: colour" in out


def test_binding_lookup_with_a_longer_pretrained_tower(toy_cache, monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    spec = importlib.util.spec_from_file_location("binding_lookup", BENCH / "binding_lookup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    default = bench.SceneBank("tower", n_scenes=8, held_out=2, fast=True)  # the fast tower: 5 steps
    longer = bench.SceneBank("tower", n_scenes=8, held_out=2, fast=True, vision_steps=7)
    assert default.features.shape == longer.features.shape
    assert not torch.allclose(default.features, longer.features)  # another tower, not the default one again
    out = run_bench("binding_lookup.py", "--features", "tower", "--fast", "--vision-steps", "7", "--scenes", "200",
                    "--steps", "8", "--batch-size", "4", "--lr", "3e-4", cache=toy_cache)
    assert "tower pretrained for 7 steps; linear probe" in out and "| 0.0003 | 8 | 32 |" in out


def test_tower_objectives_runs_and_tags_from_patch_labels(toy_cache):
    import importlib.util

    import torch

    from minillava.toyworld import ATTRIBUTES, Scene, Thing, patch_labels

    spec = importlib.util.spec_from_file_location("tower_objectives", BENCH / "tower_objectives.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # a large red circle and, in the close-up, the character "A": exactly those two tags, and none for an empty view
    scene = Scene(128, 128, (Thing("circle", "red", "large", 40, 40),), "A", (20, 30), seed=0)
    labels = torch.tensor([patch_labels(scene, 8, view=(0, 0, 64), character=True),
                           patch_labels(scene, 8, view=(64, 64, 64), character=True)])
    tags = bench.tags_from(labels)
    n = [len(v) for v in ATTRIBUTES.values()]
    red, circle, large = (ATTRIBUTES[k].index(v) for k, v in (("colour", "red"), ("shape", "circle"),
                                                               ("size", "large")))
    assert tags.shape == (2, n[0] * n[1] * n[2] + n[3])
    assert tags[0].nonzero().flatten().tolist() == [(red * n[1] + circle) * n[2] + large,
                                                    n[0] * n[1] * n[2] + ATTRIBUTES["character"].index("A")]
    assert tags[1].sum() == 0
    out = run_bench("tower_objectives.py", "--fast", cache=toy_cache)
    assert "| patch labels (the default) |" in out and "| tagging |" in out


def test_lookup_curriculum_asks_about_the_worlds_own_images(toy_cache, monkeypatch):
    import importlib.util

    import numpy as np
    from PIL import Image

    from minillava.backbones import toy_setup
    from minillava.toyworld import draw_scene, make_scene

    spec = importlib.util.spec_from_file_location("lookup_curriculum", BENCH / "lookup_curriculum.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    world = toy_setup(fast=True, progress=False)[0]
    records = bench.lookup_records(world, 300)
    assert len(records) == 300 and len({r["image"] for r in records}) == 200  # every training image, some twice
    for r in records[:20]:
        i = int(r["image"].split(".")[0])
        scene = make_scene(i)  # world seed 0
        drawn = np.asarray(draw_scene(scene))
        assert np.array_equal(drawn, np.asarray(Image.open(world / "images" / r["image"]).convert("RGB")))
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        named = next(t for t in scene.things if f"the {t.shape}?" in question or f"the {t.colour} object" in question)
        assert answer == (named.colour if "What colour" in question else named.shape)
    out = run_bench("lookup_curriculum.py", "--tiny", "--lookup-steps", "3", "--batch-size", "4", cache=toy_cache)
    assert "| after stage 2a (lookups only) |" in out and "| after stage 2 (the toy mix) |" in out
    assert f"backbones: {toy_setup(fast=True, progress=False)[1].parent}\n" in out
    # --vision-steps: another tower (its own backbones folder), the rest unchanged
    out = run_bench("lookup_curriculum.py", "--tiny", "--vision-steps", "7", "--lookup-steps", "2", "--batch-size",
                    "4", cache=toy_cache)
    assert "| after stage 2 (the toy mix) |" in out and "backbones: " in out
    assert f"backbones: {toy_setup(fast=True, progress=False)[1].parent}\n" not in out
