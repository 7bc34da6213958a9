"""The character probe on the HD grid's own cells, split by canvas (square: full resolution; 160x128 and 128x160:
0.8, the glyph mid-cell in 160x128). args: [vision_dir]"""
import torch, collections
from minillava.encoder import VisionEncoder
from minillava.toyreport import linear_probe
from minillava.toyworld import ATTRIBUTES, character_cell, make_scene
from transformers import CLIPVisionModel, AutoImageProcessor
import sys; d = sys.argv[1] if len(sys.argv) > 1 else 'minillava/toy_backbones/vision'; enc=VisionEncoder(CLIPVisionModel.from_pretrained(d), AutoImageProcessor.from_pretrained(d))
crops, where, labels, kinds = [], [], [], []
i=0
while len(crops) < 1200:
    s = make_scene(8_000_000 + 5 * 100_003 + i); i += 1
    if not s.character: continue
    cell, c = character_cell(s, 64, 8, enc.pad_colour)
    if c is None: continue
    crops.append(cell); where.append(c); labels.append(ATTRIBUTES["character"].index(s.character)); kinds.append((s.width, s.height))
with torch.no_grad():
    P = torch.cat([enc(enc.preprocess(crops[j:j+64], "pad")).float() for j in range(0, len(crops), 64)])
x = P[torch.arange(len(crops)), torch.tensor(where)]; y = torch.tensor(labels)
print("all", linear_probe(x, y, 0, 300, classes=23))
for k in set(kinds):
    idx = [j for j, kk in enumerate(kinds) if kk == k]
    print(k, len(idx), linear_probe(x[idx], y[idx], 0, 300, classes=23))
print(collections.Counter(divmod(w, 8)[0] for w in where))
