import sys, torch, collections
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.backbones import lookup_example
from minillava.toyworld import make_scene
tok = AutoTokenizer.from_pretrained(sys.argv[1]); lm = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
c = collections.Counter(); ex = []
for i in range(200):
    seed = 4 * 10**9 + 777 + i
    ex_ = lookup_example(tok, seed, None, ["text"])
    ids = ex_["input_ids"]; labels = ex_["labels"]
    start = next(j for j, l in enumerate(labels) if l != -100)
    with torch.no_grad():
        out = lm.generate(torch.tensor([ids[:start]]), max_new_tokens=4, do_sample=False)
    ans = tok.decode(out[0, start:], skip_special_tokens=True).strip()
    gold = make_scene(seed).character or "none"
    c[(gold == "none", ans == gold, ans == "none")] += 1
    if len(ex) < 12 and gold != "none": ex.append((gold, ans))
print(c); print(ex)
print(tok.convert_ids_to_tokens(lookup_example(tok, 4 * 10**9 + 777 + 1, None, ["text"])["input_ids"])[:60])
