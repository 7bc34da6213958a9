"""The embedded default backbones: a tiny tokenizer, vision tower and language model, in Hugging Face format.

minillava never special-cases its own small models: they are ordinary transformers models (a CLIP vision
tower, a Llama LM, a ``tokenizers`` BPE tokenizer) saved with ``save_pretrained``, so that
``MiniLlava.from_backbones(folder_a, folder_b)`` is the very call that loads
``openai/clip-vit-large-patch14-336`` and ``lmsys/vicuna-7b-v1.5``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from .toyworld import LOOKUP_SEEDS

# Llama's layout: <unk>=0, <s>=1, </s>=2; then the pad and image tokens LLaVA needs.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
BACKBONES_VERSION = 10  # bump when the pretraining changes, so cached and shipped backbones are rebuilt


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2000,
                    phrases: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) that adds BOS like Llama's and knows ``<image>``.

    ``phrases`` become single tokens wherever they follow a space (``" red circle"``): the toy language names
    each coloured shape with one token, as one image patch holds a coloured shape in one vector.
    A small corpus may give fewer tokens than ``vocab_size``: use ``len(tokenizer)``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.add_tokens([AddedToken(" " + phrase, normalized=False) for phrase in phrases])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens=["<image>"])


def tiny_vision_tower(image_size: int = 64, patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """A small, randomly initialised CLIP vision tower and its image processor (CLIP's mean and std)."""
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                              num_hidden_layers=num_layers, num_attention_heads=num_heads,
                              image_size=image_size, patch_size=patch_size)
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size})
    return CLIPVisionModel(config), processor


