import sys, time, torch
from minillava.backbones import BackboneSpec, tower_data, pretrain_vision_tower
from minillava.encoder import VisionEncoder
from minillava.evaluate import probe_patches
from minillava.toyworld import ATTRIBUTES
torch.set_num_threads(int(sys.argv[1]))
kw = {k: type(getattr(BackboneSpec(), k))(v) for k, v in (a.split("=") for a in sys.argv[3:])}
spec = BackboneSpec(**kw)
t = time.time()
images, labels = tower_data(spec)
print("data", time.time() - t, flush=True)
tower, proc = pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec, progress=False)
print("train", time.time() - t, flush=True)
print(sys.argv[2], kw, probe_patches(VisionEncoder(tower, proc), 400, seed=1), time.time() - t, flush=True)
torch.save(tower.state_dict(), f"/tmp/exp/tower_{sys.argv[2]}.pt")
