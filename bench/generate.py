"""Greedy generation: MiniLlava vs transformers' LlavaForConditionalGeneration.generate, the same weights and
prompts, batch 1 and 8, with and without the KV cache.

    python bench/generate.py [--size small] [--new-tokens 32] [--repeats 5]

Both produce the same tokens (checked); the table reports new tokens per second (medians of alternating runs)
and the ratio minillava / transformers. Writes bench/results/generate.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _models import SIZES, build, generation_batch

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    ours, theirs = build(args.size)
    ours.eval()
    theirs.eval()
    pad, eos = ours.tokenizer.pad_token_id, ours.tokenizer.eos_token_id
    rows = []
    for batch_size in [int(b) for b in args.batches.split(",")]:
        batch = generation_batch(ours, batch_size)
        for cache in (True, False):
            def run_ours():
                return ours.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                     max_new_tokens=args.new_tokens, use_cache=cache)

            def run_theirs():
                out = theirs.generate(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                                      attention_mask=batch["attention_mask"], max_new_tokens=args.new_tokens,
                                      do_sample=False, use_cache=cache, pad_token_id=pad, eos_token_id=eos)
                return out[:, batch["input_ids"].shape[1]:]  # transformers returns prompt + new tokens

            with torch.no_grad():
                same = torch.equal(run_ours(), run_theirs())  # also the warm-up
                times = {"minillava": [], "transformers": []}
                for _ in range(args.repeats):
                    for name, fn in (("minillava", run_ours), ("transformers", run_theirs)):
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
            new = batch_size * args.new_tokens
            speed = {name: new / statistics.median(t) for name, t in times.items()}
            rows.append({"batch": batch_size, "kv_cache": cache, "tokens_per_s": speed, "same_tokens": same,
                         "ratio": speed["minillava"] / speed["transformers"]})
    print(f"size {args.size}, {args.new_tokens} new tokens per row, greedy, {args.repeats} alternating repeats, "
          f"threads {torch.get_num_threads()}")
    print("| batch | KV cache | minillava tokens/s | transformers tokens/s | minillava / transformers | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {'yes' if r['kv_cache'] else 'no'} | {r['tokens_per_s']['minillava']:.0f} | "
              f"{r['tokens_per_s']['transformers']:.0f} | {r['ratio']:.2f}x | {r['same_tokens']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
