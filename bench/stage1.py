"""Stage 1 vs stage 2 step time, and what stage 1's two savings buy: no weight gradients for the frozen LM, and
(optionally) vision features cached across epochs instead of recomputed.

    python bench/stage1.py [--size small] [--repeats 7]

Per-sample step time (forward + backward + AdamW) on the same batch, alternating the variants, medians:
- stage 2: connector + LM train;
- stage 1: the connector trains; the LM is frozen (no weight gradients; gradients still flow through it to the
  connector) and the vision tower runs without autograd - what minillava's trainer does;
- stage 1, LM weight grads on: what forgetting to freeze the LM would cost;
- stage 1, cached vision features: the tower's output precomputed once (possible because it is frozen).
Writes bench/results/stage1.json.
"""

import argparse
import json
from pathlib import Path

import torch
from _models import SIZES, alternating_medians, build, training_batch

from minillava.trainer import set_trainable

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model, _ = build(args.size)
    batch = training_batch(model)
    with torch.no_grad():
        cached = model.encoder(batch["pixel_values"])  # (images, N, D): what a feature cache would hold
    encode = model.encoder.forward

    def variant(stage: int, lm_grads: bool = False, cache: bool = False):
        set_trainable(model, stage)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)  # what trains

        def step() -> None:
            set_trainable(model, stage)
            if lm_grads:
                model.lm.requires_grad_(True)
            model.encoder.forward = (lambda pixel_values: cached) if cache else encode
            loss = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"]).loss
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
        return step

    variants = {"stage 2": variant(2), "stage 1": variant(1), "stage 1, LM weight grads on": variant(1, lm_grads=True),
                "stage 1, cached vision features": variant(1, cache=True)}
    model.train()
    for step in variants.values():
        step()  # warm-up
    rows = len(batch["input_ids"])
    per_sample = {name: t / rows for name, t in alternating_medians(variants, args.repeats).items()}
    print(f"size {args.size}, batch of {rows} ({batch['input_ids'].shape[1]} positions), {args.repeats} alternating "
          f"repeats, threads {torch.get_num_threads()}")
    print("| variant | ms per sample | speed-up over stage 2 |")
    print("|---|---|---|")
    for name, t in per_sample.items():
        print(f"| {name} | {1000 * t:.1f} | {per_sample['stage 2'] / t:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stage1.json").write_text(json.dumps({"size": args.size, "seconds_per_sample": per_sample}, indent=2))


if __name__ == "__main__":
    main()
