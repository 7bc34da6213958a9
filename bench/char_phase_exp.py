"""Experiment: a fifth LM phase '+ characters' on the shipped LM; writes a backbones folder OUT (shipped vision
+ the new llm). args: out steps text_times"""
import sys, random, time, shutil, torch
from pathlib import Path
from transformers import AutoTokenizer, LlamaForCausalLM
import minillava.toyworld as tw
from minillava import backbones as bb
out, steps, times = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); tw.CHARACTER_IN_TEXT = True
spec = bb.BackboneSpec(); d = bb.SHIPPED / "llm"
tok = AutoTokenizer.from_pretrained(d); lm = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32)
torch.manual_seed(1)
texts = tw.language_corpus(spec.corpus_scenes, spec.seed)
ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
t0 = time.time()
bb.train_language_model_phase(lm, tok, ids, spec, "+ characters", steps, spec.lm_caption_share,
    tw.TEXT_LOOKUP_POSITION_MIX + ("text",) * times, random.Random(1), 0, False, [], spec.lm_position_share)
print("time", time.time() - t0)
acc = bb.text_lookup_accuracy(lm, tok, 100, seed=0)
print("after", {k: round(v, 3) for k, v in acc.items()}, flush=True)
shutil.copytree(bb.SHIPPED / "vision", out / "vision", dirs_exist_ok=True)
shutil.copy(bb.SHIPPED / "manifest.json", out / "manifest.json")
lm.save_pretrained(out / "llm"); tok.save_pretrained(out / "llm")
