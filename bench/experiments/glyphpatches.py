"""Which patches of a character card say which letter? A probe trained on the glyph-centre patch (the tower's
label), read on the centre patch and on the other patches the glyph overlaps. args: vision_dir"""
import sys, torch
from transformers import CLIPVisionModel, AutoImageProcessor
from minillava.toyworld import character_card, draw_scene, CHARACTERS, CARD_SIZE
vdir = sys.argv[1]
tower = CLIPVisionModel.from_pretrained(vdir).eval(); proc = AutoImageProcessor.from_pretrained(vdir)
cards = [c for c in (character_card(60_000_000 + i) for i in range(6000)) if c.character][:2400]
P = 8; G = CARD_SIZE // P
with torch.no_grad():
    px = proc([draw_scene(c) for c in cards], return_tensors="pt")["pixel_values"]
    f = torch.cat([tower(px[i:i + 256], output_hidden_states=True).hidden_states[-2][:, 1:] for i in range(0, len(cards), 256)])
centre, others = [], []
for k, c in enumerate(cards):
    x, y = c.char_xy
    cx, cy = int((x + 3) // P), int((y + 6) // P)
    centre.append((k, cy * G + cx))
    for gy in range(int((y + 3) // P), int((y + 9) // P) + 1):  # the glyph spans about (x, y+3)..(x+6, y+9)
        for gx in range(int(x // P), int((x + 6) // P) + 1):
            if (gx, gy) != (cx, cy) and gx < G and gy < G:
                others.append((k, gy * G + gx))
lab = torch.tensor([CHARACTERS.index(c.character) for c in cards])
X = torch.stack([f[k, p] for k, p in centre]); n = 1600
W = torch.zeros(X.shape[1], len(CHARACTERS), requires_grad=True); b = torch.zeros(len(CHARACTERS), requires_grad=True)
mu, sd = X[:n].mean(0), X[:n].std(0) + 1e-5
opt = torch.optim.Adam([W, b], lr=1e-2)
for _ in range(800):
    opt.zero_grad(); torch.nn.functional.cross_entropy(((X[:n] - mu) / sd) @ W + b, lab[:n]).backward(); opt.step()
pred = lambda Z: (((Z - mu) / sd) @ W + b).argmax(-1)
print("centre patch, held out:", (pred(X[n:]) == lab[n:]).float().mean().item())
ho = [(k, p) for k, p in others if k >= n]
Z = torch.stack([f[k, p] for k, p in ho]); L = torch.tensor([lab[k] for k, _ in ho])
print("other glyph patches, held out:", (pred(Z) == L).float().mean().item(), "n", len(ho))
# and does a probe trained on *all* glyph patches read them all?
