"""Check the trainer's accelerator settings on this machine: fp32, bf16, and bf16 + gradient checkpointing +
torch.compile, each a short stage 2 on the toy model; then cached vs uncached greedy decoding.

    python bench/gpu_check.py [--steps 40] [--batch-size 8] [--compile-backend inductor] [--tiny]

Each setting trains in its own process (as a real run would), from the same weights and data, so their losses
should agree to bf16 precision. Prints one row per setting (losses, tokens/s, peak GPU memory) and whether the
KV-cache decoding gives the same tokens as recomputing the whole sequence. Runs on a CPU too (bf16 autocast),
where torch.compile defaults to the "eager" backend. Results: bench/results/gpu_check.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"fp32": {}, "bf16": {"mixed_precision": "bf16"},
            "bf16 + checkpointing + compile": {"mixed_precision": "bf16", "gradient_checkpointing": True,
                                               "torch_compile": "COMPILE"}}


def run_setting(setting: dict, steps: int, batch_size: int, tiny: bool, out: str) -> dict:
    """One short stage 2 (in a fresh process: accelerate fixes the precision once per process)."""
    import torch

    from minillava.backbones import toy_setup
    from minillava.model import MiniLlava
    from minillava.toy import toy_recipes
    from minillava.trainer import train

    world, vision_dir, llm_dir = toy_setup(fast=tiny, progress=False)
    torch.manual_seed(0)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
    _, stage2 = toy_recipes(world, fast=tiny)
    stage2.max_steps, stage2.log_every, stage2.per_device_batch_size = steps, max(1, steps // 4), batch_size
    for field, value in setting.items():
        setattr(stage2, field, value)
    start = time.perf_counter()
    metrics = train(stage2, model, out, progress=False)
    row = {"device": str(next(model.parameters()).device), "wall_s": round(time.perf_counter() - start, 1),
           "losses": [m["loss"] for m in metrics], "tokens_per_s": metrics[-1]["tokens_per_s"],
           "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None}
    if setting.get("torch_compile"):  # the saved model decodes the same with and without the KV cache
        from PIL import Image

        from minillava.evaluate import read_jsonl

        saved = MiniLlava.from_pretrained(Path(out) / "model").to(next(model.parameters()).device).eval()
        questions = read_jsonl(world / "eval" / "detail.jsonl")[:4]
        images = [Image.open(world / "images" / q["image"]).convert("RGB") for q in questions]
        texts = [q["text"] for q in questions]
        with torch.no_grad():
            cached = saved.answer(images, texts, max_new_tokens=24)
            generate = saved.generate
            saved.generate = lambda *a, **kw: generate(*a, **kw, use_cache=False)
            uncached = saved.answer(images, texts, max_new_tokens=24)
        row["cache_equals_no_cache"] = cached == uncached
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compile-backend", default=None, help="default: inductor on a GPU, eager on a CPU")
    parser.add_argument("--tiny", action="store_true", help="the fast toy backbones and world (checks the script)")
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # setting JSON, out: a worker
    args = parser.parse_args()
    if args._one:
        setting, out = json.loads(args._one[0]), args._one[1]
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "row.json").write_text(json.dumps(run_setting(setting, args.steps, args.batch_size, args.tiny, out)))
        return

    import torch

    backend = args.compile_backend or ("inductor" if torch.cuda.is_available() else "eager")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MINILLAVA_CACHE=os.environ.get("MINILLAVA_CACHE", f"{tmp}/cache"))
        for i, (name, setting) in enumerate(SETTINGS.items()):
            setting = {k: backend if v == "COMPILE" else v for k, v in setting.items()}
            out = f"{tmp}/run{i}"
            command = [sys.executable, __file__, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       *(["--tiny"] if args.tiny else []),
                       "--_one", json.dumps(setting), out]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"setting {name!r} failed:\n{result.stderr[-3000:]}")
            rows[name] = json.loads(Path(out, "row.json").read_text())
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, "
          f"compile backend {backend}")
    print("| setting | device | losses | tokens/s | peak GPU MB | wall s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['device']} | {', '.join(f'{x:.3f}' for x in r['losses'])} | {r['tokens_per_s']:.0f} "
              f"| {r['peak_gpu_mb'] or '-'} | {r['wall_s']} |")
    last = rows[list(SETTINGS)[-1]]
    print(f"KV-cache decoding == full recomputation: {last['cache_equals_no_cache']}")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "gpu_check.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
