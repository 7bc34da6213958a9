"""Throwaway: phase 4 (+ positions: one token per object and place) on top of the shipped v6 LM, replaying the
build's rng for phases 1-3 so the batches are those a from-scratch build would draw. Tower from argv[2]."""
import json, random, shutil, sys, time
from dataclasses import asdict
from pathlib import Path
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.backbones import (BackboneSpec, SHIPPED, lm_phases, train_language_model_phase, text_lookup_accuracy,
                                 add_position_tokens)
from minillava.toyworld import language_corpus

out, tower = Path(sys.argv[1]), Path(sys.argv[2])
spec = BackboneSpec()
tok = AutoTokenizer.from_pretrained(SHIPPED / "llm")
lm = LlamaForCausalLM.from_pretrained(SHIPPED / "llm")
texts = language_corpus(spec.corpus_scenes, spec.seed)
text_ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
rng = random.Random(spec.seed)
n_text = round(spec.lm_batch_size * spec.lm_text_share)
phases = lm_phases(spec)
step = 0
for name, st, share, mix, pos in phases[:3]:
    for _ in range(st):
        rng.sample(text_ids, k=n_text)
        for _ in range(spec.lm_batch_size - n_text):
            rng.randrange(10**8)
    step += st
name, st, share, mix, pos = phases[3]
add_position_tokens(tok, lm)
print("vocab", len(tok), flush=True)
print("before:", {k: round(v, 3) for k, v in text_lookup_accuracy(lm, tok, 20, seed=1).items()}, flush=True)
text_ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
history = []
t0 = time.time()
train_language_model_phase(lm, tok, text_ids, spec, name, st, share, mix, rng, step, True, history, pos)
print("phase 4 wall", round(time.time() - t0), flush=True)
final = text_lookup_accuracy(lm.eval(), tok, 100, seed=0)
print("final:", {k: round(v, 3) for k, v in final.items()}, flush=True)
if out.exists():
    shutil.rmtree(out)
shutil.copytree(tower / "vision", out / "vision")
lm.save_pretrained(out / "llm"); tok.save_pretrained(out / "llm")
m = json.loads((SHIPPED / "manifest.json").read_text())
m["spec"] = asdict(spec); m["command"] = "warm start (experiment)"; m["probes"]["text lookup"] = final
m["lm_text_lookups_during_pretraining"] += history
(out / "manifest.json").write_text(json.dumps(m, indent=1))
