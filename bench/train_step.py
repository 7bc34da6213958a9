"""Training step: MiniLlava vs transformers' LlavaForConditionalGeneration, the same weights and the same batch.

    python bench/train_step.py [--size small] [--vocab 32000] [--repeats 7] [--checkpointing]

Stage 2 (connector + LM train, vision tower frozen): forward + backward + AdamW step, fp32 on the CPU, a batch
with padding, two image sizes and a text-only row. Three contenders: minillava (the LM head only where there is
a label), transformers' default training forward (``labels=``: logits at every position), and transformers with
its own best option (``logits_to_keep`` = the labelled positions, the loss computed on those logits). They
alternate in one process and the table reports median times and their ratios. ``--checkpointing``: every
contender with gradient checkpointing on its LM's layers, as LLaVA-1.5 trains.

Peak memory is measured in a fresh process per contender, loaded the same way in each: the rise of the resident
memory over the loaded model during 3 steps, sampled every 2 ms, in each part of the step (the first forward +
backward, before any optimizer state exists; later forward + backward passes; the AdamW steps). The child runs
with glibc's mmap threshold fixed at 64 KB, so that every tensor larger than that is mapped on allocation and
unmapped when freed: the resident size then follows the memory the tensors hold (as a GPU's
``max_memory_allocated`` does) instead of keeping whatever the heap once grew to. Writes
bench/results/train_step-<size>[-checkpointing].json.
"""

import argparse
import json
import os
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
from minillava.trainer import enable_checkpointing, set_trainable

RESULTS = Path(__file__).parent / "results"


CONTENDERS = ("minillava", "transformers", "transformers + logits_to_keep")


def make_step(name: str, model, batch: dict, mark=lambda part: None, checkpointing: bool = False):
    """A closure doing one optimizer step of ``model`` (ours or transformers') on ``batch``; ``mark`` is told
    which part of the step starts ("forward + backward", "optimizer"). ``checkpointing``: gradient checkpointing
    on the LM's layers (the same transformers code in every contender)."""
    if checkpointing:
        enable_checkpointing(model.lm if name == "minillava" else model.model.language_model)
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


PARTS = ("first forward + backward", "forward + backward", "optimizer")


def memory_of(name: str, folder: Path, checkpointing: bool = False) -> dict:
    """Run in a child process (``main`` starts it with the fixed mmap threshold): load one contender, then sample
    the resident memory every 2 ms during 3 steps; report it before the steps and its peak rise in each part of
    the step (``PARTS``): the first forward + backward holds activations and gradients only, later ones the
    AdamW states too, and the optimizer part holds gradients, states and the update's temporaries."""
    import gc
    import threading

    ours = MiniLlava.from_pretrained(folder / "ours")  # every child loads ours first: the batch is made with it
    batch = training_batch(ours)
    if name == "minillava":
        model = ours
    else:
        del ours
        gc.collect()
        model = LlavaForConditionalGeneration.from_pretrained(folder / "hf")
    part, passes = [PARTS[0]], [0]

    def mark(p: str) -> None:
        passes[0] += p == "forward + backward"
        part[0] = PARTS[0] if passes[0] == 1 and p != "optimizer" else p

    step = make_step(name, model, batch, mark=mark, checkpointing=checkpointing)
    with torch.no_grad():  # page in every weight first: from_pretrained may map the file and read it lazily,
        for p in model.parameters():  # which would count the weights as training memory
            p.sum()
    gc.collect()
    before, peaks, done = rss_mb(), dict.fromkeys(PARTS, 0.0), threading.Event()

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
    rise = {p: round(peaks[p] - before) for p in PARTS}
    return {"loaded_mb": round(before), "training_mb": max(rise.values()), "parts_mb": rise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--vocab", type=int, default=32000, help="LM vocabulary (Vicuna's: 32,000)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing on every contender's LM layers (LLaVA-1.5 trains with it)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, Path(args.folder), args.checkpointing)))
        return

    folder = Path(tempfile.mkdtemp(prefix="minillava-bench-"))
    ours, theirs = build(args.size, folder, args.vocab)
    ours.save_pretrained(folder / "ours")
    theirs_too = LlavaForConditionalGeneration.from_pretrained(folder / "hf")  # its own copy: its own optimizer
    batch = training_batch(ours)
    models = {"minillava": ours, "transformers": theirs, CONTENDERS[2]: theirs_too}
    steps = {name: make_step(name, models[name], batch, checkpointing=args.checkpointing) for name in CONTENDERS}
    first = {name: step() for name, step in steps.items()}  # warm-up; same weights -> same loss
    medians = alternating_medians(steps, args.repeats)
    memory = {}
    child_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # see the module's docstring
    for name in steps:
        out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--folder", str(folder)]
                             + ["--checkpointing"] * args.checkpointing,
                             capture_output=True, text=True, check=True, env=child_env).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])
    tokens = int(batch["attention_mask"].sum())
    labelled = int((batch["labels"] != -100).sum())
    print(f"size {args.size}, vocabulary {ours.lm.config.vocab_size}: batch of {len(batch['input_ids'])} rows x "
          f"{batch['input_ids'].shape[1]} positions ({tokens} real tokens, {labelled} labelled, 1 text-only row), "
          f"{args.repeats} alternating repeats, threads {torch.get_num_threads()}; first-step losses "
          + ", ".join(f"{name} {loss:.6f}" for name, loss in first.items()))
    print("| contender | median step (s) | tokens/s | training memory (MB) | "
          + " | ".join(f"{part} (MB)" for part in PARTS) + " |")
    print("|---" * (4 + len(PARTS)) + "|")
    for name in steps:
        m = memory[name]
        print(f"| {name} | {medians[name]:.3f} | {tokens / medians[name]:.0f} | {m['training_mb']} | "
              + " | ".join(str(m["parts_mb"][part]) for part in PARTS) + " |")
    ratio = {name: medians["minillava"] / medians[name] for name in CONTENDERS[1:]}
    memory_ratio = {name: memory["minillava"]["training_mb"] / max(1, memory[name]["training_mb"])
                    for name in CONTENDERS[1:]}
    print(f"\nminillava / transformers' default: step time {ratio['transformers']:.2f}x (target <= 0.85), "
          f"training memory {memory_ratio['transformers']:.2f}x (target at medium <= 0.8); minillava / "
          f"transformers + logits_to_keep: step time {ratio[CONTENDERS[2]]:.2f}x (target <= 1.0), training memory "
          f"{memory_ratio[CONTENDERS[2]]:.2f}x; gradient checkpointing {'on' if args.checkpointing else 'off'}")
    RESULTS.mkdir(exist_ok=True)
    suffix = "-checkpointing" if args.checkpointing else ""
    (RESULTS / f"train_step-{args.size}{suffix}.json").write_text(json.dumps(
        {"size": args.size, "vocab": ours.lm.config.vocab_size, "checkpointing": args.checkpointing,
         "median_s": medians, "ratio": ratio, "memory": memory, "memory_ratio": memory_ratio,
         "first_loss": first}, indent=2))

if __name__ == "__main__":
    main()
