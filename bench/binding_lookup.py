"""Can the toy LM learn to find the named object? Stage 2 reduced to its lookup, with perfect image features.

    python bench/binding_lookup.py [--steps 800] [--batch-size 32] [--lr 3e-4 1e-3] [--suffix 12]

Each "image" is 64 patch features (an 8x8 grid, like the toy tower's). One to three objects sit on random
patches, each patch holding its object's colour and shape as one-hot entries: the features hold everything, so
this measures the language-model side alone. A question names one object by one attribute and asks for the
other ("colour of the <shape>?" / "shape of the <colour> one?"), then ``--suffix`` fixed tokens (the toy prompt's
format instruction) and an answer position. The toy LM (a randomly initialised Llama with the toy LM's width
and depth) and an ``mlp2x_gelu`` connector train on the answer's cross-entropy.

With one object there is nothing to find: any object patch holds the answer. With two or three, the answer
position must match the question's attribute against the patches and read the other attribute of the one that
matches (binding). Printed: held-out accuracy by number of objects, every ``steps / 8`` steps, for each
learning rate; chance with n objects is 1/n once the model reads any object. Writes
bench/results/binding_lookup.json. bench/README.md ("Where binding fails") quotes it.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minillava.backbones import BackboneSpec
from minillava.connector import build_connector

COLOURS, SHAPES, GRID = 4, 3, 8
# token ids: 0 "colour of", 1 "shape of", 2.. colours, then shapes, then the answer marker and suffix tokens
ASK_COLOUR, ASK_SHAPE, FIRST_COLOUR, FIRST_SHAPE = 0, 1, 2, 2 + COLOURS
ANSWER = FIRST_SHAPE + SHAPES
FEATURES = COLOURS + SHAPES + 1  # one-hot colour, one-hot shape, "an object is here"


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
        if rng.random() < 0.5:
            question, answer = [ASK_COLOUR, FIRST_SHAPE + shape], FIRST_COLOUR + colour
        else:
            question, answer = [ASK_SHAPE, FIRST_COLOUR + colour], FIRST_SHAPE + shape
        questions.append(question + [ANSWER + 1 + i % 8 for i in range(suffix)] + [ANSWER])
        answers.append(answer)
    return features, torch.tensor(questions), torch.tensor(answers)


def train_lookup(lr: float, steps: int, batch_size: int, suffix: int, seed: int = 0) -> list[dict]:
    """Train a fresh toy LM + connector on the lookup; held-out accuracy by number of objects over steps."""
    torch.manual_seed(seed)
    spec = BackboneSpec()
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=ANSWER + 9, hidden_size=spec.lm_width,
                                      intermediate_size=4 * spec.lm_width, num_hidden_layers=spec.lm_layers,
                                      num_attention_heads=spec.lm_heads, num_key_value_heads=spec.lm_heads,
                                      max_position_embeddings=256))
    connector = build_connector("mlp2x_gelu", FEATURES, spec.lm_width)
    optimizer = torch.optim.AdamW([*lm.parameters(), *connector.parameters()], lr=lr, weight_decay=0.0)
    rng, held_out = random.Random(seed), random.Random(seed + 1)
    tests = {n: make_batch(held_out, 300, suffix, n) for n in (1, 2, 3)}

    def answer_logits(features, questions):  # image positions first, then the question, as in LLaVA
        embeds = torch.cat([connector(features), lm.get_input_embeddings()(questions)], dim=1)  # (B, 64 + Q, H)
        return lm(inputs_embeds=embeds).logits[:, -1]  # (B, V): the answer position

    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        features, questions, answers = make_batch(rng, batch_size, suffix)
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
    args = parser.parse_args()
    runs = {}
    print(f"batch {args.batch_size}, suffix {args.suffix}: held-out accuracy with 1 / 2 / 3 objects")
    print("| learning rate | step | questions seen | 1 object | 2 objects | 3 objects |")
    print("|---|---|---|---|---|---|")
    for lr in args.lr:
        runs[str(lr)] = curve = train_lookup(lr, args.steps, args.batch_size, args.suffix)
        for row in curve:
            a = row["accuracy"]
            print(f"| {lr:g} | {row['step']} | {row['questions_seen']} | {a[1]:.0%} | {a[2]:.0%} | {a[3]:.0%} |",
                  flush=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "binding_lookup.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
