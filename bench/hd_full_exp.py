"""Experiment: an HD-grid model at the full toy budget (run toy's world and recipes). Does it read the character?
args: out [hd|base] [stage2_steps or 0 for recipe default]"""
import sys, json, time, collections
from pathlib import Path
import torch
from minillava.backbones import toy_setup
from minillava.hd import HDConfig
from minillava.model import MiniLlava
from minillava.toy import toy_recipes, train_toy
from minillava.toyreport import evaluate_toy
from minillava.ablate import summarise

out = Path(sys.argv[1]); kind = sys.argv[2] if len(sys.argv) > 2 else "hd"
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 0
t0 = time.time()
world, vdir, ldir = toy_setup(progress=False, backbones=__import__("os").environ.get("BACKBONES"))
torch.manual_seed(0)
hd = HDConfig(max_cells=4, global_context=False) if kind == "hd" else None
model = MiniLlava.from_backbones(str(vdir), str(ldir), hd=hd)
s1, s2 = toy_recipes(world)
if steps:
    s2.max_steps = steps
train_toy(model, s1, s2, out, progress=False)
print("trained", time.time() - t0, flush=True)
res = evaluate_toy(model.eval(), world, out, progress=False)
summ = summarise(res)
print(json.dumps(summ, indent=1))
ans = [json.loads(l) for l in open(out / "eval" / "text_answers.jsonl")]
print(collections.Counter(a["text"] for a in ans).most_common(10))
print("time", time.time() - t0)
