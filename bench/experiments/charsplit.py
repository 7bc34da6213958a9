"""The character answers of a toy run, split by canvas (square: the HD grid at full scale; others: 0.8).
args: run_dir world_dir"""
import json, sys, collections
from pathlib import Path
from minillava.toyworld import make_scene
run, world = Path(sys.argv[1]), Path(sys.argv[2])
gold = {a["question_id"]: a["answer"] for a in map(json.loads, open(world / "eval/text_answers.jsonl"))}
got = {a["question_id"]: a["text"] for a in map(json.loads, open(run / "eval/text_answers.jsonl"))}
tally = collections.Counter()
for q, g in gold.items():
    s = make_scene(int(q.split("-")[0].removeprefix("scene")))
    canvas = "square" if s.width == s.height else "oblong"
    has = "char" if g != "none" else "none"
    tally[canvas, has, got[q] == g] += 1
for k in sorted(tally): print(k, tally[k])
