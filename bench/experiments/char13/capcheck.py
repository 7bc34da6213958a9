import sys, torch, random
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.toyworld import make_scene, text_scene, caption
tok = AutoTokenizer.from_pretrained(sys.argv[1]); lm = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
ok = n = 0
for i in range(60):
    s = make_scene(4 * 10**9 + 5000 + i)
    if not s.character: continue
    ids = tok(text_scene(s, random.Random(i), True, True) + "\n", return_tensors="pt")["input_ids"]
    out = lm.generate(ids, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    n += 1; ok += f"character {s.character} " in text
print("caption names the right character", ok, "/", n, "|", text)
