"""Which pretraining teaches the toy vision tower *what is where*? Random vs tagging (the default) vs patch labels.

    python bench/tower_objectives.py [--fast]

Three towers of the toy size, probed the way `minillava run toy` probes its tower (`probe_vision_features`: a
linear classifier on each object's own patch features, fresh scenes):

- **random**: no pretraining at all;
- **tagging**: the default toy tower (`backbones.pretrain_vision_tower`): each image's score for a tag ("large
  red circle") is the best of its patches. The best patch can be *any* patch, so nothing makes an object's own
  patches say what it is;
- **patch labels**: the same tower, the same steps and batch, trained so that every patch whose centre lies on an
  object classifies that object's colour, shape and size (padded images, as stage 2 sees them).

Writes bench/results/tower_objectives.json. bench/README.md ("Where binding fails") quotes it.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minillava.backbones import BackboneSpec, tiny_vision_tower, tower_scenes, toy_setup
from minillava.encoder import VisionEncoder, expand_to_square, mean_colour
from minillava.evaluate import probe_vision_features
from minillava.toyworld import COLOURS, SHAPES, SIZES, draw_scene, patches_on


def patch_labels(scene, grid: int) -> torch.Tensor:
    """(grid * grid, 3): colour, shape and size index of the object under each patch centre; -100 elsewhere."""
    labels = torch.full((grid * grid, 3), -100)
    for t in scene.things:
        labels[patches_on(t, scene, grid)] = torch.tensor([list(COLOURS).index(t.colour), SHAPES.index(t.shape),
                                                          list(SIZES).index(t.size)])
    return labels


def pretrain_on_patch_labels(spec: BackboneSpec, n_scenes: int) -> VisionEncoder:
    """The toy tower trained to classify the object under each patch (cross-entropy per attribute)."""
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    grid = spec.image_size // spec.patch_size
    pad = mean_colour(processor.image_mean)
    scenes = tower_scenes(spec, n_scenes)  # the scenes the default tower pretrains on
    pixels = processor([expand_to_square(draw_scene(s), pad) for s in scenes], return_tensors="pt")["pixel_values"]
    labels = torch.stack([patch_labels(s, grid) for s in scenes])  # (S, N, 3)
    heads = torch.nn.ModuleList([torch.nn.Linear(spec.vision_width, len(v)) for v in (COLOURS, SHAPES, SIZES)])
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(spec.seed)
    tower.train()
    for _ in tqdm(range(spec.vision_steps), desc="patch labels"):
        batch = torch.randint(0, n_scenes, (spec.vision_batch_size,), generator=generator)
        features = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]  # (B, N, D), no CLS
        loss = sum(torch.nn.functional.cross_entropy(head(features).flatten(0, 1), labels[batch][..., i].flatten(),
                                                     ignore_index=-100) for i, head in enumerate(heads))
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
    n_scenes, probe_scenes = (40, 40) if args.fast else (2000, 400)
    _, vision_dir, _ = toy_setup(fast=args.fast, progress=False)  # the default (tagging) tower, built or cached
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    random_tower = VisionEncoder(tower.eval(), processor)
    start = time.perf_counter()
    patch_tower = pretrain_on_patch_labels(spec, n_scenes)
    seconds = time.perf_counter() - start
    towers = {"random": random_tower, "tagging (the default)": VisionEncoder.from_pretrained(str(vision_dir)),
              "patch labels": patch_tower}
    rows = {name: probe_vision_features(encoder, n_scenes=probe_scenes) for name, encoder in towers.items()}
    print(f"{spec.vision_steps} steps of {spec.vision_batch_size} images; patch-label pretraining took {seconds:.0f} s")
    print("| tower | colour | shape | size |")
    print("|---|---|---|---|")
    for name, probe in rows.items():
        print(f"| {name} | {probe['colour']:.0%} | {probe['shape']:.0%} | {probe['size']:.0%} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "tower_objectives.json").write_text(json.dumps({"spec": vars(spec), "probe": rows}, indent=2))


if __name__ == "__main__":
    main()
