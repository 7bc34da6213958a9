"""The ``minillava`` command line."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def demo(args: argparse.Namespace) -> None:
    """A 1-minute end-to-end check: tiny backbones -> MiniLlava -> a few training steps -> answers -> export."""
    import torch
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    from .backbones import save_backbone, tiny_language_model, tiny_vision_tower, train_tokenizer
    from .convert import export_hf_llava
    from .data import pad_batch
    from .model import MiniLlava
    from .prompts import SHORT_ANSWER, tokenize_conversation, with_format_prompt

    torch.manual_seed(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
    question = with_format_prompt("<image>\nWhat colour is this picture?", SHORT_ANSWER)
    corpus = [question] + [f"{c}." for c in colours] * 10
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(corpus, vocab_size=300)
        tower, processor = tiny_vision_tower()
        save_backbone(f"{tmp}/vision", tower, processor)
        save_backbone(f"{tmp}/llm", tiny_language_model(tokenizer), tokenizer)
        model = MiniLlava.from_backbones(f"{tmp}/vision", f"{tmp}/llm")
        print(f"MiniLlava: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{model.encoder.num_features} image tokens per image")

        names = list(colours)
        images = [Image.new("RGB", (48, 40), colours[n]) for n in names]
        samples = [tokenize_conversation([{"from": "human", "value": question}, {"from": "gpt", "value": f"{n}."}],
                                         model.tokenizer, model.image_token_id, model.encoder.num_features)
                   for n in names]
        batch = pad_batch(samples, model.tokenizer.pad_token_id)
        pixels = model.encoder.preprocess(images)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        for step in range(args.steps):  # stage 2 in miniature: connector + LM learn to name the colour
            loss = model(batch["input_ids"], pixels, batch["attention_mask"], batch["labels"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step % 20 == 0 or step == args.steps - 1:
                print(f"step {step:3d}  loss {loss.item():.3f}")
        model.eval()
        answers = model.answer(images, ["What colour is this picture?"] * len(images), format_prompt=SHORT_ANSWER,
                               max_new_tokens=4)
        for name, answer in zip(names, answers):
            print(f"  {name:>6} image -> {answer!r}")
        hf = LlavaForConditionalGeneration.from_pretrained(export_hf_llava(model, Path(tmp) / "hf")).eval()
        with torch.no_grad():
            ours = model(batch["input_ids"], pixels, batch["attention_mask"]).logits
            theirs = hf(input_ids=batch["input_ids"], pixel_values=pixels, attention_mask=batch["attention_mask"]).logits
        mask = batch["attention_mask"].bool()
        print(f"exported to transformers' Llava: max |logit difference| = {(ours - theirs)[mask].abs().max():.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="minillava", description="A small, exact, teachable LLaVA-1.5.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="a one-minute end-to-end check with tiny random backbones")
    p.add_argument("--steps", type=int, default=60)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for tiny local models are noise; ours stay
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
