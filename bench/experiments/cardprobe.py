"""Can a linear probe read the character off the glyph-centre patch from 800 examples (about what stage 2 gives
the connector), on scene close-ups (the character 12 px from the crop bottom, as the tower trained) and on
character cards (anywhere)? args: vision_dir"""
import sys, torch, random
from transformers import CLIPVisionModel, AutoImageProcessor
from minillava.toyworld import character_card, draw_scene, CHARACTERS, make_scene, character_crop
vdir = sys.argv[1]
tower = CLIPVisionModel.from_pretrained(vdir).eval(); proc = AutoImageProcessor.from_pretrained(vdir)
P, G = 8, 8
def feats(imgs):
    with torch.no_grad():
        px = proc(imgs, return_tensors="pt")["pixel_values"]
        return torch.cat([tower(px[i:i+256], output_hidden_states=True).hidden_states[-2][:, 1:] for i in range(0, len(imgs), 256)])
def probe(X, lab, n):
    mu, sd = X[:n].mean(0), X[:n].std(0) + 1e-5
    W = torch.zeros(X.shape[1], 23, requires_grad=True); b = torch.zeros(23, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(800):
        opt.zero_grad(); torch.nn.functional.cross_entropy(((X[:n]-mu)/sd) @ W + b, lab[:n]).backward(); opt.step()
    p = (((X-mu)/sd) @ W + b).argmax(-1)
    return (p[:n]==lab[:n]).float().mean().item(), (p[n:]==lab[n:]).float().mean().item()
rng = random.Random(0)
sc = [s for s in (make_scene(70_000_000+i) for i in range(3000)) if s.character][:1200]
imgs, idx = [], []
for s in sc:
    x, y = character_crop(s, 64, rng); imgs.append(draw_scene(s).crop((x, y, x+64, y+64)))
    idx.append(int((s.char_xy[1]+6-y)//P)*G + int((s.char_xy[0]+3-x)//P))
f = feats(imgs); X = torch.stack([f[k, p] for k, p in enumerate(idx)]); lab = torch.tensor([CHARACTERS.index(s.character) for s in sc])
print("scene crops train/held:", probe(X, lab, 800))
cards = [c for c in (character_card(60_000_000+i) for i in range(3000)) if c.character][:1200]
f = feats([draw_scene(c) for c in cards])
X = torch.stack([f[k, int((c.char_xy[1]+6)//P)*G + int((c.char_xy[0]+3)//P)] for k, c in enumerate(cards)]); lab = torch.tensor([CHARACTERS.index(c.character) for c in cards])
print("cards train/held:", probe(X, lab, 800))
