"""Experiment: base vs HD grid at the ablation's budget, 3 seeds, on BACKBONES (vision + llm folders)."""
import json, os, sys, collections
from pathlib import Path
from minillava.ablate import Budget, GROUPS, ablation_world, run_variant
from minillava.toyworld import write_world
out = Path(sys.argv[1]); bb = Path(os.environ["BACKBONES"]); budget = Budget()
world = write_world(ablation_world(budget), budget.train_images, budget.eval_images, 0, progress=False)
for v in GROUPS["resolution"][:2]:
    for seed in budget.seeds:
        d = out / f"{v.name.split()[0]}-{seed}"
        s = run_variant(v, world, bb / "vision", bb / "llm", seed, budget, d)
        ans = [json.loads(l)["text"] for l in open(d / "eval" / "text_answers.jsonl")]
        print(v.name, seed, {k: round(s[k], 3) for k in ("text", "overall", "pope F1", "where+prompt accuracy")},
              collections.Counter(ans).most_common(5), flush=True)
