"""Training step: MiniLlava vs transformers' LlavaForConditionalGeneration, the same weights and the same batch.

    python bench/train_step.py [--size small] [--vocab 32000] [--repeats 7]

Stage 2 (connector + LM train, vision tower frozen): forward + backward + AdamW step, fp32 on the CPU, a batch
with padding, two image sizes and a text-only row. Three contenders: minillava (the LM head only where there is
a label), transformers' default training forward (``labels=``: logits at every position), and transformers with
its own best option (``logits_to_keep`` = the labelled positions, the loss computed on those logits). They
alternate in one process and the table reports median times and their ratios. Peak memory is measured in a
fresh process per contender (the rise of the resident memory over the loaded model during 3 steps). Writes
bench/results/train_step-<size>.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _models import SIZES, alternating_medians, build, training_batch
from transformers import LlavaForConditionalGeneration

from minillava.model import MiniLlava
from minillava.trainer import set_trainable

RESULTS = Path(__file__).parent / "results"


CONTENDERS = ("minillava", "transformers", "transformers + logits_to_keep")


def make_step(name: str, model, batch: dict, mark=lambda part: None):
    """A closure doing one optimizer step of ``model`` (ours or transformers') on ``batch``; ``mark`` is told
    which part of the step starts ("forward + backward", "optimizer")."""
    if name == "minillava":
        set_trainable(model, 2)
        forward = lambda: model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                batch["labels"]).loss
    elif name == "transformers":
        model.model.vision_tower.requires_grad_(False)
        forward = lambda: model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                                attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    else:  # transformers' own option: logits only at the positions whose next token is labelled
        model.model.vision_tower.requires_grad_(False)
        targets = batch["labels"][:, 1:]
        keep = torch.nn.functional.pad(targets != -100, (0, 1), value=False)

        def forward():
            logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                           attention_mask=batch["attention_mask"], logits_to_keep=keep).logits  # (K, V)
            return torch.nn.functional.cross_entropy(logits.float(), targets[keep[:, :-1]])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> float:
        mark("forward + backward")
        loss = forward()
        loss.backward()
        mark("optimizer")
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
    during 3 steps; report it before the steps and its peak (activations, gradients, optimizer states), overall
    and in the first step's forward + backward, before any optimizer state exists: the activations and the
    gradients, where the logits not computed show. (Later parts cannot be told apart this way: the allocator
    keeps the AdamW step's memory, so the resident size only grows.)"""
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
    part, marks = ["first forward + backward"], [0]

    def mark(p: str) -> None:
        marks[0] += 1
        part[0] = "first forward + backward" if marks[0] == 1 else "later"

    step = make_step(name, model, batch, mark=mark)
    with torch.no_grad():  # page in every weight first: from_pretrained may map the file and read it lazily,
        for p in model.parameters():  # which would count the weights as training memory
            p.sum()
    gc.collect()
    before, peaks, done = rss_mb(), {"first forward + backward": 0.0, "later": 0.0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            mb = rss_mb()  # then the part: a sample of one part is never booked to the part before it
            peaks[part[0]] = max(peaks[part[0]], mb)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    peak = max(peaks.values())
    return {"loaded_mb": round(before), "peak_mb": round(peak), "training_mb": round(peak - before),
            "first_forward_backward_mb": round(peaks["first forward + backward"] - before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--vocab", type=int, default=32000, help="LM vocabulary (Vicuna's: 32,000)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, Path(args.folder))))
        return

    folder = Path(tempfile.mkdtemp(prefix="minillava-bench-"))
    ours, theirs = build(args.size, folder, args.vocab)
    ours.save_pretrained(folder / "ours")
    theirs_too = LlavaForConditionalGeneration.from_pretrained(folder / "hf")  # its own copy: its own optimizer
    batch = training_batch(ours)
    steps = {"minillava": make_step("minillava", ours, batch), "transformers": make_step("transformers", theirs, batch),
             CONTENDERS[2]: make_step(CONTENDERS[2], theirs_too, batch)}
    first = {name: step() for name, step in steps.items()}  # warm-up; same weights -> same loss
    medians = alternating_medians(steps, args.repeats)
    memory = {}
    for name in steps:
        out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--folder", str(folder)],
                             capture_output=True, text=True, check=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])
    tokens = int(batch["attention_mask"].sum())
    labelled = int((batch["labels"] != -100).sum())
    print(f"size {args.size}, vocabulary {ours.lm.config.vocab_size}: batch of {len(batch['input_ids'])} rows x "
          f"{batch['input_ids'].shape[1]} positions ({tokens} real tokens, {labelled} labelled, 1 text-only row), "
          f"{args.repeats} alternating repeats, threads {torch.get_num_threads()}; first-step losses "
          + ", ".join(f"{name} {loss:.6f}" for name, loss in first.items()))
    print("| contender | median step (s) | tokens/s | peak RSS (MB) | training memory (MB) | first forward + "
          "backward (MB) |")
    print("|---|---|---|---|---|---|")
    for name in steps:
        m = memory[name]
        print(f"| {name} | {medians[name]:.3f} | {tokens / medians[name]:.0f} | {m['peak_mb']} | {m['training_mb']} | "
              f"{m['first_forward_backward_mb']} |")
    ratio = {name: medians["minillava"] / medians[name] for name in CONTENDERS[1:]}
    memory_ratio = memory["minillava"]["training_mb"] / max(1, memory["transformers"]["training_mb"])
    fb_ratio = (memory["minillava"]["first_forward_backward_mb"]
                / max(1, memory["transformers"]["first_forward_backward_mb"]))
    print(f"\nminillava / transformers' default step time: {ratio['transformers']:.2f}x (target <= 0.85); "
          f"/ transformers + logits_to_keep: {ratio[CONTENDERS[2]]:.2f}x (target <= 1.0); training memory "
          f"minillava / transformers' default: {memory_ratio:.2f}x (target at medium <= 0.8); in the first forward "
          f"+ backward (activations and gradients, no optimizer state yet): {fb_ratio:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_step-{args.size}.json").write_text(json.dumps(
        {"size": args.size, "vocab": ours.lm.config.vocab_size, "median_s": medians, "ratio": ratio,
         "memory": memory, "memory_ratio": memory_ratio, "first_forward_backward_memory_ratio": fb_ratio,
         "first_loss": first}, indent=2))


if __name__ == "__main__":
    main()
