"""Can the toy LM learn to find the named object? Stage 2 reduced to its lookup, from perfect or real features.

    python bench/binding_lookup.py [--steps 800] [--batch-size 32] [--lr 3e-4 1e-3] [--suffix 12]
                                   [--features onehot|layout|tower] [--vision-steps 1800]

Each "image" is 64 patch features (an 8x8 grid, like the toy tower's). ``--features`` says which:

- ``onehot`` (default): one to three objects sit on one random patch each, each patch holding its object's
  colour and shape as one-hot entries. The features hold everything, so this measures the language-model side
  alone.
- ``layout``: the same one-hot entries on *every* patch an object covers in a real toy scene (several patches,
  some only partly covered).
- ``tower``: the real toy tower's features of the same scenes (layer -2, padded to a square, as stage 2 sees
  them): what the toy recipe's LM actually gets. ``--vision-steps`` pretrains that tower for longer (or shorter);
  a linear probe of what its features hold is printed first.

A question names one object by one attribute and asks for the other ("colour of the <shape>?" / "shape of the
<colour> one?"), then ``--suffix`` fixed tokens (the toy prompt's format instruction) and an answer position.
The toy LM (a randomly initialised Llama with the toy LM's width and depth) and an ``mlp2x_gelu`` connector
train on the answer's cross-entropy.

With one object there is nothing to find: any object patch holds the answer. With two or three, the answer
position must match the question's attribute against the patches and read the other attribute of the one that
matches (binding). Printed: held-out accuracy by number of objects, every ``steps / 8`` steps, for each
learning rate; chance with n objects is 1/n once the model reads any object. Writes
bench/results/binding_lookup[_layout|_tower[_vision<N>]].json. bench/README.md ("Where binding fails", "The
lookup from the real tower's features", "What the tower's features cost the lookup") quotes it.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minillava.backbones import BackboneSpec, toy_setup
from minillava.connector import build_connector
from minillava.encoder import VisionEncoder
from minillava.evaluate import probe_vision_features
from minillava.toyworld import COLOURS as TOY_COLOURS
from minillava.toyworld import SHAPES as SHAPE_NAMES
from minillava.toyworld import draw_scene, make_scene, patches_on

COLOURS, SHAPES, GRID = 4, 3, 8
# token ids: 0 "colour of", 1 "shape of", 2.. colours, then shapes, then the answer marker and suffix tokens
ASK_COLOUR, ASK_SHAPE, FIRST_COLOUR, FIRST_SHAPE = 0, 1, 2, 2 + COLOURS
ANSWER = FIRST_SHAPE + SHAPES
COLOUR_NAMES = list(TOY_COLOURS)  # the toy world's names, in the order of the colour ids
FEATURES = COLOURS + SHAPES + 1  # one-hot colour, one-hot shape, "an object is here"


def question_about(colour: int, shape: int, suffix: int, rng: random.Random) -> tuple[list[int], int]:
    """Name the object by one attribute, ask for the other: (question ids, answer id)."""
    if rng.random() < 0.5:
        question, answer = [ASK_COLOUR, FIRST_SHAPE + shape], FIRST_COLOUR + colour
    else:
        question, answer = [ASK_SHAPE, FIRST_COLOUR + colour], FIRST_SHAPE + shape
    return question + [ANSWER + 1 + i % 8 for i in range(suffix)] + [ANSWER], answer


def make_batch(rng: random.Random, size: int, suffix: int, n_objects: int | None = None):
    """``size`` synthetic questions: features (B, 64, F), question ids (B, 3 + suffix), answers (B,)."""
    features, questions, answers = torch.zeros(size, GRID * GRID, FEATURES), [], []
    for b in range(size):
        n = n_objects or rng.randint(1, 3)
        objects = list(zip(rng.sample(range(COLOURS), n), rng.sample(range(SHAPES), n),
                           rng.sample(range(GRID * GRID), n)))
        for colour, shape, patch in objects:
            features[b, patch, colour] = features[b, patch, COLOURS + shape] = features[b, patch, -1] = 3.0
        colour, shape, _ = rng.choice(objects)
        question, answer = question_about(colour, shape, suffix, rng)
        questions.append(question)
        answers.append(answer)
    return features, torch.tensor(questions), torch.tensor(answers)


class SceneBank:
    """Toy-world scenes and their patch features (``layout`` or ``tower``), for questions about real layouts.

    The last ``held_out`` scenes are kept for evaluation. ``fast``: the pipeline-check backbones of
    ``toy_setup(fast=True)`` (for tests; their tower is barely trained). ``vision_steps``: a tower pretrained for
    that many steps instead of the default (``toy_setup(vision_steps=...)``).
    """

    def __init__(self, kind: str, n_scenes: int = 6000, held_out: int = 900, fast: bool = False,
                 vision_steps: int | None = None):
        self.scenes = [make_scene(40_000_000 + i) for i in range(n_scenes)]  # never the world's own scenes
        self.held_out = held_out
        if kind == "layout":
            self.features = torch.zeros(n_scenes, GRID * GRID, FEATURES)
            for i, scene in enumerate(self.scenes):
                for t in scene.things:
                    for patch in patches_on(t, scene, GRID):
                        self.features[i, patch, [COLOUR_NAMES.index(t.colour),
                                                 COLOURS + SHAPE_NAMES.index(t.shape), -1]] = 3.0
        else:
            _, vision_dir, _ = toy_setup(fast=fast, progress=False, vision_steps=vision_steps)
            self.encoder = encoder = VisionEncoder.from_pretrained(str(vision_dir))
            assert encoder.num_patches == GRID * GRID, "the toy tower's grid changed: update GRID"
            with torch.no_grad():  # (n_scenes, 64, D), 200 images at a time
                self.features = torch.cat([encoder(encoder.preprocess([draw_scene(s) for s in
                                                                       self.scenes[i:i + 200]], "pad"))
                                           for i in range(0, n_scenes, 200)])

    def batch(self, rng: random.Random, size: int, suffix: int, n_objects: int | None = None, test: bool = False):
        """Like ``make_batch``, from training scenes (or the first held-out ones with ``test``)."""
        first = len(self.scenes) - self.held_out
        pool = range(first, len(self.scenes)) if test else range(first)
        if n_objects is not None:
            pool = [i for i in pool if len(self.scenes[i].things) == n_objects]
        picked = list(pool[:size]) if test else rng.sample(pool, size)
        questions, answers = [], []
        for i in picked:
            t = rng.choice(self.scenes[i].things)
            q, a = question_about(COLOUR_NAMES.index(t.colour), SHAPE_NAMES.index(t.shape), suffix, rng)
            questions.append(q)
            answers.append(a)
        return self.features[picked], torch.tensor(questions), torch.tensor(answers)


def train_lookup(lr: float, steps: int, batch_size: int, suffix: int, seed: int = 0,
                 bank: SceneBank | None = None) -> list[dict]:
    """Train a fresh toy LM + connector on the lookup; held-out accuracy by number of objects over steps.

    ``bank``: questions about real toy scenes and their features; by default the synthetic one-hot images.
    """
    torch.manual_seed(seed)
    spec = BackboneSpec()
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=ANSWER + 9, hidden_size=spec.lm_width,
                                      intermediate_size=4 * spec.lm_width, num_hidden_layers=spec.lm_layers,
                                      num_attention_heads=spec.lm_heads, num_key_value_heads=spec.lm_heads,
                                      max_position_embeddings=256))
    width = bank.features.shape[-1] if bank else FEATURES
    connector = build_connector("mlp2x_gelu", width, spec.lm_width)
    optimizer = torch.optim.AdamW([*lm.parameters(), *connector.parameters()], lr=lr, weight_decay=0.0)
    rng, held_out = random.Random(seed), random.Random(seed + 1)
    tests = {n: bank.batch(held_out, 250, suffix, n, test=True) if bank else make_batch(held_out, 300, suffix, n)
             for n in (1, 2, 3)}

    def answer_logits(features, questions):  # image positions first, then the question, as in LLaVA
        embeds = torch.cat([connector(features), lm.get_input_embeddings()(questions)], dim=1)  # (B, 64 + Q, H)
        return lm(inputs_embeds=embeds).logits[:, -1]  # (B, V): the answer position

    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        features, questions, answers = (bank.batch if bank else make_batch)(rng, batch_size, suffix)
        loss = torch.nn.functional.cross_entropy(answer_logits(features, questions), answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 8) == 0:
            with torch.no_grad():
                accuracy = {n: (answer_logits(f, q).argmax(-1) == a).float().mean().item()
                            for n, (f, q, a) in tests.items()}
            curve.append({"step": step, "questions_seen": step * batch_size, "loss": round(loss.item(), 4),
                          "accuracy": accuracy, "seconds": round(time.perf_counter() - start, 1)})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3])
    parser.add_argument("--suffix", type=int, default=12, help="fixed tokens between question and answer")
    parser.add_argument("--features", choices=["onehot", "layout", "tower"], default="onehot")
    parser.add_argument("--scenes", type=int, default=6000, help="toy scenes for --features layout/tower")
    parser.add_argument("--fast", action="store_true", help="tower: the pipeline-check backbones (tests)")
    parser.add_argument("--vision-steps", type=int, help="tower: pretrain it for this many steps (default 900)")
    args = parser.parse_args()
    bank = None if args.features == "onehot" else \
        SceneBank(args.features, args.scenes, held_out=min(900, args.scenes // 4), fast=args.fast,
                  vision_steps=args.vision_steps)
    runs, probe = {}, None
    if args.features == "tower":  # what the features hold, as `minillava run toy` reports it
        probe = probe_vision_features(bank.encoder, n_scenes=40 if args.fast else 400)
        print(f"tower pretrained for {args.vision_steps or 'the default'} steps; linear probe of an object's "
              f"features: " + ", ".join(f"{k} {v:.0%}" for k, v in probe.items()))
    print(f"features {args.features}, batch {args.batch_size}, suffix {args.suffix}: held-out accuracy with "
          f"1 / 2 / 3 objects")
    print("| learning rate | step | questions seen | 1 object | 2 objects | 3 objects |")
    print("|---|---|---|---|---|---|")
    for lr in args.lr:
        runs[str(lr)] = curve = train_lookup(lr, args.steps, args.batch_size, args.suffix, bank=bank)
        for row in curve:
            a = row["accuracy"]
            print(f"| {lr:g} | {row['step']} | {row['questions_seen']} | {a[1]:.0%} | {a[2]:.0%} | {a[3]:.0%} |",
                  flush=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    name = "binding_lookup" + ("" if args.features == "onehot" else f"_{args.features}") + \
        (f"_vision{args.vision_steps}" if args.features == "tower" and args.vision_steps else "")
    (results / f"{name}.json").write_text(json.dumps({"args": vars(args), "probe": probe, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
