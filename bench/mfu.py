"""MFU: the trainer's reported model FLOPs utilisation, next to this machine's measured matmul peak.

    python bench/mfu.py [--steps 40]

Runs the trainer (stage 2) for a few steps on the toy recipe and on a larger CPU-feasible shape (the `medium`
random model on the toy data), and reports the MFU the trainer logs (model FLOPs per step as documented in
``minillava.trainer.step_flops``, over the best square-matmul FLOP/s measured at the start of the run).
Writes bench/results/mfu.json.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from _models import build

from minillava.backbones import toy_setup
from minillava.model import MiniLlava
from minillava.toy import toy_recipes
from minillava.trainer import measure_peak_flops, train

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--fast", action="store_true", help="tiny world, 2 steps, `small` for `medium` (tests)")
    args = parser.parse_args()
    steps = 2 if args.fast else args.steps
    world, vision_dir, llm_dir = toy_setup(fast=args.fast, progress=False)
    peak = measure_peak_flops(torch.device("cpu"))
    rows = []
    for name in ("toy", "small" if args.fast else "medium"):
        if name == "toy":
            model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
        else:
            model, _ = build(name)
        _, recipe = toy_recipes(world)
        recipe.max_steps, recipe.log_every, recipe.peak_flops = steps, max(1, steps // 4), peak
        metrics = train(recipe, model, Path(tempfile.mkdtemp()) / name, progress=False)
        later = metrics[1:] or metrics  # the first window includes warm-up
        rows.append({"model": name, "parameters": sum(p.numel() for p in model.parameters()),
                     "tokens_per_s": statistics.median(m["tokens_per_s"] for m in later),
                     "mfu": statistics.median(m["mfu"] for m in later)})
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s, threads {torch.get_num_threads()}; "
          f"stage 2, batch {recipe.per_device_batch_size}, {steps} steps")
    print("| model | parameters | tokens/s | MFU |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mfu.json").write_text(json.dumps({"peak_flops": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