def tiny_language_model(tokenizer, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                        max_positions: int = 1024) -> LlamaForCausalLM:
    """A small, randomly initialised Llama whose vocabulary matches ``tokenizer``."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def save_backbone(folder: str | Path, *parts) -> Path:
    """``save_pretrained`` every part (model, tokenizer, processor) into one folder, as hub checkpoints are."""
    folder = Path(folder)
    for part in parts:
        part.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- pretraining the toy backbones


def cache_dir() -> Path:
    """Where minillava keeps toy worlds, trained toy models and backbones built with other sizes:
    ``$MINILLAVA_CACHE`` or ``~/.cache/minillava``."""
    return Path(os.environ.get("MINILLAVA_CACHE", Path.home() / ".cache" / "minillava"))


@dataclass
class BackboneSpec:
    """Sizes and pretraining budgets of the toy backbones. The defaults are the shipped build
    (``minillava/toy_backbones``), measured to pass the probes of ``manifest.json``."""

    vocab_size: int = 1000
    corpus_scenes: int = 3000  # scenes whose text the tokenizer and the LM's plain-text share are made of
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 96
    vision_layers: int = 4
    tower_scenes: int = 6000  # scenes the tower pretrains on (each gives a padded whole view and a close-up)
    glyph_close_ups: int = 12000  # and this many more close-ups, each around a printed character
    vision_steps: int = 16000  # with the place label, 8,000 left the toy run counting 77% (docs/findings.md)
    vision_batch_size: int = 16
    vision_lr: float = 2e-3
    centre_weight: float = 1.0  # keep the tower's layer -2 features centred (see pretrain_vision_tower)
    lm_width: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_steps: int = 4000
    lm_batch_size: int = 32
    lm_lr: float = 3e-4  # 1e-3 and more leave the lookup on a plateau (docs/findings.md)
    lm_text_share: float = 0.15  # share of each LM batch that is plain toy text
    lm_caption_steps: int = 1000  # then this many more, with captions joining (a warm-up and decay of their own)
    lm_caption_share: float = 0.2  # their share of each batch then: a scene in words, then its caption
    lm_hop_steps: int = 2500  # then this many more, captions kept, multiple choice's second hop joining
    lm_position_steps: int = 2000  # then this many more, with each object and its place in one new token
    lm_position_share: float = 0.75  # the share of scenes in words that tell where their objects are then
    lm_character_steps: int = 1500  # then this many more, each scene in words ending with its printed character
    lm_eval_every: int = 250  # score the text lookups every so many steps (0: never), into manifest.json
    probe_scenes: int = 100  # fresh scenes per probe question kind and object count (manifest.json)
    seed: int = 0

    def key(self, *extra: str) -> str:
        blob = json.dumps([asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrain_vision_tower(images: Sequence[Image.Image], labels: torch.Tensor, classes: Sequence[int],
                          spec: BackboneSpec, progress: bool = True,
                          weights: torch.Tensor | None = None) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """A tiny CLIP vision tower pretrained to say what lies under each of its patches.

    ``images`` are square; ``labels`` is ``(images, patches, attributes)``: for each patch the class index of
    each attribute of what lies under it (the toy world's colour, shape, size, character and place) and of what the
    whole scene holds (how many shapes, whether a character is printed: on every patch), -100 where there is
    nothing to say; ``classes[i]`` is how many values attribute i has; ``weights``: how often each image is drawn
    into a batch, relative to the others (default: all alike). One linear head per attribute reads every
    patch feature of the layer LLaVA uses (-2) and is trained with cross-entropy, plus a small penalty that keeps
    the features centred (measured with the earlier tagging objective: with it, a tiny LM learned to bind colours
    to shapes about three times faster in stage 2).

    Why not CLIP's contrastive loss, as the real tower was trained: at this size and a CPU-minute budget we
    measured that contrastive training on the toy captions learns colours but not shapes, and so does tagging
    (an image's score for "large red circle" is its best patch): a linear probe reads an object's shape from its
    own patches 72% of the time, a random tower 68-70%. Per-patch labels give far more (docs/findings.md). The
    result is the same kind of thing as CLIP's patch features at layer -2 in LLaVA: each patch says what is
    there, which is what the LM needs to find "the red object".
    """
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    pixels = processor(list(images), return_tensors="pt")["pixel_values"]  # (S, 3, H, W)
    heads = torch.nn.ModuleList([torch.nn.Linear(spec.vision_width, n) for n in classes])
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=spec.vision_lr, weight_decay=0.01)
    schedule = _warmup_cosine(optimizer, spec.vision_steps)
    generator = torch.Generator().manual_seed(spec.seed)
    tower.train()
    bar = tqdm(range(spec.vision_steps), desc="pretrain vision tower", disable=not progress)
    for _ in bar:
        batch = (torch.randint(0, len(images), (spec.vision_batch_size,), generator=generator) if weights is None
                 else torch.multinomial(weights, spec.vision_batch_size, replacement=True, generator=generator))
        features = tower(pixels[batch], output_hidden_states=True).hidden_states[-2][:, 1:]  # (B, N, D), CLS dropped
        targets = labels[batch]  # (B, N, attributes)
        loss = sum(torch.nn.functional.cross_entropy(head(features).flatten(0, 1), targets[..., i].flatten(),
                                                     ignore_index=-100)
                   for i, head in enumerate(heads) if (targets[..., i] >= 0).any())
        # Left alone, the residual stream grows a large component shared by every patch of every image (norm
        # ~40 against ~8 of image-dependent signal); the connector then needs many steps to see past it.
        loss = loss + spec.centre_weight * features.mean(dim=(0, 1)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return tower.eval(), processor


def lookup_example(tokenizer, seed: int, n_things: int | None = None, kinds: Sequence[str] | None = None,
                   mix: Sequence[str] | None = None, positions: float = 0.0, character: bool = False) -> dict:
    """One text-lookup record (``toyworld.text_lookup_record``: questions of ``kinds``, or drawn from ``mix``) of
    scene ``seed``, tokenized in the chat template with labels on the answers only: ``{"input_ids", "labels"}``."""
    from .prompts import prepare_tokenizer, tokenize_conversation
    from .toyworld import TEXT_LOOKUP_MIX, make_scene, text_lookup_record

    record = text_lookup_record(make_scene(seed, n_things), random.Random(seed), kinds, mix=mix or TEXT_LOOKUP_MIX,
                                positions=positions, character=character)
    return tokenize_conversation(record["conversations"], tokenizer, prepare_tokenizer(tokenizer))


def caption_example(tokenizer, seed: int, positions: bool = False, character: bool = False) -> dict:
    """A scene told in words, a new line, then its caption, with labels on the caption only: the text form of
    a stage-1 sample (``<image>`` + caption, the ``plain`` template), so the LM learns to describe what its
    context holds before the connector has to make image patches read like that context. ``positions``: the
    scene and its caption tell where each object is; ``character``: and which character is printed."""
    from .prompts import IGNORE_INDEX
    from .toyworld import caption, make_scene, text_scene

    scene = make_scene(seed)
    context = tokenizer(text_scene(scene, random.Random(seed), positions, character) + "\n")["input_ids"]  # BOS ...
    answer = tokenizer(caption(scene, positions, character) + "\n", add_special_tokens=False)["input_ids"]
    return {"input_ids": context + answer, "labels": [IGNORE_INDEX] * len(context) + answer}


def pretrain_language_model(tokenizer, texts: Sequence[str], spec: BackboneSpec, progress: bool = True,
                            history: list | None = None) -> LlamaForCausalLM:
    """A tiny Llama that, like Vicuna, reads a context and answers from it.

    Five phases (``lm_phases``), each with its own optimizer, warm-up and decay. Every batch is
    ``lm_text_share`` plain toy text (next-token prediction on every token, like a base LLM) and the rest
    text-lookup conversations (``toyworld.text_lookup_record``: a scene in words, then questions in the chat
    template answered from it; loss on the answers). From the second phase on, ``lm_caption_share`` of each
    batch is scenes in words followed by their captions (``caption_example``; loss on the caption); the third
    adds multiple choice's second hop (``toyworld.TEXT_LOOKUP_HOP_MIX``); the fourth names each object and its
    place with one new token (``add_position_tokens``), as a patch holds both, and asks where things are; the
    fifth ends each scene in words with its printed character and asks for it (the plain text's captions of
    conversations name it too), so that the LM reads a character before any image shows it one.
    Without the lookups the LM never learns to find "the square" in its context and read out its colour, and
    LLaVA's stage 2 is far too short to grow that from nothing; without the captions the lookups stay in text
    and never reach the image; with the captions or the hop from the first step, the "is there ...?" lookup
    never forms; without the place in the object's token, the LM never reads a place off an image; without
    the fifth, an HD model that sees a glyph answers "none" or guesses (docs/findings.md).

    The lookups form suddenly after a plateau, so the build watches them: every ``lm_eval_every`` steps they
    are scored on fresh scenes by object count and kind, printed, and appended to ``history``.
    """
    from .toyworld import language_corpus

    torch.manual_seed(spec.seed)
    lm = tiny_language_model(tokenizer, hidden_size=spec.lm_width, num_layers=spec.lm_layers,
                             num_heads=spec.lm_heads)
    rng, step = random.Random(spec.seed), 0
    tokenize = lambda texts: [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]  # BOS text EOS
    text_ids, grown = tokenize(texts), False
    for name, steps, caption_share, mix, positions, character in lm_phases(spec):
        if positions and steps and not grown:
            add_position_tokens(tokenizer, lm)
            text_ids, grown = tokenize(texts), True  # the new tokens may appear in the plain text too
        if character and steps:  # the plain text names the characters too; this phase came after the shipped v7
            # LM, and a random stream of its own leaves the four phases before it as they were
            text_ids = tokenize(language_corpus(spec.corpus_scenes, spec.seed, character=True))
            rng = random.Random(spec.seed + 1)
        step = train_language_model_phase(lm, tokenizer, text_ids, spec, name, steps, caption_share, mix, rng,
                                          step, progress, history, positions, character)
    return lm.eval()


def add_position_tokens(tokenizer, lm) -> None:
    """Grow the vocabulary by one token per coloured shape and place (``toyworld.object_phrases``), as a
    pretrained LLM's vocabulary is grown for new markup. Each new row of the embeddings and of the LM head
    starts as the sum of what the LM already knows: the coloured shape's token plus the mean of the place's
    words (" top", " left"), so the lookups it has learnt read the new tokens from the first step."""
    from .toyworld import object_phrases

    old = len(tokenizer)
    phrases = object_phrases(positions=True)
    tokenizer.add_tokens([AddedToken(" " + phrase, normalized=False) for phrase in phrases])
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for i, phrase in enumerate(phrases):
            obj, place = phrase.split(" at the ")
            obj_id = tokenizer.convert_tokens_to_ids(" " + obj)
            place_ids = tokenizer(" " + place, add_special_tokens=False)["input_ids"]
            for rows in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
                rows[old + i] = rows[obj_id] + rows[place_ids].mean(0)


def lm_phases(spec: BackboneSpec) -> list[tuple[str, int, float, tuple[str, ...], float, bool]]:
    """The LM's pretraining phases: ``(name, steps, caption share, lookup question mix, share of scenes that
    tell where their objects are, whether scenes tell their printed character)``; the first phase with positions
    grows the vocabulary (``add_position_tokens``)."""
    from .toyworld import TEXT_LOOKUP_CHARACTER_MIX, TEXT_LOOKUP_HOP_MIX, TEXT_LOOKUP_MIX, TEXT_LOOKUP_POSITION_MIX

    return [("lookups", spec.lm_steps, 0.0, TEXT_LOOKUP_MIX, 0.0, False),
            ("+ captions", spec.lm_caption_steps, spec.lm_caption_share, TEXT_LOOKUP_MIX, 0.0, False),
            ("+ option hop", spec.lm_hop_steps, spec.lm_caption_share, TEXT_LOOKUP_HOP_MIX, 0.0, False),
            ("+ positions", spec.lm_position_steps, spec.lm_caption_share, TEXT_LOOKUP_POSITION_MIX,
             spec.lm_position_share, False),
            ("+ characters", spec.lm_character_steps, spec.lm_caption_share, TEXT_LOOKUP_CHARACTER_MIX,
             spec.lm_position_share, True)]


def train_language_model_phase(lm, tokenizer, text_ids: Sequence[list[int]], spec: BackboneSpec, name: str,
                               steps: int, caption_share: float, mix: Sequence[str], rng: random.Random,
                               step: int = 0, progress: bool = True, history: list | None = None,
                               positions: float = 0.0, character: bool = False) -> int:
    """``steps`` steps of one pretraining phase of ``pretrain_language_model`` (``rng`` draws the batches;
    ``step`` counts on from the phases before; ``positions``: the share of scenes in words that tell where their
    objects are, and every caption does then; ``character``: scenes and captions tell the printed character).
    Returns the step count after it."""
    from .prompts import IGNORE_INDEX

    if not steps:
        return step
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(lm.parameters(), lr=spec.lm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = _warmup_cosine(optimizer, steps)
    n_text = round(spec.lm_batch_size * spec.lm_text_share)
    n_captions = round(spec.lm_batch_size * caption_share)
    lm.train()
    bar = tqdm(range(steps), desc=f"pretrain language model ({name})", disable=not progress)
    for _ in bar:
        if spec.lm_eval_every and step % spec.lm_eval_every == 0 and step:
            accuracy = text_lookup_accuracy(lm, tokenizer, 20, seed=1, character=character)
            lm.train()
            if history is not None:
                history.append({"step": step, **{k: round(v, 3) for k, v in accuracy.items()}})
            bar.write(f"step {step}: text lookups " + ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items()))
        rows = [{"input_ids": ids, "labels": ids} for ids in rng.sample(text_ids, k=min(n_text, len(text_ids)))]
        texts_in_batch = len(rows)
        rows += [caption_example(tokenizer, LOOKUP_SEEDS + rng.randrange(10**8), positions > 0, character)
                 for _ in range(n_captions)]
        rows += [lookup_example(tokenizer, LOOKUP_SEEDS + rng.randrange(10**8), mix=mix, positions=positions,
                                character=character) for _ in range(spec.lm_batch_size - len(rows))]
        input_ids, labels = _pad_rows(rows, pad)
        logits = lm(input_ids=input_ids, attention_mask=(input_ids != pad).long()).logits[:, :-1]  # (B, T-1, V)
        targets = labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                      ignore_index=IGNORE_INDEX, reduction="none")
        per_token, counted = per_token.view(targets.shape), (targets != IGNORE_INDEX).float()
        # The plain text and the rest are averaged apart, so the few answer tokens weigh as much as the many
        # text tokens.
        loss = sum((per_token[part] * counted[part]).sum() / counted[part].sum().clamp(min=1)
                   for part in (slice(0, texts_in_batch), slice(texts_in_batch, None)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        step += 1
    return step


@torch.no_grad()
def text_lookup_accuracy(lm, tokenizer, n_scenes: int = 100, seed: int = 0,
                         kinds: Sequence[str] | None = None, character: bool = True) -> dict[str, float]:
    """How often the LM answers a text lookup exactly right, on fresh scenes, by number of objects.

    For each object count (1, 2, 3) and each kind (default: all of ``toyworld.TEXT_LOOKUP_KINDS``; without
    ``character``, the scenes in words do not tell their printed character and "text" is left out),
    ``n_scenes`` one-question records; an answer is right when
    every answer token (and the closing ``</s>``) is the LM's top choice given the ones before it, which is what
    greedy decoding would produce. Returns ``{"1 object": ..., "2 objects": ..., "3 objects": ...,
    "<kind>": ...}``, fractions in [0, 1].
    """
    from .prompts import IGNORE_INDEX
    from .toyworld import TEXT_LOOKUP_KINDS

    lm.eval()
    right: dict[str, list[bool]] = {}
    for n in (1, 2, 3):
        for kind in kinds or [k for k in TEXT_LOOKUP_KINDS if character or k != "text"]:
            rows = [lookup_example(tokenizer, 4 * 10**9 + seed * 100_003 + 1000 * n + i, n, [kind],
                                   character=character)
                    for i in range(n_scenes)]
            input_ids, labels = _pad_rows(rows, tokenizer.pad_token_id)
            logits = lm(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long()).logits
            targets = labels[:, 1:]
            ok = ((logits[:, :-1].argmax(-1) == targets) | (targets == IGNORE_INDEX)).all(1).tolist()
            right.setdefault(f"{n} object{'s' if n > 1 else ''}", []).extend(ok)
            right.setdefault(kind, []).extend(ok)
    return {k: sum(v) / len(v) for k, v in right.items()}


def _pad_rows(rows: Sequence[dict], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``{"input_ids", "labels"}`` rows into two ``(B, T)`` tensors (labels -100 on padding)."""
    from .prompts import IGNORE_INDEX

    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.tensor([r["input_ids"] + [pad] * (length - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (length - len(r["labels"])) for r in rows])
    return input_ids, labels


def _warmup_cosine(optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of ``steps``, then cosine decay to zero."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def tower_scenes(spec: BackboneSpec) -> list:
    """The toy scenes the vision tower pretrains on: seeded by ``spec.seed``, never the world's own images."""
    from .toyworld import make_scene

    return [make_scene(10**9 + spec.seed * 7919 + i) for i in range(spec.tower_scenes)]


def tower_data(spec: BackboneSpec) -> tuple[list[Image.Image], torch.Tensor, torch.Tensor]:
    """The vision tower's pretraining images, their labels ``(images, patches, attributes)`` and how often each is
    drawn (``pretrain_vision_tower``'s ``weights``: the whole views half of every batch, as before the glyph
    close-ups joined; a quarter, drawn like the rest, cost the toy run counting and "where": docs/findings.md).

    Each of ``tower_scenes`` gives two square images: the whole scene padded to a square (as stage 2 sees it)
    and a close-up as one HD grid cell shows it (``toyworld.close_up``), where the printed character is legible
    and labelled too (``toyworld.patch_labels``); then ``glyph_close_ups`` more close-ups, each around a
    character, so that the tower sees enough glyphs falling at every place across its patches to read them
    there (2,100 glyphs left it reading 71% of fresh ones, 14,100 98%: docs/findings.md).
    """
    from .encoder import expand_to_square, mean_colour
    from .toyworld import close_up, draw_scene, make_scene, patch_labels

    _, processor = tiny_vision_tower(spec.image_size, spec.patch_size)
    pad, grid, size = mean_colour(processor.image_mean), spec.image_size // spec.patch_size, spec.image_size
    images, labels = [], []
    rng = random.Random(spec.seed)
    for scene in tower_scenes(spec):
        images.append(expand_to_square(draw_scene(scene), pad))
        labels.append(patch_labels(scene, grid))
        image, view = close_up(scene, size, rng, around_character=rng.random() < 0.7, fill=pad)
        images.append(image)
        labels.append(patch_labels(scene, grid, view=view, character=True))
    scenes = (make_scene(2 * 10**9 + spec.seed * 7919 + i) for i in itertools.count())
    for scene in itertools.islice((s for s in scenes if s.character), spec.glyph_close_ups):
        image, view = close_up(scene, size, rng, around_character=True, fill=pad)
        images.append(image)
        labels.append(patch_labels(scene, grid, view=view, character=True))
    weights = torch.ones(len(images))
    # the whole views (every other image of the first 2 * tower_scenes) weigh as much as all the close-ups together
    weights[0:2 * spec.tower_scenes:2] = (len(images) - spec.tower_scenes) / spec.tower_scenes
    return images, torch.tensor(labels), weights


# ----------------------------------------------------------------------------- building, shipping and loading

SHIPPED = Path(__file__).parent / "toy_backbones"  # the default build, package data (like a hub checkpoint)


def build_backbones(out: str | Path, spec: BackboneSpec | None = None, progress: bool = True,
                    command: str = "", replace: bool = False) -> Path:
    """Build the toy tokenizer, vision tower and LM from a seed, probe them, and save them under ``out``.

    Writes ``out/vision`` and ``out/llm`` (ordinary Hugging Face checkpoints: ``MiniLlava.from_backbones(
    out / "vision", out / "llm")``) and ``out/manifest.json``: the spec, the toy-world version, the command,
    commit, wall time, device, and the probe results (``probe_backbones``). The folder is built aside and moved
    into place at the end, so an interrupted build never leaves a folder that looks finished. A finished build
    already in ``out`` is kept unless ``replace``.
    """
    import importlib.metadata
    import platform
    import subprocess
    import time

    from .toyworld import ATTRIBUTES, WORLD_VERSION, building_folder, language_corpus, move_into_place, object_phrases

    spec, out, started = spec or BackboneSpec(), Path(out), time.time()
    texts = language_corpus(spec.corpus_scenes, spec.seed)
    tokenizer = train_tokenizer(texts + _template_text(), vocab_size=spec.vocab_size,
                                phrases=object_phrases())
    # The pretraining seeds torch itself (spec.seed); fork_rng gives the caller back its random state, so what
    # the caller does next (e.g. initialising a connector) is the same whether the backbones were built or not.
    with torch.random.fork_rng(devices=[]):
        images, labels, weights = tower_data(spec)
        tower, processor = pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec,
                                                  progress, weights)
        lm_history: list[dict] = []
        lm = pretrain_language_model(tokenizer, texts, spec, progress, lm_history)
        probes = probe_backbones(tower, processor, lm, tokenizer, spec.probe_scenes)
    built = building_folder(out)
    save_backbone(built / "vision", tower, processor)
    save_backbone(built / "llm", lm, tokenizer)
    try:  # the commit the code came from, marked when the working tree had changes
        here = Path(__file__).parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                               text=True).stdout.strip()
        commit += "+uncommitted" if commit and dirty else ""
    except OSError:
        commit = ""
    manifest = {"spec": asdict(spec), "backbones_version": BACKBONES_VERSION, "world_version": WORLD_VERSION,
                "command": command or f"minillava backbones build --out {out}", "commit": commit or "unknown",
                "wall_time_s": round(time.time() - started), "device": f"{platform.machine()} CPU, "
                f"{torch.get_num_threads()} threads" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                "probes": probes, "lm_text_lookups_during_pretraining": lm_history,
                # the same seed and code give the same weights only with the same libraries (docs/findings.md)
                "versions": {lib: importlib.metadata.version(lib) for lib in ("torch", "transformers", "tokenizers")}}
    (built / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    move_into_place(built, out, lambda f: not replace and (f / "manifest.json").exists())
    return out


def probe_backbones(tower, processor, lm, tokenizer, n_scenes: int = 100, seed: int = 0) -> dict:
    """What the backbones bring, on scenes neither saw: ``{"text lookup": text_lookup_accuracy(...),
    "patches": the tower's patch probes (toyreport.probe_patches, on 4 * n_scenes scenes)}``."""
    from .encoder import VisionEncoder
    from .toyreport import probe_patches

    encoder = VisionEncoder(tower, processor)
    return {"text lookup": text_lookup_accuracy(lm, tokenizer, n_scenes, seed),
            "patches": probe_patches(encoder, 4 * n_scenes, seed)}


def read_manifest(folder: str | Path = SHIPPED) -> dict:
    """The ``manifest.json`` of a backbones folder, with a clear error if it is not one."""
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a toy backbones folder. Build one with "
                                "`minillava backbones build --out DIR`")
    return json.loads(path.read_text())


def toy_backbones(spec: BackboneSpec | None = None, progress: bool = True) -> tuple[Path, Path]:
    """The toy vision tower and LM folders: the shipped build, or for another ``spec`` one built once into the
    cache (``minillava backbones build`` does the same into a folder of your choice).

    Returns ``(vision_dir, llm_dir)``: ``MiniLlava.from_backbones(vision_dir, llm_dir)``.
    """
    from .toyworld import WORLD_VERSION

    if spec is None or spec == BackboneSpec():
        manifest = read_manifest(SHIPPED)
        if (manifest["spec"] != asdict(BackboneSpec()) or manifest["world_version"] != WORLD_VERSION
                or manifest.get("backbones_version") != BACKBONES_VERSION):
            raise RuntimeError(f"the shipped toy backbones ({SHIPPED}) were built for another spec or toy-world "
                               "version than this code's; rebuild them with `minillava backbones build --out "
                               f"{SHIPPED}`")
        return SHIPPED / "vision", SHIPPED / "llm"
    root = cache_dir() / f"backbones-{spec.key(str(BACKBONES_VERSION), str(WORLD_VERSION))}"
    if not (root / "manifest.json").exists():
        build_backbones(root, spec, progress)
    return root / "vision", root / "llm"


def toy_setup(train_images: int = 5000, eval_images: int = 200, seed: int = 0, fast: bool = False,
              progress: bool = True, backbones: str | Path | None = None) -> tuple[Path, Path, Path]:
    """The toy world (generated once, then reused from the cache) and the toy backbones: the shipped ones, or
    ``backbones``, a folder written by ``minillava backbones build``.

    Returns ``(world, vision_dir, llm_dir)``. ``fast``: 200 training images (for checking the pipeline, not
    for results).
    """
    from .toyworld import write_world

    if fast:
        train_images, eval_images = 200, 8
    world = write_world(cache_dir() / f"world-{train_images}-{eval_images}-{seed}", train_images, eval_images, seed,
                        progress=progress)
    if backbones is not None:
        read_manifest(backbones)  # a clear error if the folder is not a build
        return world, Path(backbones) / "vision", Path(backbones) / "llm"
    return (world, *toy_backbones(progress=progress))


def _template_text() -> list[str]:
    """The fixed strings of the prompts, so the tokenizer has compact tokens for them."""
    from .prompts import MULTIPLE_CHOICE, REGION_TO_TEXT, SHORT_ANSWER, TEMPLATES, TEXT_TO_REGION

    return [t.system + " USER: ASSISTANT:" for t in TEMPLATES.values()] * 50 + \
        [SHORT_ANSWER, MULTIPLE_CHOICE, REGION_TO_TEXT, TEXT_TO_REGION] * 50
