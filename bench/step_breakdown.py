"""Where a minillava training step spends its time, and what of it nothing uses.

    python bench/step_breakdown.py [--size small] [--vocab 32000] [--repeats 7]

The stage-2 step of bench/train_step.py (forward + backward + AdamW, fp32 on the CPU, the same batch), and its
parts timed alone, alternating in one process (medians):

- the frozen vision tower as the model runs it (every layer, ``output_hidden_states=True``), and the same
  tower run only up to the layer whose output LLaVA keeps (``hidden_states[-2]``: the last layer's work is
  thrown away, as in the official code and transformers' Llava);
- the splice: image features into the token embeddings (``masked_scatter``), and the cast of the features to
  the embeddings' dtype (a no-op in fp32; a copy under mixed precision).

Writes bench/results/step_breakdown-<size>.json.
"""

import argparse
import json
from pathlib import Path

import torch
from _models import SIZES, alternating_medians, build, training_batch
from train_step import make_step

RESULTS = Path(__file__).parent / "results"


def tower_up_to(encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """The CLIP tower's patch features of ``encoder.feature_layer``, running only the layers that feed it."""
    vision = encoder.tower  # transformers 5: CLIPVisionModel holds embeddings, pre_layrnorm and encoder itself
    n_layers = len(vision.encoder.layers)
    needed = encoder.feature_layer % (n_layers + 1)  # hidden_states[k] is the output of layer k (0: embeddings)
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for layer in vision.encoder.layers[:needed]:
        hidden = layer(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    ours, _ = build(args.size, vocab=args.vocab)
    batch = training_batch(ours)
    pixels, ids = batch["pixel_values"], batch["input_ids"]
    with torch.no_grad():
        full = ours.encoder(pixels)
        assert torch.allclose(full, tower_up_to(ours.encoder, pixels), atol=1e-5), "tower_up_to differs"
        features = ours.image_features(pixels)  # (total image tokens, H)
        embeds = ours.lm.get_input_embeddings()(ids)
        mask = (ids == ours.image_token_id).unsqueeze(-1)

    @torch.no_grad()
    def splice():
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    @torch.no_grad()
    def cast_to_bf16():  # what the splice's cast costs when the LM runs in bf16 and the connector does not
        return features.to(torch.bfloat16)

    parts = {"training step": make_step("minillava", ours, batch),
             "tower, every layer": lambda: ours.encoder(pixels),
             "tower, up to the kept layer": torch.no_grad()(lambda: tower_up_to(ours.encoder, pixels)),
             "splice (masked_scatter)": splice, "features cast to bf16": cast_to_bf16}
    for part in parts.values():  # warm-up
        part()
    medians = alternating_medians(parts, args.repeats)
    step = medians["training step"]
    n_layers = len(ours.encoder.tower.encoder.layers)
    print(f"size {args.size}, vocabulary {ours.lm.config.vocab_size}, tower of {n_layers} layers, "
          f"{len(pixels)} images, {args.repeats} alternating repeats, threads {torch.get_num_threads()}")
    print("| part | median (ms) | share of the training step |")
    print("|---|---|---|")
    for name, t in medians.items():
        print(f"| {name} | {1000 * t:.2f} | {t / step:.1%} |")
    unused = medians["tower, every layer"] - medians["tower, up to the kept layer"]
    print(f"\nunused tower work (its last layer): {1000 * unused:.2f} ms = {unused / step:.1%} of the step")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"step_breakdown-{args.size}.json").write_text(json.dumps(
        {"size": args.size, "vocab": ours.lm.config.vocab_size, "median_s": medians,
         "unused_tower_share": unused / step}, indent=2))


if __name__ == "__main__":
    main()
