"""Experiment (run at de49d74, with its bench/experiments on PYTHONPATH): is the tower's letter reading limited by how many glyphs it sees? hdview_tower's data plus
``extra`` HD-view close-ups that each hold a character anywhere (labelled on every patch its glyph covers).
Reports the tower's own character head on held-out close-ups (glyph anywhere) and a linear probe from 800.
args: out llm_dir extra steps"""
import json, random, shutil, sys, time
from dataclasses import asdict, replace
from pathlib import Path
import torch
from PIL import Image
from minillava.backbones import (BackboneSpec, _warmup_cosine, save_backbone, tiny_vision_tower, probe_backbones)
from minillava.hd import HDConfig, choose_grid, fitted_size
from minillava.toyworld import ATTRIBUTES, CHARACTERS, draw_scene, make_scene, patch_labels
from transformers import AutoTokenizer, LlamaForCausalLM
sys.path.insert(0, str(Path(__file__).parent))
from hdview_tower import hdview_data

SIZE, GRID = 64, 8

def char_crop(scene, rng):
    """An HD-grid cell around the scene's character (anywhere in it), its labels and the glyph-centre patch."""
    image = draw_scene(scene)
    cells = choose_grid(scene.width, scene.height, SIZE, HDConfig(max_cells=4).grid_list())
    w, h = fitted_size(scene.width, scene.height, cells, SIZE)
    s = w / scene.width
    big = image.resize((w, h), Image.BICUBIC) if s != 1 else image
    cx, cy = (scene.char_xy[0] + 3) * s, (scene.char_xy[1] + 6) * s
    x = int(min(max(0, cx - rng.uniform(4, SIZE - 4)), w - SIZE)); y = int(min(max(0, cy - rng.uniform(4, SIZE - 4)), h - SIZE))
    view = (x / s, y / s, SIZE / s); left, top, side = view
    lab = patch_labels(scene, GRID, view=view, character=True)
    k = ATTRIBUTES["character"].index(scene.character); x0, y0 = scene.char_xy
    for gy in range(int((y0 + 3 - top) * GRID / side), int((y0 + 9 - top) * GRID / side) + 1):
        for gx in range(int((x0 + 1 - left) * GRID / side), int((x0 + 6 - left) * GRID / side) + 1):
            if 0 <= gx < GRID and 0 <= gy < GRID:
                lab[gy * GRID + gx][3] = k
    centre = int((y0 + 6 - top) * GRID / side) * GRID + int((x0 + 3 - left) * GRID / side)
    return big.crop((x, y, x + SIZE, y + SIZE)), lab, centre, k

def train(images, labels, spec):
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    pixels = processor(list(images), return_tensors="pt")["pixel_values"]
    heads = torch.nn.ModuleList([torch.nn.Linear(spec.vision_width, len(v)) for v in ATTRIBUTES.values()])
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=spec.vision_lr, weight_decay=0.01)
    sched = _warmup_cosine(opt, spec.vision_steps); g = torch.Generator().manual_seed(spec.seed); tower.train()
    # BALANCE=1: the whole views (even indices of hdview_data's first 2 * tower_scenes) drawn half of the time, as
    # before the glyph close-ups joined
    import os
    weights = torch.ones(len(images))
    if os.environ.get("BALANCE"):
        n = 2 * spec.tower_scenes
        weights[0:n:2] = (len(images) - n // 2) / (n // 2)
    for step in range(spec.vision_steps):
        batch = torch.multinomial(weights, spec.vision_batch_size, replacement=True, generator=g) if os.environ.get("BALANCE") else torch.randint(0, len(images), (spec.vision_batch_size,), generator=g)
        f = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]; t = labels[batch]
        loss = sum(torch.nn.functional.cross_entropy(h(f).flatten(0, 1), t[..., i].flatten(), ignore_index=-100)
                   for i, h in enumerate(heads) if (t[..., i] >= 0).any()) + spec.centre_weight * f.mean(dim=(0, 1)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 2000 == 0: print("step", step, round(loss.item(), 3), flush=True)
    return tower.eval(), processor, heads

def read_test(tower, processor, heads, n=1200):
    rng = random.Random(5)
    sc = [s for s in (make_scene(80_000_000 + i) for i in range(3 * n)) if s.character][:n]
    crops = [char_crop(s, rng) for s in sc]
    with torch.no_grad():
        px = processor([c[0] for c in crops], return_tensors="pt")["pixel_values"]
        f = torch.cat([tower(px[i:i + 256], output_hidden_states=True).hidden_states[-2][:, 1:] for i in range(0, n, 256)])
    X = torch.stack([f[j, c[2]] for j, c in enumerate(crops)]); lab = torch.tensor([c[3] for c in crops])
    head = (heads[3](X).argmax(-1) == lab).float().mean().item()
    mu, sd = X[:800].mean(0), X[:800].std(0) + 1e-5
    W = torch.zeros(X.shape[1], 23, requires_grad=True); b = torch.zeros(23, requires_grad=True)
    o = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(800):
        o.zero_grad(); torch.nn.functional.cross_entropy(((X[:800] - mu) / sd) @ W + b, lab[:800]).backward(); o.step()
    probe = ((((X[800:] - mu) / sd) @ W + b).argmax(-1) == lab[800:]).float().mean().item()
    return {"head, glyph-centre patch, held-out HD cells": head, "probe from 800, held out": probe}

if __name__ == "__main__":
    out, llm_dir, extra, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    spec = replace(BackboneSpec(), vision_steps=steps); t0 = time.time()
    import os
    if os.environ.get("LIBDATA"):  # the draft library's tower_data (PYTHONPATH=/work/main): HD-grid canvases
        from minillava.backbones import tower_data
        images, labels = tower_data(replace(spec, glyph_close_ups=extra)); extra = 0; labels = labels.tolist()
    else:
        images, labels = hdview_data(spec); labels = labels.tolist()
    rng = random.Random(1); i = 0
    while extra > 0:
        s = make_scene(2 * 10**9 + i); i += 1
        if s.character:
            img, lab, _, _ = char_crop(s, rng); images.append(img); labels.append(lab); extra -= 1
    labels = torch.tensor(labels)
    print("data", len(images), round(time.time() - t0), flush=True)
    tower, processor, heads = train(images, labels, spec)
    print("tower trained", round(time.time() - t0), flush=True)
    print(json.dumps(read_test(tower, processor, heads)), flush=True)
    from minillava.encoder import VisionEncoder
    from minillava.toyreport import probe_character
    print("probe_character (HD cells):", probe_character(VisionEncoder(tower, processor), 800, seed=5), flush=True)
    if len(sys.argv) > 5: sys.exit()  # pilot: the reading test only
    save_backbone(out / "vision", tower, processor)
    shutil.copytree(llm_dir, out / "llm", dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(llm_dir); lm = LlamaForCausalLM.from_pretrained(llm_dir)
    manifest = {"probes": probe_backbones(tower, processor, lm, tok, spec.probe_scenes), "spec": asdict(spec),
                "how_built": "experiment: bench/experiments/glyph_tower.py " + " ".join(sys.argv[1:])}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest["probes"]["patches"]), round(time.time() - t0))
