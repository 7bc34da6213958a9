"""Which pretraining teaches the toy vision tower *what is where*? Random vs tagging vs patch labels (the default).

    python bench/tower_objectives.py [--fast]

Three towers of the toy size, probed the way `minillava run toy` probes its tower (`probe_vision_features`: a
linear classifier on each object's own patch features, fresh scenes):

- **random**: no pretraining at all;
- **tagging**: the toy tower's objective until 2026-11-28: each image's score for a tag ("large red circle",
  "character A") is the best of its patches. The best patch can be *any* patch, so nothing makes an object's own
  patches say what it is;
- **patch labels**: the default toy tower (`backbones.pretrain_vision_tower`): every patch whose centre lies on an
  object classifies that object's colour, shape and size (and, in close-ups, the character).

Tagging and patch labels see the same images (`backbones.tower_data`) for the same steps and batch.
Writes bench/results/tower_objectives.json. bench/README.md ("Where binding fails") quotes it.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minillava.backbones import BackboneSpec, tiny_vision_tower, tower_data, toy_setup
from minillava.encoder import VisionEncoder
from minillava.evaluate import probe_vision_features
from minillava.toyworld import ATTRIBUTES


def tags_from(labels: torch.Tensor) -> torch.Tensor:
    """(S, N, 4) patch labels -> (S, T) multi-hot image tags: every (colour, shape, size) object and every
    character that some patch of the image shows."""
    sizes = [len(v) for v in ATTRIBUTES.values()]
    objects = (labels[..., 0] * sizes[1] + labels[..., 1]) * sizes[2] + labels[..., 2]  # (S, N) object id
    tags = torch.zeros(len(labels), sizes[0] * sizes[1] * sizes[2] + sizes[3])
    for i in range(len(labels)):
        on = labels[i, :, 0] >= 0
        tags[i, objects[i][on]] = 1
        tags[i, sizes[0] * sizes[1] * sizes[2] + labels[i, :, 3][labels[i, :, 3] >= 0]] = 1
    return tags


def pretrain_by_tagging(images, labels: torch.Tensor, spec: BackboneSpec) -> VisionEncoder:
    """The toy tower trained on image tags scored by their best patch (binary cross-entropy), the old default."""
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    pixels = processor(list(images), return_tensors="pt")["pixel_values"]
    targets = tags_from(labels)
    head = torch.nn.Linear(spec.vision_width, targets.shape[1])
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(spec.seed)
    tower.train()
    for _ in tqdm(range(spec.vision_steps), desc="tagging"):
        batch = torch.randint(0, len(images), (spec.vision_batch_size,), generator=generator)
        features = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]  # (B, N, D)
        scores = head(features).amax(dim=1)  # (B, tags): the best patch for each tag
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, targets[batch])
        loss = loss + spec.centre_weight * features.mean(dim=(0, 1)).pow(2).mean()  # as the default tower
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return VisionEncoder(tower.eval(), processor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny budgets (checks the script only)")
    args = parser.parse_args()
    spec = BackboneSpec(vision_steps=5, lm_steps=5) if args.fast else BackboneSpec()
    probe_scenes = 40 if args.fast else 400
    _, vision_dir, _ = toy_setup(fast=args.fast, progress=False)  # the default (patch-label) tower, built or cached
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    random_tower = VisionEncoder(tower.eval(), processor)
    start = time.perf_counter()
    tagging_tower = pretrain_by_tagging(*tower_data(spec), spec)
    seconds = time.perf_counter() - start
    towers = {"random": random_tower, "tagging": tagging_tower,
              "patch labels (the default)": VisionEncoder.from_pretrained(str(vision_dir))}
    rows = {name: probe_vision_features(encoder, n_scenes=probe_scenes) for name, encoder in towers.items()}
    print(f"{spec.vision_steps} steps of {spec.vision_batch_size} images; tagging took {seconds:.0f} s")
    print("| tower | colour | shape | size |")
    print("|---|---|---|---|")
    for name, probe in rows.items():
        print(f"| {name} | {probe['colour']:.0%} | {probe['shape']:.0%} | {probe['size']:.0%} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "tower_objectives.json").write_text(json.dumps({"spec": vars(spec), "probe": rows}, indent=2))


if __name__ == "__main__":
    main()
