"""Experiment: the tower with a 'printed' (glyph here?) label on every view; writes OUT/{vision,llm,manifest.json}."""
import sys, shutil, time
from pathlib import Path
from minillava import backbones as bb
from minillava.toyworld import ATTRIBUTES
out = Path(sys.argv[1]); spec = bb.BackboneSpec(); t = time.time()
images, labels, weights = bb.tower_data(spec)
print("data", labels.shape, time.time() - t, flush=True)
tower, processor = bb.pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec, progress=False,
                                            weights=weights)
print("trained", time.time() - t, flush=True)
bb.save_backbone(out / "vision", tower, processor)
shutil.copytree(bb.SHIPPED / "llm", out / "llm", dirs_exist_ok=True)
shutil.copy(bb.SHIPPED / "manifest.json", out / "manifest.json")
print("done", time.time() - t, flush=True)
