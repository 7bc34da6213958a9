"""Checkpoints in and out: transformers' Llava format, and the official LLaVA-1.5 release.

- ``export_hf_llava(model, folder)`` writes a folder that ``transformers.LlavaForConditionalGeneration`` and
  ``AutoProcessor`` load (same weights, same logits); ``import_hf_llava(folder)`` reads one back (also
  llava-hf's published checkpoints such as ``llava-hf/llava-1.5-7b-hf``).
- ``load_official_projector(path)`` reads a stage-1 ``mm_projector.bin`` (keys ``model.mm_projector.{0,2}.*``).
- ``import_official_llava(folder)`` reads a full official checkpoint (``liuhaotian/llava-v1.5-7b``): LLM
  shards + connector; the CLIP weights come from ``mm_vision_tower`` (official checkpoints do not carry them).

Key mapping (MiniLlava <-> transformers Llava, in-memory names):

    encoder.tower.*     <-> model.vision_tower.*
    connector.0.*       <-> model.multi_modal_projector.linear_1.*
    connector.2.*       <-> model.multi_modal_projector.linear_2.*
    lm.model.*          <-> model.language_model.*
    lm.lm_head.weight   <-> lm_head.weight

Weights are never unpickled: safetensors, or ``torch.load(weights_only=True)`` for official ``.bin`` files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
)

from .connector import official_projector_state_dict
from .encoder import VisionEncoder
from .model import CONFIG_NAME, MiniLlava, MiniLlavaConfig
from .prompts import IMAGE, prepare_tokenizer


def _feature_strategy(encoder: VisionEncoder) -> str:
    """transformers' ``vision_feature_select_strategy``: "default" drops token 0, "full" keeps all."""
    return "default" if encoder.has_cls and encoder.select == "patch" else "full"


def export_hf_llava(model: MiniLlava, folder: str | Path) -> Path:
    """Write ``model`` as a transformers ``LlavaForConditionalGeneration`` folder (config, weights, processor).

    The exported image processor pads to a square with the mean colour (``do_pad=True``), as minillava's
    ``pad`` preprocessing does, so ``AutoProcessor`` gives the same pixels.
    """
    if model.hd is not None:
        raise ValueError("transformers' Llava has no grid HD encoder; export a base (one-cell) model")
    if model.config.connector != "mlp2x_gelu":
        raise ValueError(f"transformers' Llava projector is Linear-GELU-Linear (mlp2x_gelu); this model uses "
                         f"{model.config.connector!r}, which it cannot express")
    folder = Path(folder)
    encoder, lm = model.encoder, model.lm
    config = LlavaConfig(vision_config=encoder.tower.config.to_dict(), text_config=lm.config.to_dict(),
                         image_token_id=model.image_token_id, projector_hidden_act="gelu",
                         vision_feature_layer=encoder.feature_layer,
                         vision_feature_select_strategy=_feature_strategy(encoder),
                         multimodal_projector_bias=True, image_seq_length=encoder.num_features,
                         tie_word_embeddings=lm.config.tie_word_embeddings)
    state = {f"model.vision_tower.{k}": v for k, v in encoder.tower.state_dict().items()}
    for ours, theirs in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{p}"] = model.connector.state_dict()[f"{ours}.{p}"]
    for k, v in lm.state_dict().items():
        state[k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k] = v
    hf = LlavaForConditionalGeneration(config).to(next(model.parameters()).dtype)
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(folder)

    ip = encoder.image_processor
    image_processor = LlavaImageProcessorPil(do_pad=True, size=ip.size, crop_size=ip.crop_size,
                                             image_mean=ip.image_mean, image_std=ip.image_std)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=model.tokenizer,
                               patch_size=encoder.patch_size, image_token=IMAGE,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               num_additional_image_tokens=1 if encoder.has_cls else 0)
    processor.save_pretrained(folder)
    return folder


