"""Does the stage-1 connector (with close-up captions) caption a fresh close-up's character?"""
import random, sys, collections
import torch
from pathlib import Path
from safetensors.torch import load_file
from minillava.model import MiniLlava
from minillava.toyworld import make_scene, close_up
from minillava.encoder import mean_colour
torch.set_num_threads(2)
bb = Path("/tmp/exp14/bb"); s1 = Path(sys.argv[1])
model = MiniLlava.from_backbones(str(bb / "vision"), str(bb / "llm"))
state = load_file(str(s1 / "connector.safetensors"))
model.connector.load_state_dict({k.removeprefix("connector."): t for k, t in state.items()})
model.eval()
rng = random.Random(5); right = n = 0; outs = collections.Counter()
imgs, truth = [], []
for i in range(400):
    sc = make_scene(777_000_000 + i)
    if not sc.character: continue
    cu, _ = close_up(sc, 64, rng, around_character=True, fill=mean_colour((0.48145466, 0.4578275, 0.40821073)))
    imgs.append(cu); truth.append(sc.character)
    if len(imgs) == 100: break
ans = []
for k in range(0, 100, 20):
    ans += model.answer(imgs[k:k+20], ["Render a clear and concise summary of the photo."] * 20)
for a, t in zip(ans, truth):
    right += f"character {t} " in a
    outs[a[:45]] += 1
print("stage-1 caption names the right character:", right, "of", len(truth)); print(outs.most_common(6))
