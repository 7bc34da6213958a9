"""Nearest LM object token (" red circle") to the connector output at an object's centre patch (base view)."""
import sys, torch
from minillava.model import MiniLlava
from minillava.toyreport import patch_features
from minillava.toyworld import make_scene, draw_scene, patches_on, COLOURS, SHAPES
from minillava.hd import HDConfig
m = MiniLlava.from_pretrained(sys.argv[1]).eval(); enc = m.encoder; tok = m.tokenizer
grid = int(enc.num_patches ** 0.5)
names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
ids = [tok.convert_tokens_to_ids(" " + n) for n in names]
imgs, idx, lab = [], [], []
for i in range(300):
    s = make_scene(9_000_000 + i)
    t = s.things[0]; p = patches_on(t, s, grid)
    if not p: continue
    from PIL import Image
    im = draw_scene(s); side = max(im.size); sq = Image.new("RGB", (side, side), enc.pad_colour); sq.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    imgs.append(sq); idx.append(p[len(p) // 2]); lab.append(names.index(t.name))
with torch.no_grad():
    f = patch_features(enc, imgs); x = f[torch.arange(len(imgs)), torch.tensor(idx)]
    y = torch.nn.functional.normalize(m.connector(x), dim=-1); e = torch.nn.functional.normalize(m.lm.get_input_embeddings().weight[ids], dim=-1)
    lab = torch.tensor(lab); sim = y @ e.T
    print("object nearest right", round(sim.argmax(1).eq(lab).float().mean().item(), 3), "cos own", round(sim[torch.arange(len(lab)), lab].mean().item(), 3), "cos mean other", round(sim.mean().item(), 3))
