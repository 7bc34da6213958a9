"""The vision encoder wrapper: pixels -> patch features.

LLaVA-1.5 looks at an image through a frozen CLIP ViT-L/14 at 336 px and keeps, for every 14x14 patch, the
output of the *penultimate* transformer layer (``hidden_states[-2]``), with the CLS token dropped:

    pixels (B, 3, 336, 336) -> hidden_states[-2] (B, 1 + 576, 1024) -> drop CLS -> (B, 576, 1024)

``VisionEncoder`` wraps any vision tower that transformers can load (CLIP, SigLIP, ...) and does exactly that.
It also owns the image preprocessing, because the two belong together: the tower only understands images
resized and normalised the way it was trained.

Two preprocessing modes, as in the official code:
- ``crop``: the CLIP processor as is (shortest edge to the input size, centre crop). Stage 1 uses it.
- ``pad``: first paste the image centred on a square filled with the *mean colour* of the processor's
  normalisation, then process (the crop is then a no-op). Stage 2 and inference use it: nothing is cut away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoImageProcessor
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging as hf_logging

Preprocess = Literal["crop", "pad"]


MAX_SIDE = 2048  # longer sides are scaled down before padding: a 10000 x 10 strip must not pad to 300 MB


def to_rgb(image: Image.Image) -> Image.Image:
    """The one conversion every image goes through, in training, evaluation and ``answer`` alike.

    For the images LLaVA trains on (8-bit RGB, grayscale, palette) this is the official ``convert("RGB")``.
    Where ``convert("RGB")`` would lose the picture, it differs on purpose (docs/data_format.md): transparent
    images are composited on white (``convert`` keeps whatever colour hides under alpha 0, often black), and
    16-bit images are scaled to 8 bits (``convert`` clips them, which turns most of a 16-bit PNG white).
    """
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image of size {image.width}x{image.height} has no pixels")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Paste ``image`` centred on a square canvas of side max(w, h) filled with ``fill`` (official `expand2square`).

    An image whose longer side exceeds ``MAX_SIDE`` is first scaled down to it (the tower sees a few hundred
    pixels either way), so the canvas stays bounded however extreme the aspect ratio.
    """
    w, h = image.size
    if w == h:
        return image
    if max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = image.size
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def mean_colour(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """The pad colour: the processor's mean in 0..255, truncated as the official code does (CLIP: 122, 116, 104)."""
    return tuple(int(255 * m) for m in image_mean)


def load_vision_tower(name_or_path: str, **kwargs) -> nn.Module:
    """Load only the vision half of a checkpoint (a full CLIP/SigLIP checkpoint or a vision-only one).

    Works for a hub name (``openai/clip-vit-large-patch14-336``) or a local folder; the text tower of a full
    CLIP checkpoint is not loaded.
    """
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", config)  # full CLIP/SigLIP configs nest it
    if type(vision_config) not in MODEL_MAPPING:
        raise ValueError(f"{name_or_path!r}: no transformers vision model for config {type(vision_config).__name__}")
    tower_class = MODEL_MAPPING[type(vision_config)]  # e.g. CLIPVisionConfig -> CLIPVisionModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence the "text tower weights unused" report of a full CLIP checkpoint
    try:
        return tower_class.from_pretrained(name_or_path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


class VisionEncoder(nn.Module):
    """A frozen vision tower returning the patch features of one hidden layer.

    Args:
        tower: a transformers vision model (``CLIPVisionModel``, ``SiglipVisionModel``, ...).
        image_processor: the tower's image processor (``AutoImageProcessor``).
        feature_layer: which entry of ``hidden_states`` to return; -2 = output of the penultimate layer.
            (``hidden_states[0]`` is the embedding output, so for 24 layers -2 is the output of layer 23.)
        select: ``"patch"`` drops the CLS token when the tower has one (SigLIP has none, so nothing is
            dropped); ``"full"`` keeps every token.
        frozen: no gradients for the tower and its forward runs under ``torch.no_grad`` (LLaVA-1.5 both stages).

    ``num_features`` is N, the number of features per image: (image_size / patch_size)^2, e.g. 576 for
    CLIP-L/14 at 336 px, 256 at 224 px (plus one for CLS with ``select="full"``).
    """

    def __init__(self, tower: nn.Module, image_processor, feature_layer: int = -2,
                 select: Literal["patch", "full"] = "patch", frozen: bool = True):
        super().__init__()
        if select not in ("patch", "full"):
            raise ValueError(f"select must be 'patch' or 'full', got {select!r}")
        self.tower = tower
        self.image_processor = image_processor
        self.feature_layer = feature_layer
        self.select = select
        self.frozen = frozen
        config = tower.config
        self.image_size: int = config.image_size
        self.patch_size: int = config.patch_size
        self.hidden_size: int = config.hidden_size
        self.num_patches = (self.image_size // self.patch_size) ** 2
        # CLIP-family towers prepend a learned class embedding (CLS); SigLIP-family towers do not.
        self.has_cls = getattr(tower.embeddings, "class_embedding", None) is not None
        self.num_features = self.num_patches + (1 if self.has_cls and select == "full" else 0)
        if frozen:
            self.tower.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, feature_layer: int = -2, select: str = "patch",
                        frozen: bool = True, dtype: torch.dtype | None = None) -> VisionEncoder:
        """Load tower + processor from a hub name or local folder (no text tower)."""
        tower = load_vision_tower(name_or_path, **({"dtype": dtype} if dtype is not None else {}))
        # The PIL backend needs no torchvision and is the reference implementation of the processor.
        processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
        return cls(tower, processor, feature_layer=feature_layer, select=select, frozen=frozen)

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        return mean_colour(self.image_processor.image_mean)

    def preprocess(self, images: Sequence[Image.Image], mode: Preprocess = "pad") -> torch.Tensor:
        """PIL images -> normalised pixel tensor (B, 3, S, S), S = the tower's input size."""
        if mode not in ("crop", "pad"):
            raise ValueError(f"preprocess mode must be 'crop' or 'pad', got {mode!r}")
        images = [to_rgb(im) for im in images]
        if mode == "pad":
            images = [expand_to_square(im, self.pad_colour) for im in images]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"image processor produced {tuple(pixel_values.shape[-2:])} images but the tower "
                             f"expects {self.image_size}x{self.image_size}: check preprocessor_config.json")
        return pixel_values

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, D) features of ``feature_layer``; N = ``num_features``."""
        param = next(self.tower.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.tower(pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]  # (B, [1 +] num_patches, D)
        expected = self.num_patches + (1 if self.has_cls else 0)
        if features.shape[1] != expected:
            raise ValueError(f"vision tower returned {features.shape[1]} tokens, expected {expected} "
                             f"({self.num_patches} patches{' + CLS' if self.has_cls else ''}); "
                             f"is the input {self.image_size}x{self.image_size}?")
        if self.has_cls and self.select == "patch":
            features = features[:, 1:]  # drop CLS -> (B, num_patches, D)
        return features
