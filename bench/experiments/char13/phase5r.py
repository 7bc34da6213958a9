"""The build's last LM phase (lm_phases()[4]) run on the phase-4 LM with the build's batches replayed (phases 1-4's
draws), by the current checkout's code. Usage: phase5r.py PHASE4_LLM OUT"""
import json, random, sys, time
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.backbones import BackboneSpec, lm_phases, save_backbone, text_lookup_accuracy, train_language_model_phase
from minillava.toyworld import language_corpus

src, out = sys.argv[1], sys.argv[2]
t0 = time.time()
spec = BackboneSpec()
texts = language_corpus(spec.corpus_scenes, spec.seed)
tok = AutoTokenizer.from_pretrained(src); lm = LlamaForCausalLM.from_pretrained(src)
rng, step = random.Random(spec.seed), 0
phases = lm_phases(spec)
for name, steps, caption_share, mix, positions in phases[:4]:
    n_text, n_cap = round(spec.lm_batch_size * spec.lm_text_share), round(spec.lm_batch_size * caption_share)
    for _ in range(steps):
        rng.sample(range(len(texts)), k=min(n_text, len(texts)))
        for _ in range(spec.lm_batch_size - min(n_text, len(texts))):
            rng.randrange(10**8)
    step += steps
text_ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
history = []
name, steps, caption_share, mix, positions = phases[4]
train_language_model_phase(lm, tok, text_ids, spec, name, steps, caption_share, mix, rng, step, True, history, positions)
acc = text_lookup_accuracy(lm, tok, 100, 0)
save_backbone(out, lm.eval(), tok)
json.dump({"text lookup": acc, "history": history, "wall_s": round(time.time() - t0)}, open(f"{out}/probe.json", "w"), indent=1)
print(acc, round(time.time() - t0))
