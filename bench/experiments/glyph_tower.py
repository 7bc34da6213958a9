"""Experiment (2026-12-04, ninth session): the tower trained on this commit's `backbones.tower_data` (close-ups
as the HD grid lays the scene out, `glyph_close_ups` more around a character, the character labelled on every
patch its glyph covers), optionally with the whole views kept at half of each batch (BALANCE=1, as before the
glyph close-ups joined), then probed on the HD grid's own cells (`toyreport.probe_character`) and saved with
LLM_DIR's LM. args: out llm_dir glyph_close_ups steps"""
import json, os, shutil, sys, time
from dataclasses import asdict, replace
from pathlib import Path
import torch
from minillava.backbones import BackboneSpec, _warmup_cosine, probe_backbones, save_backbone, tiny_vision_tower, tower_data
from minillava.toyworld import ATTRIBUTES
from transformers import AutoTokenizer, LlamaForCausalLM

out, llm_dir, extra, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = replace(BackboneSpec(), vision_steps=steps, glyph_close_ups=extra); t0 = time.time()
images, labels = tower_data(spec)
torch.manual_seed(spec.seed)
tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
pixels = processor(list(images), return_tensors="pt")["pixel_values"]
heads = torch.nn.ModuleList([torch.nn.Linear(spec.vision_width, len(v)) for v in ATTRIBUTES.values()])
opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=spec.vision_lr, weight_decay=0.01)
sched = _warmup_cosine(opt, spec.vision_steps); g = torch.Generator().manual_seed(spec.seed); tower.train()
weights = torch.ones(len(images))
if os.environ.get("BALANCE"):  # tower_data: [whole view, close-up] per tower scene, then the glyph close-ups
    n = 2 * spec.tower_scenes
    weights[0:n:2] = (len(images) - n // 2) / (n // 2)
for step in range(spec.vision_steps):
    batch = torch.multinomial(weights, spec.vision_batch_size, replacement=True, generator=g)
    f = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]; t = labels[batch]
    loss = sum(torch.nn.functional.cross_entropy(h(f).flatten(0, 1), t[..., i].flatten(), ignore_index=-100)
               for i, h in enumerate(heads) if (t[..., i] >= 0).any()) + spec.centre_weight * f.mean(dim=(0, 1)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
tower.eval()
save_backbone(out / "vision", tower, processor)
shutil.copytree(llm_dir, out / "llm", dirs_exist_ok=True)
tok = AutoTokenizer.from_pretrained(llm_dir); lm = LlamaForCausalLM.from_pretrained(llm_dir)
manifest = {"probes": probe_backbones(tower, processor, lm, tok, spec.probe_scenes), "spec": asdict(spec),
            "how_built": "experiment: bench/experiments/glyph_tower.py " + " ".join(sys.argv[1:])}
(out / "manifest.json").write_text(json.dumps(manifest, indent=1))
print(json.dumps(manifest["probes"]["patches"]), round(time.time() - t0))