def import_hf_llava(folder: str | Path, dtype: torch.dtype | None = None) -> MiniLlava:
    """Read a transformers Llava folder (ours or llava-hf's) into a MiniLlava, reusing its modules."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    hf = LlavaForConditionalGeneration.from_pretrained(folder, **kwargs)
    processor = AutoProcessor.from_pretrained(folder)
    cfg = hf.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(f"{folder}: several vision feature layers {cfg.vision_feature_layer} are not supported")
    image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    tower = hf.model.vision_tower
    has_cls = getattr(tower.embeddings, "class_embedding", None) is not None
    select = "patch" if cfg.vision_feature_select_strategy == "default" or not has_cls else "full"
    encoder = VisionEncoder(tower, image_processor, feature_layer=cfg.vision_feature_layer, select=select)

    with torch.device("meta"):  # an empty shell: its two children are replaced by the loaded modules below
        lm = AutoModelForCausalLM.from_config(cfg.text_config, **kwargs)
    lm.model, lm.lm_head = hf.model.language_model, hf.lm_head  # reuse the loaded modules, no copy
    tokenizer = processor.tokenizer
    if tokenizer.convert_tokens_to_ids(IMAGE) != cfg.image_token_id:
        raise ValueError(f"{folder}: the tokenizer maps {IMAGE!r} to {tokenizer.convert_tokens_to_ids(IMAGE)}, "
                         f"the config says image_token_id={cfg.image_token_id}")
    prepare_tokenizer(tokenizer)  # a pad token, if missing
    config = MiniLlavaConfig(vision_config=tower.config.to_dict(), text_config=cfg.text_config.to_dict(),
                             image_token_id=cfg.image_token_id, connector="mlp2x_gelu",
                             feature_layer=cfg.vision_feature_layer, select=select,
                             sources={"hf_llava": str(folder)})
    model = MiniLlava(config, encoder, lm, tokenizer)
    projector = hf.model.multi_modal_projector
    model.connector.load_state_dict({"0.weight": projector.linear_1.weight, "0.bias": projector.linear_1.bias,
                                     "2.weight": projector.linear_2.weight, "2.bias": projector.linear_2.bias})
    return model


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or an official ``.bin`` read without unpickling code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_official_projector(path: str | Path) -> dict[str, torch.Tensor]:
    """The connector weights of an official stage-1 file, keyed for ``MiniLlava.connector.load_state_dict``."""
    return official_projector_state_dict(_load_weights(Path(path)))


def import_official_llava(folder: str | Path, vision: str | None = None,
                          dtype: torch.dtype | None = None) -> MiniLlava:
    """Read an official LLaVA-1.5 checkpoint folder (``config.json`` with ``mm_*`` fields + LLM shards).

    ``vision`` overrides the config's ``mm_vision_tower`` (a hub name or local CLIP folder). The official
    code marks images with the placeholder id -200 instead of a vocabulary token, so the tokenizer gets an
    ``<image>`` token here and the embeddings grow by one row (never read: image positions are overwritten).
    """
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    if "mm_projector_type" not in raw and "mm_hidden_size" not in raw:
        raise ValueError(f"{folder}/config.json has no mm_* fields: not an official LLaVA checkpoint")
    vision = vision or raw.get("mm_vision_tower")
    if not vision:
        raise ValueError(f"{folder}: config.json names no mm_vision_tower; pass vision=...")
    select = {"patch": "patch", "cls_patch": "full"}[raw.get("mm_vision_select_feature", "patch")]
    encoder = VisionEncoder.from_pretrained(vision, feature_layer=raw.get("mm_vision_select_layer", -2),
                                            select=select, dtype=dtype)

    text = {k: v for k, v in raw.items() if not k.startswith(("mm_", "tune_mm", "freeze_mm", "image_aspect"))}
    model_type = text.pop("model_type").removeprefix("llava_")  # llava_llama -> llama
    text.pop("architectures", None)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **text))
    shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_load_weights(shard))
    projector = official_projector_state_dict(state)
    lm_state = {k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))}
    lm.load_state_dict(lm_state, strict=True)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_token_id = prepare_tokenizer(tokenizer)
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    config = MiniLlavaConfig(vision_config=encoder.tower.config.to_dict(), text_config=lm.config.to_dict(),
                             image_token_id=image_token_id, connector=raw.get("mm_projector_type", "linear"),
                             feature_layer=encoder.feature_layer, select=select,
                             sources={"official_llava": str(folder), "vision": vision})
    model = MiniLlava(config, encoder, lm, tokenizer)
    model.connector.load_state_dict(projector, strict=True)
    return model.to(dtype) if dtype is not None else model


def load_any(path: str | Path, dtype: torch.dtype | None = None) -> MiniLlava:
    """Load whatever LLaVA folder ``path`` is: a ``minillava run`` folder, a MiniLlava folder, a transformers
    Llava folder (llava-hf) or an official LLaVA-1.5 checkpoint; a clear error otherwise."""
    folder = Path(path)
    if (folder / "stage2" / "model").is_dir():  # a run folder: its final model
        folder = folder / "stage2" / "model"
    if (folder / CONFIG_NAME).exists():
        return MiniLlava.from_pretrained(folder, dtype=dtype)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{path}: neither a minillava run or model folder nor a checkpoint with config.json")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") == "llava":
        return import_hf_llava(folder, dtype=dtype)
    if "mm_projector_type" in raw or "mm_hidden_size" in raw:
        return import_official_llava(folder, dtype=dtype)
    raise ValueError(f"{folder}/config.json (model_type {raw.get('model_type')!r}) is not a LLaVA checkpoint")
