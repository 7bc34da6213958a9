"""The ablation's "HD grid" variant at the toy run's full budget (the toy recipe, 5,000 images), seed 0, with the
checkout's shipped backbones. Usage: hdfull.py OUT [global]"""
import json, sys, time
from pathlib import Path
import torch
from minillava.backbones import toy_setup
from minillava.hd import HDConfig
from minillava.model import MiniLlava
from minillava.toy import toy_recipes, train_toy
from minillava.toyreport import evaluate_toy
from minillava.toyworld import make_scene
out = Path(sys.argv[1]); t0 = time.time()
world, vision, llm = toy_setup(progress=False)
torch.manual_seed(0)
model = MiniLlava.from_backbones(str(vision), str(llm), hd=HDConfig(max_cells=4, global_context=len(sys.argv) > 2))
train_toy(model, *toy_recipes(world), out, progress=False)
res = evaluate_toy(model.eval(), world, out, progress=False)
print({t: res[t].get("f1", res[t].get("accuracy")) for t in res}, round(time.time() - t0))
rows = [json.loads(l) for l in open(out / "eval/text_answers.jsonl")]
gold = [make_scene(int(r["question_id"][5:-5])).character or "none" for r in rows]
pres = [(g, r["text"]) for g, r in zip(gold, rows) if g != "none"]
print("present right", sum(a == b for a, b in pres), "/", len(pres), "said none", sum(b == "none" for a, b in pres),
      "absent right", sum(r["text"] == "none" for g, r in zip(gold, rows) if g == "none"), pres[:15])
