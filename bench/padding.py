"""Padding: the share of batch positions that are padding over one epoch of the toy stage-2 mix, random batches
vs LLaVA-1.5's modality-length grouped sampler.

    python bench/padding.py [--train-images 5000] [--batch-sizes 4,16,64]

Lengths are the exact token counts of each sample (image tokens included), as the trainer's dataset computes
them. Writes bench/results/padding.json.
"""

import argparse
import json
from pathlib import Path

import torch

from minillava.backbones import toy_setup
from minillava.data import LlavaDataset, load_records, modality_length_groups, padding_share
from minillava.model import MiniLlava

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--batch-sizes", default="4,16,64")
    parser.add_argument("--fast", action="store_true", help="the tiny toy world (for the test suite)")
    args = parser.parse_args()
    world, vision_dir, llm_dir = toy_setup(args.train_images, 100, fast=args.fast, progress=False)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
    records = load_records(world / "stage2.json")
    dataset = LlavaDataset(records, model.tokenizer, model.image_token_id, lambda im: model.prepare_image(im, "pad"),
                           image_folder=world / "images", image_tokens_estimate=model.encoder.num_features)
    lengths = dataset.lengths  # > 0 image samples, < 0 text-only
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(lengths), generator=generator).tolist()
        random_batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
        grouped = modality_length_groups(lengths, batch_size, generator)
        llava = modality_length_groups(lengths, batch_size, generator, mega_batches=1)  # LLaVA's exact rule
        mixed = sum(len({lengths[i] > 0 for i in b}) > 1 for b in random_batches)
        rows.append({"batch": batch_size, "random": padding_share(random_batches, lengths),
                     "grouped": padding_share(grouped, lengths), "llava": padding_share(llava, lengths),
                     "random_mixed_batches": mixed})
    print(f"toy stage-2 mix: {len(lengths)} samples ({sum(n < 0 for n in lengths)} text-only), "
          f"lengths {min(map(abs, lengths))}-{max(map(abs, lengths))} tokens")
    print("| batch | random batches | LLaVA's grouping (sorted per global batch) | minillava's grouping "
          "(sorted per 50 global batches) | random batches mixing modalities |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['random']:.1%} | {r['llava']:.1%} | {r['grouped']:.1%} | "
              f"{r['random_mixed_batches']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "padding.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
