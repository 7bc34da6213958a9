"""Teacher-forced: after '... The character' in the gold description, where does the right letter rank among the 23?"""
import json, sys, re, torch
from pathlib import Path
from PIL import Image
from minillava.model import MiniLlava
from minillava.toyworld import CHARACTERS
run, world = Path(sys.argv[1]), Path(sys.argv[2])
m = MiniLlava.from_pretrained(run / "stage2" / "model").eval()
tok = m.tokenizer
letters = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in CHARACTERS]
qs = {q["question_id"]: q for q in map(json.loads, open(world / "eval/detail.jsonl"))}
gold = {a["question_id"]: a["answer"] for a in map(json.loads, open(world / "eval/detail_answers.jsonl"))}
top1 = n = 0; ranks = []
for qid, g in gold.items():
    mt = re.search(r"^(.*The character) (\S+) is", g)
    if not mt: continue
    img = Image.open(world / "images" / qs[qid]["image"])
    b = m.prompt_batch([img], [qs[qid]["text"]])
    pre = torch.tensor([tok(" " + mt.group(1), add_special_tokens=False)["input_ids"]])
    ids = torch.cat([b["input_ids"], pre], 1); mask = torch.ones_like(ids)
    with torch.no_grad():
        out = m(input_ids=ids, pixel_values=b["pixel_values"], attention_mask=mask,
                **({"image_sizes": b["image_sizes"]} if "image_sizes" in b else {}))
    logits = out.logits[0, -1, letters]
    want = CHARACTERS.index(mt.group(2))
    ranks.append(int((logits > logits[want]).sum())); n += 1
print("n", n, "top1 among letters", sum(r == 0 for r in ranks) / n, "mean rank", sum(ranks) / n, "(chance 11)")
