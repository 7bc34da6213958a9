"""Experiment: the tower's close-ups as the HD grid shows them: the scene at the grid's scale (0.8 for the
non-square canvases under a 2 x 2 grid, 1.0 for square ones), cropped with the character anywhere in the cell
(before: always 12 pixels from the crop's bottom, native scale only), and the character labelled on every patch
its glyph covers. args: out llm_dir [steps]"""
import json, random, shutil, sys, time
from dataclasses import asdict, replace
from pathlib import Path
import torch
from PIL import Image
from minillava.backbones import (BackboneSpec, pretrain_vision_tower, save_backbone, tiny_vision_tower, tower_scenes,
                                 probe_backbones)
from minillava.encoder import expand_to_square, mean_colour
from minillava.hd import HDConfig, choose_grid, fitted_size
from minillava.toyworld import ATTRIBUTES, draw_scene, patch_labels
from transformers import AutoTokenizer, LlamaForCausalLM

def hdview_data(spec):
    """The tower's images and labels, with HD-grid close-ups (see the module's docstring)."""
    _, processor = tiny_vision_tower(spec.image_size, spec.patch_size)
    pad, grid, size = mean_colour(processor.image_mean), spec.image_size // spec.patch_size, spec.image_size
    images, labels = [], []
    rng = random.Random(spec.seed)
    for scene in tower_scenes(spec):
        image = draw_scene(scene)
        images.append(expand_to_square(image, pad)); labels.append(patch_labels(scene, grid))
        cells = choose_grid(scene.width, scene.height, size, HDConfig(max_cells=4).grid_list())
        w, h = fitted_size(scene.width, scene.height, cells, size)
        s = w / scene.width
        big = image.resize((w, h), Image.BICUBIC) if s != 1 else image
        if scene.character and rng.random() < 0.7:  # the character anywhere in the crop
            cx, cy = (scene.char_xy[0] + 3) * s, (scene.char_xy[1] + 6) * s
            x = int(min(max(0, cx - rng.uniform(4, size - 4)), w - size)); y = int(min(max(0, cy - rng.uniform(4, size - 4)), h - size))
        else:
            x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        images.append(big.crop((x, y, x + size, y + size)))
        view = (x / s, y / s, size / s)
        lab = patch_labels(scene, grid, view=view, character=True)
        if scene.character:  # every patch the glyph covers, not only its centre's
            left, top, side = view
            k = ATTRIBUTES["character"].index(scene.character)
            x0, y0 = scene.char_xy
            for gy in range(int((y0 + 3 - top) * grid / side), int((y0 + 9 - top) * grid / side) + 1):
                for gx in range(int((x0 + 1 - left) * grid / side), int((x0 + 6 - left) * grid / side) + 1):
                    if 0 <= gx < grid and 0 <= gy < grid:
                        lab[gy * grid + gx][3] = k
        labels.append(lab)
    return images, torch.tensor(labels)


if __name__ == "__main__":
    out, llm_dir = Path(sys.argv[1]), Path(sys.argv[2]); spec = BackboneSpec()
    if len(sys.argv) > 3:
        spec = replace(spec, vision_steps=int(sys.argv[3]))
    t0 = time.time()
    images, labels = hdview_data(spec)
    print("data", round(time.time() - t0), flush=True)
    tower, processor = pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec,
                                             progress=False)
    print("tower trained", round(time.time() - t0), flush=True)
    save_backbone(out / "vision", tower, processor)
    shutil.copytree(llm_dir, out / "llm", dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(llm_dir); lm = LlamaForCausalLM.from_pretrained(llm_dir)
    manifest = json.loads((llm_dir.parent / "manifest.json").read_text()) if (llm_dir.parent / "manifest.json").exists() else {}
    manifest["probes"] = probe_backbones(tower, processor, lm, tok, spec.probe_scenes)
    manifest["spec"] = asdict(spec); manifest["how_built"] = "experiment: bench/experiments/hdview_tower.py"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest["probes"]["patches"]), round(time.time() - t0))
