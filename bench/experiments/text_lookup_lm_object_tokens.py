"""Experiment: can the toy LM learn text lookups with 2-3 objects? args: layers width heads steps lr batch text_share tag"""
import math, random, sys, time, json
import torch
from minillava.backbones import train_tokenizer, tiny_language_model, _template_text
from minillava.prompts import prepare_tokenizer, tokenize_conversation, IGNORE_INDEX
import minillava.toyworld as tw
tw._OBJECT_WORDINGS = ('a {size} {colour} {shape}', 'a {colour} {shape}', 'one {colour} {shape}')
from minillava.toyworld import language_corpus, text_lookup_record, make_scene

layers, width, heads, steps, lr, batch, text_share = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
tag = sys.argv[8]
torch.set_num_threads(int(sys.argv[9]) if len(sys.argv) > 9 else 2)
torch.manual_seed(0)
texts = language_corpus(3000)
tok = train_tokenizer(texts + _template_text(), vocab_size=1000)
from tokenizers import AddedToken
tok.add_tokens([AddedToken(f' {c} {s}', normalized=False) for c in ['red','green','blue','yellow'] for s in ['circle','square','triangle']])
image_id = prepare_tokenizer(tok)
print("vocab", len(tok), flush=True)
lm = tiny_language_model(tok, hidden_size=width, num_layers=layers, num_heads=heads)
pad, eos = tok.pad_token_id, tok.eos_token_id
text_ids = [tok(t)["input_ids"] + [eos] for t in texts]

def lookup(seed, n=None, kinds=None):
    rng = random.Random(seed)
    return tokenize_conversation(text_lookup_record(make_scene(seed, n), rng, kinds, questions=(1, 3))["conversations"], tok, image_id)

t0 = time.time()
pool = [lookup(10**7 + i) for i in range(20000)]
print("pool", time.time() - t0, sum(len(p["input_ids"]) for p in pool[:1000]) / 1000, flush=True)
held = {n: {k: [lookup(5 * 10**8 + 1000 * n + i, n, [k]) for i in range(150)] for k in ("colour", "shape", "pope", "count", "choice")} for n in (1, 2, 3)}

def collate(rows):
    L = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [pad] * (L - len(r["input_ids"])) for r in rows])
    lab = torch.tensor([r["labels"] + [IGNORE_INDEX] * (L - len(r["labels"])) for r in rows])
    return ids, lab

@torch.no_grad()
def acc(rows):
    lm.eval()
    ids, lab = collate(rows)
    logits = lm(input_ids=ids, attention_mask=(ids != pad).long()).logits[:, :-1]
    lab = lab[:, 1:]
    ok = ((logits.argmax(-1) == lab) | (lab == IGNORE_INDEX)).all(1)
    lm.train()
    return ok.float().mean().item()

opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
warm = max(1, steps // 20)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / steps))))
rng = random.Random(0)
lm.train()
t0 = time.time()
for step in range(steps + 1):
    if step % 250 == 0 or step == steps:
        res = {n: {k: round(acc(v), 3) for k, v in held[n].items()} for n in held}
        print(step, f"{time.time() - t0:.0f}s", json.dumps(res), flush=True)
        if step == steps:
            break
    nt = int(batch * text_share)
    rows = [{"input_ids": x, "labels": x} for x in (text_ids[i] for i in rng.sample(range(len(text_ids)), nt))]
    rows += [pool[i] for i in rng.sample(range(len(pool)), batch - nt)]
    ids, lab = collate(rows)
    lab = torch.where(ids == pad, IGNORE_INDEX, lab)
    logits = lm(input_ids=ids, attention_mask=(ids != pad).long()).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), lab[:, 1:].flatten(), reduction="none").view(lab.shape[0], -1)
    m = (lab[:, 1:] != IGNORE_INDEX).float()
    loss = (ce[:nt] * m[:nt]).sum() / m[:nt].sum().clamp(min=1) + (ce[nt:] * m[nt:]).sum() / m[nt:].sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    opt.step(); sched.step(); opt.zero_grad()
    if step % 50 == 0:
        print("loss", step, round(loss.item(), 3), flush=True)
torch.save(lm.state_dict(), f"/tmp/exp/lm_{tag}.pt")
