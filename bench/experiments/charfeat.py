import random, torch, sys
from minillava.backbones import toy_backbones, SHIPPED
from minillava.encoder import VisionEncoder
from minillava.toyworld import character_crop, draw_scene, make_scene, patch_labels
from transformers import AutoModel, AutoImageProcessor
vdir = sys.argv[1] if len(sys.argv) > 1 else str(SHIPPED / "vision")
enc = VisionEncoder(AutoModel.from_pretrained(vdir), AutoImageProcessor.from_pretrained(vdir))
size, grid = enc.image_size, int(enc.num_patches ** 0.5)
rng = random.Random(0); crops, where, bgmask = [], [], []
i = 0
while len(crops) < 300:
    s = make_scene(8_000_000 + i); i += 1
    if not s.character: continue
    x, y = character_crop(s, size, rng); lab = patch_labels(s, grid, view=(x, y, size), character=True)
    m = [j for j, r in enumerate(lab) if r[3] >= 0]
    if not m: continue
    crops.append(draw_scene(s).crop((x, y, x + size, y + size))); where.append(m[0])
    bgmask.append([all(v < 0 for v in r) for r in lab])
with torch.no_grad():
    f = torch.cat([enc(enc.preprocess(crops[j:j+64], "pad")).float() for j in range(0, len(crops), 64)])  # (S,N,D)
bg = torch.tensor(bgmask)
fb = f[bg]; mu = fb.mean(0)
fc = f[torch.arange(len(crops)), torch.tensor(where)]
print("bg spread", (fb - mu).norm(dim=-1).mean().item(), "char dist from bg mean", (fc - mu).norm(dim=-1).mean().item())
obj = ~bg; obj[torch.arange(len(crops)), torch.tensor(where)] = False
print("object-patch dist from bg mean", (f[obj] - mu).norm(dim=-1).mean().item(), "feature norm", f.norm(dim=-1).mean().item())
# nearest-neighbour presence: is the char patch the farthest-from-bg patch of its crop?
d = (f - mu).norm(dim=-1); d[obj] = -1
print("char patch is the most non-background non-object patch:", (d.argmax(1) == torch.tensor(where)).float().mean().item())
