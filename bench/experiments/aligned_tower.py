"""Experiment: a toy tower whose patch heads are the shipped LM's own (frozen) word embeddings, CLIP-style.

Each attribute value (" red", " circle", " small", " K", " top left") is the mean of the LM's input embeddings of
its tokens; one shared linear map P takes a patch feature into the LM's embedding space and the logits are the
cosines with the candidates times a learnt temperature. So the features say what is there *in the LM's words*,
through one map for every attribute: does a connector fitted on objects then carry the character too?
args: out [steps]"""
import json, shutil, sys, time
from dataclasses import asdict, replace
from pathlib import Path
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.backbones import (SHIPPED, BackboneSpec, _warmup_cosine, save_backbone, tiny_vision_tower,
                                 tower_data, probe_backbones)
from minillava.toyworld import ATTRIBUTES

out = Path(sys.argv[1]); spec = BackboneSpec()
if len(sys.argv) > 2:
    spec = replace(spec, vision_steps=int(sys.argv[2]))
t0 = time.time()
tok = AutoTokenizer.from_pretrained(SHIPPED / "llm"); lm = LlamaForCausalLM.from_pretrained(SHIPPED / "llm")
emb = lm.get_input_embeddings().weight.detach()
cands = [torch.stack([emb[tok(" " + v, add_special_tokens=False)["input_ids"]].mean(0) for v in vals])
         for vals in ATTRIBUTES.values()]  # (values, lm_width) each
cands = [torch.nn.functional.normalize(c, dim=-1) for c in cands]
images, labels = tower_data(spec)
torch.manual_seed(spec.seed)
tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
pixels = processor(list(images), return_tensors="pt")["pixel_values"]
proj = torch.nn.Linear(spec.vision_width, emb.shape[1])
log_temp = torch.nn.Parameter(torch.tensor(2.6))  # CLIP's 1/0.07
opt = torch.optim.AdamW([*tower.parameters(), *proj.parameters(), log_temp], lr=spec.vision_lr, weight_decay=0.01)
sched = _warmup_cosine(opt, spec.vision_steps)
g = torch.Generator().manual_seed(spec.seed)
tower.train()
bar = tqdm(range(spec.vision_steps), mininterval=30)
for step in bar:
    batch = torch.randint(0, len(images), (spec.vision_batch_size,), generator=g)
    feats = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]  # (B, N, D)
    z = torch.nn.functional.normalize(proj(feats), dim=-1)  # (B, N, lm_width)
    t = labels[batch]
    loss = sum(torch.nn.functional.cross_entropy((z @ c.T * log_temp.exp()).flatten(0, 1), t[..., i].flatten(),
                                                 ignore_index=-100)
               for i, c in enumerate(cands) if (t[..., i] >= 0).any())
    loss = loss + spec.centre_weight * feats.mean(dim=(0, 1)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    bar.set_postfix(loss=f"{loss.item():.3f}")
tower.eval()
print("tower trained", round(time.time() - t0), flush=True)
save_backbone(out / "vision", tower, processor)
shutil.copytree(SHIPPED / "llm", out / "llm", dirs_exist_ok=True)
manifest = json.loads((SHIPPED / "manifest.json").read_text())
manifest["probes"] = probe_backbones(tower, processor, lm, tok, spec.probe_scenes)
manifest["spec"] = asdict(spec)
manifest["how_built"] = "experiment: bench/experiments/aligned_tower.py (LM-aligned heads) + shipped LM"
(out / "manifest.json").write_text(json.dumps(manifest, indent=1))
print(json.dumps(manifest["probes"]["patches"], indent=1), round(time.time() - t0))
