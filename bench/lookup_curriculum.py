"""Lookups first: does the toy model bind when stage 2 starts with nothing but lookup questions?

    python bench/lookup_curriculum.py [--lookup-steps 1500] [--batch-size 32] [--vision-steps 1800] [--tiny]

`bench/binding_lookup.py --features tower` shows that the toy LM can learn to find the named object from the
real tower's features, after about 50,000 single lookup questions. Inside the toy mix it does not: counting and
descriptions reward looking at every object. This runs the toy recipe with one stage in between:

    stage 1 (captions) -> stage 2a: single-turn lookup questions about the world's training images
    ("What shape is the red object?" + the short-answer prompt), ``--lookup-steps`` steps of ``--batch-size``
    -> stage 2 (the toy mix, unchanged)

and scores the held-out tasks after stage 2a and after stage 2, with ``evaluate.answer_attention`` (where the
answer position looks). It is a probe of what the 5-minute recipe lacks, not a recipe: it takes about 13
minutes on 2 cores. ``--vision-steps``: a tower pretrained for that many steps instead of the default 900
(the same LM). ``--tiny``: the pipeline-check world and backbones and a few steps (for tests). Writes
bench/results/lookup_curriculum[_vision<N>].json. bench/README.md ("The lookup from the real tower's features",
"What the tower's features cost the lookup") quotes it.
"""

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from minillava.backbones import toy_setup
from minillava.cli import toy_recipes
from minillava.evaluate import answer_attention, evaluate_toy, main_metric
from minillava.model import MiniLlava
from minillava.prompts import IMAGE, SHORT_ANSWER, with_format_prompt
from minillava.toyworld import short_qa, world_scene
from minillava.trainer import load_connector, train


def lookup_records(world: Path, n: int, seed: int = 7) -> list[dict]:
    """``n`` single-turn lookup questions about the world's training images (each image asked several times)."""
    spec = json.loads((world / "world.json").read_text())
    rng = random.Random(seed)
    records = []
    for k in range(n):
        i = k % spec["n_train"]
        scene = world_scene(spec["seed"], i)
        thing = rng.choice(scene.things)
        q, a = short_qa(scene, rng, rng.choice(["colour", "shape"]), thing)
        records.append({"id": f"lookup{k}", "image": f"{i:06d}.png", "conversations": [
            {"from": "human", "value": f"{IMAGE}\n{with_format_prompt(q, SHORT_ANSWER)}"},
            {"from": "gpt", "value": a}]})
    rng.shuffle(records)
    return records


def scores(results: dict) -> dict:
    """One number per task (``evaluate.main_metric``)."""
    return {task: round(main_metric(r), 3) for task, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lookup-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vision-steps", type=int, help="pretrain the tower for this many steps (default 900)")
    parser.add_argument("--tiny", action="store_true", help="pipeline check: tiny world, backbones and budgets")
    args = parser.parse_args()
    world, vision_dir, llm_dir = toy_setup(fast=args.tiny, vision_steps=args.vision_steps)
    print(f"backbones: {vision_dir.parent}")
    stage1, stage2 = toy_recipes(world, fast=args.tiny)
    torch.manual_seed(0)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
    rows, trained = {}, 0.0  # trained: seconds spent training so far (not evaluating)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "lookups.json").write_text(json.dumps(lookup_records(world, args.lookup_steps * args.batch_size)))
        # stage 2a: the toy stage 2's settings, but only lookups, larger batches and one learning rate (a separate
        # connector rate of 1e-3 slowed the lookup in binding_lookup.py)
        lookups = dataclasses.replace(stage2, data=str(tmp / "lookups.json"), per_device_batch_size=args.batch_size,
                                      max_steps=args.lookup_steps, connector_learning_rate=0.0)
        stages = [("stage1", "", stage1), ("stage2a", "after stage 2a (lookups only)", lookups),
                  ("stage2", "after stage 2 (the toy mix)", stage2)]
        for folder, label, recipe in stages:
            start = time.perf_counter()
            train(recipe, model, tmp / folder)
            trained += time.perf_counter() - start
            if folder == "stage1":
                load_connector(model, tmp / "stage1")
                continue
            rows[label] = {"minutes": round(trained / 60, 1),
                           **scores(evaluate_toy(model, world, tmp / "eval", progress=False)),
                           "attention": answer_attention(model, 20 if args.tiny else 100)}
    tasks = [t for t in rows[next(iter(rows))] if t not in ("minutes", "attention")]
    print("| after | minutes (training) | " + " | ".join(tasks) + " | attention: named / others / even |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for name, row in rows.items():
        att = {k: v[-1] for k, v in row["attention"].items()}  # the last layer
        print(f"| {name} | {row['minutes']} | " + " | ".join(f"{row[t]:.0%}" for t in tasks) +
              f" | {att['named object']:.1%} / {att['other objects']:.1%} / {att['even spread']:.1%} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    name = "lookup_curriculum" + (f"_vision{args.vision_steps}" if args.vision_steps else "")
    (results / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
