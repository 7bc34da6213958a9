"""What more compute buys the toy model: variants of `minillava run toy`, side by side on one world.

    python bench/toy_sweep.py [--eval-images 300] [--jobs 4] [--variants FILE.json] [--tiny]

Each variant changes the backbone pretraining (``spec``: fields of ``BackboneSpec``, e.g. ``vision_steps``) and/or
the two training stages (``stage1`` / ``stage2``: fields of ``Recipe``, e.g. ``epochs``); everything else is the
toy recipe. All variants share one toy world (so differences are the variant's, not the data's) and run as
separate processes, ``--jobs`` at a time (each with its own cache, so nothing is reused between them). On a
machine with a GPU, the variants train on it. Writes bench/results/toy_sweep.json and prints a table of held-out
accuracy per task, with each variant's training time.

The default variants ask: is the toy model limited by its vision tower (``vision_steps``) or by the length of
stage 2 (``epochs``)? The README and bench/README.md quote the answer.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "toy recipe": {},
    "tower 1000 steps": {"spec": {"vision_steps": 1000}},
    "tower 3000 steps": {"spec": {"vision_steps": 3000}},
    "stage 2 x3": {"stage2": {"epochs": 3}},
    "tower 1000, stage 2 x3": {"spec": {"vision_steps": 1000}, "stage2": {"epochs": 3}},
    "tower 3000, stage 2 x3": {"spec": {"vision_steps": 3000}, "stage2": {"epochs": 3}},
}
TINY = {"toy recipe": {"stage1": {"max_steps": 2}, "stage2": {"max_steps": 3}},
        "stage 2 x2": {"stage1": {"max_steps": 2}, "stage2": {"max_steps": 6}}}


def run_variant(world: str, variant: dict, out: str) -> dict:
    """Backbones -> stage 1 -> stage 2 -> held-out evaluation for one variant (run in its own process)."""
    import torch

    from minillava.backbones import BackboneSpec, toy_backbones
    from minillava.model import MiniLlava
    from minillava.toy import toy_recipes
    from minillava.toyreport import evaluate_toy
    from minillava.trainer import load_connector, train

    start = time.perf_counter()
    spec = BackboneSpec(**variant["spec"]) if "spec" in variant else None  # None: the shipped backbones
    vision_dir, llm_dir = toy_backbones(spec, progress=False)
    backbones = time.perf_counter()
    torch.manual_seed(0)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
    stage1, stage2 = toy_recipes(Path(world))
    for recipe, key in ((stage1, "stage1"), (stage2, "stage2")):
        for field, value in variant.get(key, {}).items():
            setattr(recipe, field, value)
    train(stage1, model, f"{out}/stage1", progress=False)
    load_connector(model, f"{out}/stage1")
    metrics = train(stage2, model, f"{out}/stage2", progress=False)
    trained = time.perf_counter()
    results = evaluate_toy(model, world, out, progress=False)
    return {"backbones_s": round(backbones - start, 1), "training_s": round(trained - backbones, 1),
            "stage2_steps": metrics[-1]["step"], "stage2_loss": metrics[-1]["loss"],
            "results": {task: round(r.get("accuracy", r.get("word_f1", 0.0)), 3) for task, r in results.items()},
            "majority": {task: r["majority"] for task, r in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=300, help="more than the toy run's 200: less noise")
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once")
    parser.add_argument("--variants", help="a JSON file {name: variant}; default: the tower/stage-2 grid")
    parser.add_argument("--tiny", action="store_true", help="a tiny world and budget (checks the script only)")
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)  # world, variant JSON, out: a worker
    args = parser.parse_args()
    if args._one:
        world, variant, out = args._one
        Path(out, "row.json").write_text(json.dumps(run_variant(world, json.loads(variant), out)))
        return

    from minillava.toyworld import write_world

    variants = json.loads(Path(args.variants).read_text()) if args.variants else TINY if args.tiny else VARIANTS
    train_images, eval_images = (60, 6) if args.tiny else (args.train_images, args.eval_images)
    with tempfile.TemporaryDirectory() as tmp:
        world = str(write_world(f"{tmp}/world", train_images, eval_images, seed=0, progress=False))
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        pending, running, rows = list(variants.items()), [], {}
        while pending or running:
            while pending and len(running) < args.jobs:
                name, variant = pending.pop(0)
                out = f"{tmp}/run{len(rows) + len(running)}"
                Path(out).mkdir()
                env = dict(os.environ, MINILLAVA_CACHE=f"{out}/cache", OMP_NUM_THREADS=str(threads))
                command = [sys.executable, __file__, "--_one", world, json.dumps(variant), out]
                running.append((name, out, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                            stderr=open(f"{out}/log.txt", "w"))))
            time.sleep(1)
            for name, out, process in [r for r in running if r[2].poll() is not None]:
                running.remove((name, out, process))
                if process.returncode != 0:
                    raise RuntimeError(f"variant {name!r} failed:\n{Path(out, 'log.txt').read_text()[-3000:]}")
                rows[name] = {"variant": variants[name]} | json.loads(Path(out, "row.json").read_text())
    tasks = list(next(iter(rows.values()))["results"])
    first = next(iter(rows.values()))["majority"]
    print("| variant | " + " | ".join(tasks) + " | training s |")
    print("|---" * (len(tasks) + 2) + "|")
    print("| *majority answer* | " + " | ".join("-" if first[t] is None else f"{first[t]:.0%}" for t in tasks)
          + " | - |")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row['results'][t]:.0%}" for t in tasks) + f" | {row['training_s']} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "toy_sweep.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
