"""Learnability: train a trained model (connector + LM, stage-2 recipe) on character cards only; does it read them?
args: run_model_dir out steps [stage(2|1)]"""
import sys, json, random, subprocess
from pathlib import Path
import torch
from minillava.model import MiniLlava
from minillava.toy import RECIPES
from minillava.trainer import Recipe, train
from minillava.toyworld import character_card, draw_scene, task_pairs
from minillava.prompts import IMAGE
src, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
stage = int(sys.argv[4]) if len(sys.argv) > 4 else 2
(out / "images").mkdir(parents=True, exist_ok=True)
rng = random.Random(0); recs = []
for i in range(4000):
    c = character_card(50_000_000 + i)
    draw_scene(c).save(out / "images" / f"c{i}.png")
    (q, a), = task_pairs("text", c, rng)
    recs.append({"id": f"c{i}", "image": f"c{i}.png", "conversations": [{"from": "human", "value": f"{IMAGE}\n{q}"}, {"from": "gpt", "value": a}]})
(out / "cards.json").write_text(json.dumps(recs))
m = MiniLlava.from_pretrained(src)
r = Recipe.from_yaml(RECIPES / "toy-stage2.yaml", data=str(out / "cards.json"), image_folder=str(out / "images"))
r.max_steps = steps
if stage == 1: r.stage = 1
train(r, m, out / "run", progress=False)
m.eval()
subprocess.run([sys.executable, str(Path(__file__).with_name("cardread.py")), str(out / "run" / "model")])
