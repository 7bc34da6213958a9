"""Upper bound of the connector+LM path: train a trained HD model (stage-2 recipe) only on 64-px close-ups of
scenes where the tower reads the glyph (toyworld.close_up of the v8 draft: bottom of the resized scene, glyph
anywhere across), then ask 100 fresh ones. args: model_dir out steps"""
import sys, json, random, collections
from pathlib import Path

from minillava.toyworld import close_up, make_scene

from minillava.model import MiniLlava
from minillava.toy import RECIPES
from minillava.trainer import Recipe, train
from minillava.prompts import IMAGE, SHORT_ANSWER, with_format_prompt
src, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(out / "images").mkdir(parents=True, exist_ok=True)
rng = random.Random(0); recs = []
q = with_format_prompt("What character is printed in the image?", SHORT_ANSWER)
scenes = (s for s in (make_scene(60_000_000 + i) for i in range(10**6)) if s.character)
for i, s in zip(range(4000), scenes):
    img, _ = close_up(s, 64, rng, around_character=True); img.save(out / "images" / f"c{i}.png")
    recs.append({"id": f"c{i}", "image": f"c{i}.png", "conversations": [{"from": "human", "value": f"{IMAGE}\n{q}"}, {"from": "gpt", "value": s.character}]})
(out / "cu.json").write_text(json.dumps(recs))
m = MiniLlava.from_pretrained(src)
r = Recipe.from_yaml(RECIPES / "toy-stage2.yaml", data=str(out / "cu.json"), image_folder=str(out / "images"))
r.max_steps = steps
train(r, m, out / "run", progress=False)
m.eval()
test = [s for s in (make_scene(61_000_000 + i) for i in range(400)) if s.character][:100]
imgs = [close_up(s, 64, rng, around_character=True)[0] for s in test]
ans = m.answer(imgs, ["What character is printed in the image?"] * 100, format_prompt=SHORT_ANSWER, max_new_tokens=4)
print("fresh close-ups:", sum(a == s.character for a, s in zip(ans, test)), "/ 100", collections.Counter(ans).most_common(6))
