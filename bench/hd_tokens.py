"""HD encoder: grid, token count and encode time relative to the base (one-cell) encoder, per input size.

    python bench/hd_tokens.py [--cell 224 --patch 14 --width 256 --layers 4 --repeats 5]

Uses a randomly initialised CLIP tower of the given cell size (speed does not depend on the weights), so it
runs offline. Times are medians of alternating runs (base, HD, base, HD, ...) in one process; the table
reports ratios, which travel between machines better than seconds. Writes bench/results/hd_tokens.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from minillava.backbones import tiny_vision_tower
from minillava.encoder import VisionEncoder
from minillava.hd import HDConfig, HDGrid, feature_layout, split_into_cells

SIZES = [(224, 224), (336, 336), (448, 448), (672, 448), (448, 672), (1000, 100), (800, 600), (1920, 1080)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", type=int, default=224)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    tower, processor = tiny_vision_tower(args.cell, args.patch, args.width, args.layers)
    encoder = VisionEncoder(tower, processor)
    config = HDConfig()
    grid = HDGrid(config, args.cell, args.patch, args.width)
    rows = []
    for w, h in SIZES:
        image = Image.new("RGB", (w, h), (90, 140, 200))
        base_pixels = encoder.preprocess([image], "pad")
        hd_pixels = processor(split_into_cells(image, config, args.cell, encoder.pad_colour),
                              return_tensors="pt")["pixel_values"]
        times = {"base": [], "hd": []}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, pixels in (("base", base_pixels), ("hd", hd_pixels)):
                    start = time.perf_counter()
                    features = encoder(pixels)
                    if name == "hd":
                        grid.assemble(features, [(w, h)])
                    times[name].append(time.perf_counter() - start)
        layout = feature_layout(w, h, args.cell, args.patch, config)
        rows.append({"size": f"{w}x{h}", "grid": f"{layout['grid'][0]}x{layout['grid'][1]}",
                     "tokens": layout["tokens"], "base_tokens": encoder.num_features,
                     "removed": layout["removed"],
                     "time_ratio": statistics.median(times["hd"]) / statistics.median(times["base"])})
    print("| input | grid (cols x rows) | HD tokens | base tokens | padding features removed | "
          "HD encode time / base |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['grid']} | {r['tokens']} | {r['base_tokens']} | {r['removed']} | "
              f"{r['time_ratio']:.2f}x |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "hd_tokens.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
