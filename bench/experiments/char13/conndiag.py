"""Where a trained model's connector puts the glyph patch of the HD cell that shows the character: nearest of the
LM's 23 " character X" input embeddings (and of the 23 letter tokens), and a linear probe on the connector output.
Usage: conndiag.py MODEL_DIR"""
import sys, torch
from minillava.model import MiniLlava
from minillava.toyreport import patch_features, linear_probe
from minillava.toyworld import ATTRIBUTES, CHARACTERS, character_cell, make_scene
m = MiniLlava.from_pretrained(sys.argv[1]).eval(); enc = m.encoder
size, grid = enc.image_size, int(enc.num_patches ** 0.5)
crops, where, labels, i = [], [], [], 0
while len(crops) < 400:
    s = make_scene(8_000_000 + 7 * 100_003 + i); i += 1
    if not s.character: continue
    cell, c = character_cell(s, size, grid, enc.pad_colour)
    if c is None: continue
    crops.append(cell); where.append(c); labels.append(CHARACTERS.index(s.character))
with torch.no_grad():
    f = patch_features(enc, crops)                       # (S, N, D)
    x = f[torch.arange(len(crops)), torch.tensor(where)]  # (S, D)
    y = m.connector(x.to(next(m.connector.parameters()).dtype))  # (S, H)
    E = m.lm.get_input_embeddings().weight
    tok = m.tokenizer
    ids_char = [tok.convert_tokens_to_ids(" character " + c) for c in CHARACTERS]
    ids_letter = [tok(c, add_special_tokens=False)["input_ids"][-1] for c in CHARACTERS]
    lab = torch.tensor(labels)
    for name, ids in (("character X", ids_char), ("letter", ids_letter)):
        if any(j is None or j == tok.unk_token_id for j in ids): print(name, "missing"); continue
        e = torch.nn.functional.normalize(E[ids], dim=-1); yy = torch.nn.functional.normalize(y, dim=-1)
        print(name, "nearest right", round((yy @ e.T).argmax(1).eq(lab).float().mean().item(), 3),
              "mean cos to own", round((yy @ e.T)[torch.arange(len(lab)), lab].mean().item(), 3))
print("probe tower", round(linear_probe(x, lab, 0, 300, classes=23), 3), "probe connector", round(linear_probe(y.float(), lab, 0, 300, classes=23), 3))
