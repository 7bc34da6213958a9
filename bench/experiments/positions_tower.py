"""Throwaway: the toy tower with the object-position label, paired with the shipped LM."""
import json, shutil, sys, time
from pathlib import Path
from minillava.backbones import BackboneSpec, SHIPPED, tower_data, pretrain_vision_tower, save_backbone
from minillava.encoder import VisionEncoder
from minillava.toyworld import ATTRIBUTES
from minillava.toyreport import probe_patches, probe_vision_features
out = Path(sys.argv[1]); spec = BackboneSpec()
t = time.time()
images, labels = tower_data(spec)
print("data", time.time() - t, labels.shape, flush=True)
tower, processor = pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec, True)
print("tower", time.time() - t, flush=True)
if out.exists(): shutil.rmtree(out)
shutil.copytree(SHIPPED, out)
shutil.rmtree(out / "vision")
save_backbone(out / "vision", tower, processor)
enc = VisionEncoder(tower, processor)
print("patches", probe_patches(enc, 400, 0), flush=True)
print("object features", probe_vision_features(enc), flush=True)
