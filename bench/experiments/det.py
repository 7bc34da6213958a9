"""Is the LM's pretraining deterministic run to run on one machine and one set of library versions?
Phase 1 of the default build, to step 500, twice; the text-lookup scores at steps 250 and 500."""
import torch, transformers, tokenizers
from minillava import backbones as bb
from minillava.toyworld import language_corpus, object_phrases
class Stop(Exception): pass
spec = bb.BackboneSpec()
texts = language_corpus(spec.corpus_scenes, spec.seed)
real = bb.text_lookup_accuracy
def run():
    tok = bb.train_tokenizer(texts + bb._template_text(), vocab_size=spec.vocab_size, phrases=object_phrases())
    hist = []
    calls = {"n": 0}
    def acc(*a, **k):
        calls["n"] += 1
        r = real(*a, **k)
        if calls["n"] == 2:
            hist.append(r); raise Stop
        return r
    bb.text_lookup_accuracy = acc
    try:
        bb.pretrain_language_model(tok, texts, spec, False, hist)
    except Stop:
        pass
    return [{k: round(v, 3) for k, v in h.items() if k != "step"} for h in hist]
print(torch.__version__, transformers.__version__, tokenizers.__version__, torch.get_num_threads())
a = run(); print("A", a, flush=True)
b = run(); print("B", b)
print("identical:", a == b)
