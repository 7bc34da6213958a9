"""The embedded default backbones: a tiny tokenizer, vision tower and language model, in Hugging Face format.

minillava never special-cases its own small models: they are ordinary transformers models (a CLIP vision
tower, a Llama LM, a ``tokenizers`` BPE tokenizer) saved with ``save_pretrained``, so that
``MiniLlava.from_backbones(folder_a, folder_b)`` is the very call that loads
``openai/clip-vit-large-patch14-336`` and ``lmsys/vicuna-7b-v1.5``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Llama's layout: <unk>=0, <s>=1, </s>=2; then the pad and image tokens LLaVA needs.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
BACKBONES_VERSION = 3  # bump when the pretraining changes, so cached backbones are rebuilt


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) that adds BOS like Llama's and knows ``<image>``.

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
    """Where minillava keeps built backbones and toy worlds: ``$MINILLAVA_CACHE`` or ``~/.cache/minillava``."""
    return Path(os.environ.get("MINILLAVA_CACHE", Path.home() / ".cache" / "minillava"))


@dataclass
class BackboneSpec:
    """Sizes and pretraining budgets of the toy backbones (the defaults run in about a minute on 2 cores)."""

    vocab_size: int = 1000
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 3
    lm_width: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    # 900 steps of 16 images (about 35 s) leave an object's shape linearly readable from its own patch features
    # about 90% of the time; 97% without the close-ups, but the HD encoder needs them (bench/tower_objectives.py).
    vision_steps: int = 900
    vision_batch_size: int = 16
    centre_weight: float = 1.0  # keep the tower's layer -2 features centred (see pretrain_vision_tower)
    lm_steps: int = 150
    lm_batch_size: int = 48
    seed: int = 0

    def key(self, *extra: str) -> str:
        blob = json.dumps([asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrain_vision_tower(images: Sequence[Image.Image], labels: torch.Tensor, classes: Sequence[int],
                          spec: BackboneSpec, progress: bool = True) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """A tiny CLIP vision tower pretrained to say what lies under each of its patches.

    ``images`` are square; ``labels`` is ``(images, patches, attributes)``: for each patch the class index of
    each attribute of what lies under it (the toy world's colour, shape, size and character), -100 where there is
    nothing to say; ``classes[i]`` is how many values attribute i has. One linear head per attribute reads every
    patch feature of the layer LLaVA uses (-2) and is trained with cross-entropy, plus a small penalty that keeps
    the features centred (measured with the earlier tagging objective: with it, a tiny LM learned to bind colours
    to shapes about three times faster in stage 2).

    Why not CLIP's contrastive loss, as the real tower was trained: at this size and a CPU-minute budget we
    measured that contrastive training on the toy captions learns colours but not shapes, and so does tagging
    (an image's score for "large red circle" is its best patch): a linear probe reads an object's shape from its
    own patches 72% of the time, a random tower 68-70%. Per-patch labels, at the same budget, give about 90%
    (97% on whole scenes alone; here half the images are close-ups for the HD encoder). See
    ``bench/tower_objectives.py``. The result is the same kind of thing as CLIP's patch features at layer -2 in
    LLaVA: each patch says what is there, which is what the LM needs to find "the red object".
    """
    torch.manual_seed(spec.seed)
    tower, processor = tiny_vision_tower(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers)
    pixels = processor(list(images), return_tensors="pt")["pixel_values"]  # (S, 3, H, W)
    heads = torch.nn.ModuleList([torch.nn.Linear(spec.vision_width, n) for n in classes])
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(spec.seed)
    tower.train()
    bar = tqdm(range(spec.vision_steps), desc="pretrain vision tower", disable=not progress)
    for _ in bar:
        batch = torch.randint(0, len(images), (spec.vision_batch_size,), generator=generator)
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
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return tower.eval(), processor


def pretrain_language_model(tokenizer, texts: Sequence[str], spec: BackboneSpec,
                            progress: bool = True) -> LlamaForCausalLM:
    """A tiny Llama trained on plain text of the toy world (next-token prediction), like a base LLM."""
    torch.manual_seed(spec.seed)
    lm = tiny_language_model(tokenizer, hidden_size=spec.lm_width, num_layers=spec.lm_layers,
                             num_heads=spec.lm_heads)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [tokenizer(t)["input_ids"] + [eos] for t in texts]  # BOS text EOS
    optimizer = torch.optim.AdamW(lm.parameters(), lr=2e-3, weight_decay=0.0)
    rng = random.Random(spec.seed)
    lm.train()
    for _ in tqdm(range(spec.lm_steps), desc="pretrain language model", disable=not progress):
        batch = [ids[i] for i in rng.sample(range(len(ids)), k=min(spec.lm_batch_size, len(ids)))]
        length = max(len(b) for b in batch)
        input_ids = torch.tensor([b + [pad] * (length - len(b)) for b in batch])
        labels = torch.where(input_ids == pad, -100, input_ids)
        loss = lm(input_ids=input_ids, attention_mask=(input_ids != pad).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return lm.eval()


def tower_scenes(spec: BackboneSpec, n: int = 2000) -> list:
    """The toy scenes the vision tower pretrains on: seeded by ``spec.seed``, never the world's own images."""
    from .toyworld import make_scene

    return [make_scene(10**9 + spec.seed * 7919 + i) for i in range(n)]


def tower_data(spec: BackboneSpec) -> tuple[list[Image.Image], torch.Tensor]:
    """The vision tower's pretraining images and their labels ``(images, patches, attributes)``.

    Each of ``tower_scenes`` gives two square images: the whole scene padded to a square (as stage 2 sees it)
    and a close-up at full resolution (as an HD grid cell sees it), where the printed character is legible and
    labelled too (``toyworld.patch_labels``).
    """
    from .encoder import expand_to_square, mean_colour
    from .toyworld import draw_scene, patch_labels

    _, processor = tiny_vision_tower(spec.image_size, spec.patch_size)
    pad, grid, size = mean_colour(processor.image_mean), spec.image_size // spec.patch_size, spec.image_size
    images, labels = [], []
    rng = random.Random(spec.seed)
    for scene in tower_scenes(spec):
        image = draw_scene(scene)
        images.append(expand_to_square(image, pad))
        labels.append(patch_labels(scene, grid))
        x, y = _native_crop(scene, size, rng)
        images.append(image.crop((x, y, x + size, y + size)))
        labels.append(patch_labels(scene, grid, view=(x, y, size), character=True))
    return images, torch.tensor(labels)


def toy_backbones(world: str | Path, spec: BackboneSpec | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Build (or reuse from the cache) the toy vision tower and LM for a toy world; returns their folders.

    The folders hold ordinary Hugging Face checkpoints: ``MiniLlava.from_backbones(vision_dir, llm_dir)``.
    """
    from .toyworld import ATTRIBUTES, building_folder, corpus, move_into_place  # toyworld does not depend on us

    spec = spec or BackboneSpec()
    world = Path(world)
    root = cache_dir() / f"backbones-{spec.key((world / 'world.json').read_text(), str(BACKBONES_VERSION))}"
    vision_dir, llm_dir = root / "vision", root / "llm"

    def complete(folder: Path) -> bool:
        return (folder / "vision" / "config.json").exists() and (folder / "llm" / "config.json").exists()

    if complete(root):
        return vision_dir, llm_dir
    texts = corpus(world)
    tokenizer = train_tokenizer(texts + _template_text(), vocab_size=spec.vocab_size)
    # The pretraining seeds torch itself (spec.seed); fork_rng gives the caller back its random state, so what
    # the caller does next (e.g. initialising a connector) is the same whether the backbones were built or cached.
    with torch.random.fork_rng(devices=[]):
        images, labels = tower_data(spec)
        tower, processor = pretrain_vision_tower(images, labels, [len(v) for v in ATTRIBUTES.values()], spec,
                                                  progress)
        lm = pretrain_language_model(tokenizer, texts, spec, progress)
    built = building_folder(root)
    save_backbone(built / "vision", tower, processor)
    save_backbone(built / "llm", lm, tokenizer)
    move_into_place(built, root, complete)
    return vision_dir, llm_dir


def toy_setup(train_images: int = 5000, eval_images: int = 100, seed: int = 0, fast: bool = False,
              progress: bool = True, vision_steps: int | None = None) -> tuple[Path, Path, Path]:
    """The toy world and its pretrained backbones, built once and then reused from the cache.

    Returns ``(world, vision_dir, llm_dir)``. ``fast``: 200 training images and backbones pretrained for a few
    steps only - for checking the pipeline, not for results. ``vision_steps``: pretrain the vision tower for that
    many steps instead (cached apart; the LM is the same, as its pretraining does not depend on the tower's).
    """
    from .toyworld import write_world

    if fast:
        train_images, eval_images = 200, 8
    world = write_world(cache_dir() / f"world-{train_images}-{eval_images}-{seed}", train_images, eval_images, seed,
                        progress=progress)
    spec = BackboneSpec(vision_steps=5, lm_steps=5) if fast else BackboneSpec()
    if vision_steps:
        spec.vision_steps = vision_steps
    vision_dir, llm_dir = toy_backbones(world, spec, progress=progress)
    return world, vision_dir, llm_dir


def _native_crop(scene, size: int, rng: random.Random) -> tuple[int, int]:
    """Top-left corner of a ``size`` x ``size`` crop at full resolution (what an HD grid cell sees), often around
    the printed character. The tower sees the world at both scales, as CLIP saw both whole scenes and close-ups
    (text included) in its training data."""
    if scene.character and rng.random() < 0.7:
        x = min(max(0, scene.char_xy[0] - rng.randint(4, size - 12)), scene.width - size)
        return x, scene.height - size
    return rng.randint(0, scene.width - size), rng.randint(0, scene.height - size)


def _template_text() -> list[str]:
    """The fixed strings of the prompts, so the tokenizer has compact tokens for them."""
    from .prompts import MULTIPLE_CHOICE, REGION_TO_TEXT, SHORT_ANSWER, TEMPLATES, TEXT_TO_REGION

    return [t.system + " USER: ASSISTANT:" for t in TEMPLATES.values()] * 50 + \
        [SHORT_ANSWER, MULTIPLE_CHOICE, REGION_TO_TEXT, TEXT_TO_REGION] * 50
