"""More steps of the last phase with the character lookup weighted up. Usage: phase5.py LLM_IN OUT STEPS TEXT_WEIGHT"""
import json, random, sys, time
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.backbones import BackboneSpec, save_backbone, text_lookup_accuracy, train_language_model_phase
from minillava.toyworld import language_corpus, TEXT_LOOKUP_POSITION_MIX

src, out, steps, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.time()
spec = BackboneSpec()
texts = language_corpus(spec.corpus_scenes, spec.seed)
tok = AutoTokenizer.from_pretrained(src); lm = LlamaForCausalLM.from_pretrained(src)
text_ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
history = []
mix = TEXT_LOOKUP_POSITION_MIX + ("text",) * w
train_language_model_phase(lm, tok, text_ids, spec, "+ characters", steps, spec.lm_caption_share, mix, random.Random(5),
                           9500, True, history, spec.lm_position_share)
acc = text_lookup_accuracy(lm, tok, 100, 0)
save_backbone(out, lm.eval(), tok)
json.dump({"text lookup": acc, "history": history, "wall_s": round(time.time() - t0)}, open(f"{out}/probe.json", "w"), indent=1)
print(acc, round(time.time() - t0))
