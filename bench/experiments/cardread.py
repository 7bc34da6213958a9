"""Does a trained model read the character on fresh cards (and on full-resolution close-ups of scenes)?"""
import sys, collections, random
from minillava.model import MiniLlava
from minillava.toyworld import character_card, draw_scene, make_scene, character_crop
from minillava.prompts import SHORT_ANSWER
m = MiniLlava.from_pretrained(sys.argv[1]).eval()
cards = [c for c in (character_card(20_000_000 + i) for i in range(400)) if c.character][:100]
ans = m.answer([draw_scene(c) for c in cards], ["What character is printed in the image?"] * len(cards), format_prompt=SHORT_ANSWER, max_new_tokens=4)
print("cards:", sum(a == c.character for a, c in zip(ans, cards)), "/", len(cards), collections.Counter(ans).most_common(5))
rng = random.Random(0)
scenes = [s for s in (make_scene(30_000_000 + i) for i in range(300)) if s.character][:100]
crops = []
for s in scenes:
    x, y = character_crop(s, 64, rng); crops.append(draw_scene(s).crop((x, y, x + 64, y + 64)))
ans = m.answer(crops, ["What character is printed in the image?"] * len(crops), format_prompt=SHORT_ANSWER, max_new_tokens=4)
print("scene close-ups:", sum(a == s.character for a, s in zip(ans, scenes)), "/", len(scenes), collections.Counter(ans).most_common(5))
