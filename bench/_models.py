"""Shared by the benchmarks: a random MiniLlava of a chosen size, the same weights as transformers' Llava,
and batches with padding, two image sizes and a text-only row. Random weights: speed does not depend on them."""

import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from minillava.backbones import save_backbone, tiny_language_model, tiny_vision_tower, train_tokenizer
from minillava.convert import export_hf_llava
from minillava.data import pad_batch
from minillava.model import MiniLlava
from minillava.prompts import TEMPLATES, tokenize_conversation

SIZES = {  # name: (image, patch, vision width, vision layers, LM width, LM layers)
    "toy": (64, 8, 64, 3, 128, 2),
    "small": (112, 14, 256, 4, 512, 4),
    "medium": (224, 14, 384, 6, 1024, 8),
}


def build(size: str, folder: Path | None = None, vocab: int | None = None) -> tuple[MiniLlava,
                                                                                  LlavaForConditionalGeneration]:
    """A random MiniLlava and transformers' Llava holding the same weights (via ``export_hf_llava``).
    ``vocab``: grow the LM's vocabulary (embeddings and head) to this size, as real LMs have (Vicuna: 32,000);
    the extra rows are never read as input, but the head computes a logit for each."""
    image, patch, v_width, v_layers, width, layers = SIZES[size]
    folder = Path(folder or tempfile.mkdtemp(prefix="minillava-bench-"))
    torch.manual_seed(0)
    corpus = [TEMPLATES["vicuna_v1"].system, "What colour is the circle? The circle is red. 0123456789"] * 50
    tokenizer = train_tokenizer(corpus, vocab_size=2000)
    tower, processor = tiny_vision_tower(image, patch, v_width, v_layers, num_heads=max(1, v_width // 64))
    lm = tiny_language_model(tokenizer, hidden_size=width, num_layers=layers, num_heads=max(1, width // 64))
    if vocab:
        lm.resize_token_embeddings(vocab, mean_resizing=False)
    save_backbone(folder / "vision", tower, processor)
    save_backbone(folder / "llm", lm, tokenizer)
    ours = MiniLlava.from_backbones(str(folder / "vision"), str(folder / "llm"))
    with torch.no_grad():  # never emit EOS, so every contender generates the same number of tokens
        ours.lm.lm_head.weight[ours.tokenizer.eos_token_id] = 0
    export_hf_llava(ours, folder / "hf")
    theirs = LlavaForConditionalGeneration.from_pretrained(folder / "hf")
    return ours, theirs


def training_batch(model: MiniLlava, rows: int = 4) -> dict:
    """``rows`` samples (right-padded): image rows with short and long answers, one text-only row last."""
    answers = ["Red.", "The image shows a large red circle at the top left and a small blue square. " * 3]
    samples, pixels = [], []
    for i in range(rows):
        text_only = i == rows - 1
        conv = [{"from": "human", "value": ("" if text_only else "<image>\n") + "What is in the picture?"},
                {"from": "gpt", "value": answers[i % 2]}]
        counts = [] if text_only else [model.encoder.num_features]
        samples.append(tokenize_conversation(conv, model.tokenizer, model.image_token_id, counts))
        if not text_only:
            size = (model.encoder.image_size * (1 + i % 2), model.encoder.image_size)
            pixels.append(model.prepare_image(Image.new("RGB", size, (200, 40 * i, 30)), "pad")["pixel_values"])
    batch = pad_batch(samples, model.tokenizer.pad_token_id)
    batch["pixel_values"] = torch.cat(pixels)
    return batch


def generation_batch(model: MiniLlava, rows: int) -> dict:
    """``rows`` left-padded generation prompts with an image each (two prompt lengths)."""
    questions = ["What is it?", "Describe the image in detail, with every object, its colour and its place."]
    samples = [tokenize_conversation([{"from": "human", "value": "<image>\n" + questions[i % 2]}], model.tokenizer,
                                     model.image_token_id, [model.encoder.num_features], for_generation=True)
               for i in range(rows)]
    batch = pad_batch(samples, model.tokenizer.pad_token_id, padding_side="left")
    image = Image.new("RGB", (model.encoder.image_size,) * 2, (30, 120, 200))
    batch["pixel_values"] = torch.cat([model.prepare_image(image, "pad")["pixel_values"]] * rows)
    return batch


def alternating_medians(contenders: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each contender (a no-argument callable), run in turns ``repeats`` times, so that the
    machine's drift falls on all of them alike. Warm them up first."""
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
