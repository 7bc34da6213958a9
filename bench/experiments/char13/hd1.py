"""One ablation-budget run of a variant (default HD grid), seed S, with the worktree's shipped backbones.
Usage: hd1.py OUT SEED [variant-index in GROUPS['resolution']]"""
import json, sys, time
from minillava.ablate import Budget, GROUPS, ablation_world, run_variant
from minillava.backbones import toy_backbones
from minillava.toyworld import write_world, make_scene
out, seed = sys.argv[1], int(sys.argv[2]); v = GROUPS["resolution"][int(sys.argv[3]) if len(sys.argv) > 3 else 1]
b = Budget(); t0 = time.time()
world = write_world(ablation_world(b), b.train_images, b.eval_images, progress=False)
vision, llm = toy_backbones(progress=False)
s = run_variant(v, world, vision, llm, seed, b, __import__("pathlib").Path(out))
rows = [json.loads(l) for l in open(f"{out}/eval/text_answers.jsonl")]
gold = [make_scene(int(r["question_id"][5:-5])).character or "none" for r in rows]
pres = [(g, r["text"]) for g, r in zip(gold, rows) if g != "none"]
print(v.name, seed, {k: round(x, 3) for k, x in s.items()}, round(time.time() - t0))
print("present right", sum(a == b for a, b in pres), "/", len(pres), "said none", sum(b == "none" for a, b in pres),
      "absent right", sum(r["text"] == "none" for g, r in zip(gold, rows) if g == "none"), pres[:15])
