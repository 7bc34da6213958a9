"""Training step: MiniLlava vs transformers' LlavaForConditionalGeneration, the same weights and the same batch.

    python bench/train_step.py [--size small] [--repeats 7]

Stage 2 (connector + LM train, vision tower frozen): forward + backward + AdamW step, fp32 on the CPU, a batch
with padding, two image sizes and a text-only row. The contenders alternate in one process and the table
reports median times and their ratio. Peak memory is measured in a fresh process per contender (the rise of
the resident memory over the loaded model during 3 steps). Writes bench/results/train_step.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _models import SIZES, build, training_batch
from transformers import LlavaForConditionalGeneration

from minillava.model import MiniLlava
from minillava.trainer import set_trainable

RESULTS = Path(__file__).parent / "results"


def make_step(name: str, model, batch: dict):
    """A closure doing one optimizer step of ``model`` (ours or transformers') on ``batch``."""
    if name == "minillava":
        set_trainable(model, 2)
        forward = lambda: model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                batch["labels"]).loss
    else:
        model.model.vision_tower.requires_grad_(False)
        forward = lambda: model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                                attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> float:
        loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def memory_of(name: str, folder: Path) -> dict:
    """Run in a child process: load one contender, then sample the resident memory every few milliseconds
    during 3 steps; report it before the steps and its peak (activations, gradients, optimizer states)."""
    import gc
    import threading

    ours = MiniLlava.from_pretrained(folder / "ours")
    batch = training_batch(ours)
    if name == "minillava":
        model = ours
    else:
        del ours
        gc.collect()
        model = LlavaForConditionalGeneration.from_pretrained(folder / "hf")
    step = make_step(name, model, batch)
    gc.collect()
    before, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    return {"loaded_mb": round(before), "peak_mb": round(peak[0]), "training_mb": round(peak[0] - before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, Path(args.folder))))
        return

    folder = Path(tempfile.mkdtemp(prefix="minillava-bench-"))
    ours, theirs = build(args.size, folder)
    ours.save_pretrained(folder / "ours")
    batch = training_batch(ours)
    steps = {"minillava": make_step("minillava", ours, batch), "transformers": make_step("transformers", theirs, batch)}
    first = {name: step() for name, step in steps.items()}  # warm-up; same weights -> same loss
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    memory = {}
    for name in steps:
        out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--folder", str(folder)],
                             capture_output=True, text=True, check=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])
    tokens = int(batch["attention_mask"].sum())
    print(f"size {args.size}: batch of {len(batch['input_ids'])} rows x {batch['input_ids'].shape[1]} positions "
          f"({tokens} real tokens, 1 text-only row), {args.repeats} alternating repeats, threads "
          f"{torch.get_num_threads()}; first-step loss minillava {first['minillava']:.6f}, "
          f"transformers {first['transformers']:.6f}")
    print("| contender | median step (s) | tokens/s | peak RSS (MB) | training memory (MB) |")
    print("|---|---|---|---|---|")
    for name in steps:
        print(f"| {name} | {medians[name]:.3f} | {tokens / medians[name]:.0f} | {memory[name]['peak_mb']} | "
              f"{memory[name]['training_mb']} |")
    ratio = medians["minillava"] / medians["transformers"]
    print(f"\nminillava / transformers step time: {ratio:.2f}x (target <= 1.0)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps({"size": args.size, "median_s": medians, "ratio": ratio,
                                                          "memory": memory, "first_loss": first}, indent=2))


if __name__ == "__main__":
    main()
