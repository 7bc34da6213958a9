"""Experiment: base vs HD grid at the ablation's budget. MODE A: as `minillava ablate` trains them today (each
variant its own stage 1, HD's at HD). MODE B: one stage 1 per seed at the base resolution (the paper's HD: "no
extra pretraining at high resolution"), S1 steps, shared by base and HD; HD's row-end vector starts in stage 2."""
import collections, json, os, sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from minillava.ablate import GROUPS, Budget, ablation_world, run_variant, summarise
from minillava.model import MiniLlava
from minillava.toy import toy_recipes
from minillava.toyreport import evaluate_toy
from minillava.toyworld import write_world
from minillava.trainer import train

out, mode = Path(sys.argv[1]), sys.argv[2]
s1_steps = int(os.environ.get("S1", "600"))
seeds = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
bb = Path(os.environ["BACKBONES"]); budget = Budget()
world = write_world(ablation_world(budget), budget.train_images, budget.eval_images, 0, progress=False)
variants = GROUPS["resolution"][:2]


def report(name, seed, d, s):
    ans = [json.loads(l)["text"] for l in open(d / "eval" / "text_answers.jsonl")]
    print(mode, name, seed, {k: round(s[k], 3) for k in ("text", "colour", "overall", "count", "pope F1", "where+prompt accuracy")},
          collections.Counter(ans).most_common(5), flush=True)


for seed in seeds:
    if mode in ("A", "C"):  # C: as A with S1 stage-1 steps; VARIANTS picks which (0 base, 1 HD)
        b = budget if mode == "A" else replace(budget, stage1_steps=s1_steps)
        for i in [int(x) for x in os.environ.get("VARIANTS", "0,1").split(",")]:
            v = variants[i]
            d = out / (f"A-{v.name.split()[0]}-{seed}" if mode == "A" else f"C{s1_steps}-{v.name.split()[0]}-{seed}")
            report(v.name, seed, d, run_variant(v, world, bb / "vision", bb / "llm", seed, b, d))
        continue
    s1 = out / f"B-stage1-{seed}"
    stage1, _ = toy_recipes(world)
    stage1.max_steps, stage1.seed = s1_steps, seed
    if not (s1 / "connector.safetensors").exists():
        torch.manual_seed(seed)
        train(stage1, MiniLlava.from_backbones(str(bb / "vision"), str(bb / "llm")), s1, progress=False)
    state = load_file(str(s1 / "connector.safetensors"))
    for v in variants:
        d = out / f"B{s1_steps}-{v.name.split()[0]}-{seed}"
        torch.manual_seed(seed)
        model = MiniLlava.from_backbones(str(bb / "vision"), str(bb / "llm"), hd=v.hd)
        model.connector.load_state_dict({k.removeprefix("connector."): t for k, t in state.items()})
        _, stage2 = toy_recipes(world)
        stage2.max_steps, stage2.seed, stage2.per_device_batch_size = budget.stage2_steps, seed, budget.stage2_batch_size
        train(stage2, model, d / "stage2", progress=False)
        report(v.name, seed, d, summarise(evaluate_toy(model.eval(), world, d, progress=False)))
