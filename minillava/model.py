"""MiniLlava: vision encoder + connector + any Hugging Face causal language model.

The whole LLaVA idea in one forward pass (shapes for CLIP-L/336 + Vicuna-7B, H = 4096):

    pixel_values (n_img, 3, 336, 336) --encoder--> (n_img, 576, 1024) --connector--> (n_img, 576, H)
    input_ids (B, T), holding 576 image-token ids per image --embed--> (B, T, H)
    the image-token positions are overwritten, in order, by the projected features (masked_scatter)
    --> language model --> logits (B, T, vocab), loss on the positions whose label is not -100

The prompt formatter (``prompts.py``) has already expanded every ``<image>`` into as many image-token ids as
the image has features, so the sequence length never changes inside the model: labels, attention masks and
padding stay simple, and the layout is exactly transformers' ``LlavaForConditionalGeneration`` (``convert.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .connector import build_connector
from .data import pad_batch
from .encoder import VisionEncoder, to_rgb
from .hd import HDConfig, HDGrid, split_into_cells
from .prompts import IGNORE_INDEX, IMAGE, prepare_tokenizer, tokenize_conversation, with_format_prompt

CONFIG_NAME = "minillava_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class MiniLlavaConfig:
    """Everything needed to rebuild a MiniLlava without its original checkpoints (saved as JSON)."""

    vision_config: dict  # the vision tower's transformers config (CLIPVisionConfig.to_dict(), ...)
    text_config: dict  # the language model's transformers config (LlamaConfig.to_dict(), ...)
    image_token_id: int
    connector: str = "mlp2x_gelu"
    feature_layer: int = -2
    select: str = "patch"
    hd: dict | None = None  # HDConfig fields: the grid HD encoder (LLaVA-1.5-HD) instead of one cell per image
    sources: dict = field(default_factory=dict)  # where the backbones came from, for the record


def _hf_config(d: dict):
    """A transformers config from its ``to_dict()`` (the inverse of ``config.to_dict()``)."""
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


class MiniLlava(nn.Module):
    """LLaVA-1.5: ``encoder`` (frozen vision tower) -> ``connector`` -> ``lm`` (a causal LM).

    Also holds the ``tokenizer`` (with the ``<image>`` token) so that one ``from_pretrained`` gives a model
    that can read images and answer; the image preprocessing lives in ``encoder.preprocess``.
    """

    def __init__(self, config: MiniLlavaConfig, encoder: VisionEncoder, lm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.connector = build_connector(config.connector, encoder.hidden_size, lm.config.hidden_size)
        self.hd = None
        if config.hd is not None:
            if encoder.num_features != encoder.num_patches:
                raise ValueError("the HD encoder stitches patch features: use select='patch'")
            self.hd = HDGrid(HDConfig(**config.hd), encoder.image_size, encoder.patch_size, lm.config.hidden_size)
        self.lm = lm
        self.tokenizer = tokenizer
        self.image_token_id = config.image_token_id
        if self.image_token_id >= lm.get_input_embeddings().num_embeddings:
            raise ValueError(f"image token id {self.image_token_id} is outside the LM's embedding table "
                             f"({lm.get_input_embeddings().num_embeddings} rows)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbones(cls, vision: str, llm: str, connector: str = "mlp2x_gelu", feature_layer: int = -2,
                       select: str = "patch", hd: HDConfig | None = None, dtype: torch.dtype | None = None,
                       attn_implementation: str | None = None) -> MiniLlava:
        """A fresh LLaVA from a vision tower and an LM (hub names or local folders); the connector is new.

        ``MiniLlava.from_backbones("openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")`` is the
        starting point of LLaVA-1.5 stage 1. The tokenizer gets ``<image>`` (and a pad token) if it lacks them,
        and the LM's embeddings grow to match. ``hd=HDConfig()`` makes it LLaVA-1.5-HD (see ``hd.py``).
        """
        encoder = VisionEncoder.from_pretrained(vision, feature_layer=feature_layer, select=select, dtype=dtype)
        kwargs = {k: v for k, v in (("dtype", dtype), ("attn_implementation", attn_implementation)) if v}
        lm = AutoModelForCausalLM.from_pretrained(llm, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(llm)
        image_token_id = prepare_tokenizer(tokenizer)
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tokenizer))
        config = MiniLlavaConfig(vision_config=encoder.tower.config.to_dict(), text_config=lm.config.to_dict(),
                                 image_token_id=image_token_id, connector=connector, feature_layer=feature_layer,
                                 select=select, hd=asdict(hd) if hd is not None else None,
                                 sources={"vision": vision, "llm": llm})
        model = cls(config, encoder, lm, tokenizer)
        return model.to(dtype) if dtype is not None else model

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write config JSON, weights (safetensors), tokenizer and image processor to ``folder``.

        ``state_dict``: the weights to write instead of this module's own - under DeepSpeed ZeRO-3 or FSDP the
        module holds only shards, and the trainer passes the gathered ``accelerator.get_state_dict(model)``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.text_config = self.lm.config.to_dict()  # the vocabulary may have grown
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        if state_dict is None:
            save_model(self, str(folder / WEIGHTS_NAME))  # tied weights (lm_head = embeddings) are stored once
        else:
            seen, tensors = set(), {}
            for key, value in state_dict.items():  # safetensors refuses tensors sharing memory: copy repeats
                value = value.detach().to("cpu").contiguous()
                tensors[key] = value.clone() if value.data_ptr() in seen else value
                seen.add(value.data_ptr())
            save_file(tensors, str(folder / WEIGHTS_NAME))
        self.tokenizer.save_pretrained(folder)
        self.encoder.image_processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> MiniLlava:
        """Load a folder written by ``save_pretrained``: no download, no pickle."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; is this a MiniLlava folder? (use convert.py "
                                    "for llava-hf or official LLaVA checkpoints)")
        config = MiniLlavaConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        model = cls.from_config(config, AutoTokenizer.from_pretrained(folder),
                                AutoImageProcessor.from_pretrained(folder, backend="pil"))
        load_model(model, str(folder / WEIGHTS_NAME), strict=True)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_config(cls, config: MiniLlavaConfig, tokenizer, image_processor) -> MiniLlava:
        """A randomly initialised MiniLlava of the architecture ``config`` describes."""
        vision_config = _hf_config(config.vision_config)
        tower = MODEL_MAPPING[type(vision_config)](vision_config)
        encoder = VisionEncoder(tower, image_processor, feature_layer=config.feature_layer, select=config.select)
        lm = AutoModelForCausalLM.from_config(_hf_config(config.text_config))
        return cls(config, encoder, lm, tokenizer)

    # ------------------------------------------------------------------ forward

    def prepare_image(self, image: Image.Image, mode: str = "pad") -> dict:
        """One image -> ``{"pixel_values": (k, 3, S, S), "image_size": (W, H), "n_tokens": int}``.

        k = 1 for the base encoder (``mode`` = ``crop`` or ``pad``); for the HD encoder, k = the grid's cells
        (+ 1 global view) and ``mode`` is not used (the grid keeps the whole image). ``n_tokens`` is how many
        image-token positions the prompt needs for this image.
        """
        image = to_rgb(image)
        if self.hd is None:
            return {"pixel_values": self.encoder.preprocess([image], mode), "image_size": image.size,
                    "n_tokens": self.encoder.num_features}
        cells = split_into_cells(image, self.hd.config, self.encoder.image_size, self.encoder.pad_colour)
        pixels = self.encoder.image_processor(cells, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "image_size": image.size, "n_tokens": self.hd.layout(*image.size)["tokens"]}

    def image_features(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
        """All images' features in the LM's embedding space, images in order, flattened: (total_tokens, H).

        Base: (n_img, 3, S, S) -> encoder (n_img, N, D) -> connector (n_img, N, H) -> (n_img * N, H).
        HD: all cells of all images (n_cells, 3, S, S) go through the encoder in one call, then ``hd.assemble``
        uses ``image_sizes`` [(W, H), ...] to stitch each image's grid (see ``hd.py``).
        """
        features = self.encoder(pixel_values)  # (n, N, D)
        weight = next(self.connector.parameters(), None)
        if weight is not None:
            features = features.to(weight.dtype)
        features = self.connector(features)  # (n, N, H)
        if self.hd is None:
            return features.reshape(-1, features.shape[-1])
        if image_sizes is None:
            raise ValueError("the HD encoder needs image_sizes [(W, H), ...] to reassemble the grid cells")
        return torch.cat(self.hd.assemble(features, [tuple(map(int, s)) for s in image_sizes]))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_sizes=None) -> torch.Tensor:
        """Token embeddings (B, T, H) with the image-token positions filled by image features, in order.

        Image features fill the image positions row by row, left to right: image k of the batch (the k-th
        ``<image>`` block in reading order) must be image k of ``pixel_values``. Text-only rows have no block.
        """
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        image_mask = input_ids == self.image_token_id  # (B, T)
        n_positions = int(image_mask.sum())
        if pixel_values is None or len(pixel_values) == 0:
            if n_positions:
                raise ValueError(f"input_ids hold {n_positions} image-token positions but no pixel_values were given")
            if self.training:
                # A text-only batch leaves the connector out of the graph, which hangs distributed training
                # (DDP waits for its gradients). Adding 0 x its parameters keeps it in, at no cost.
                embeds = embeds + 0.0 * sum(p.sum() for p in self.connector.parameters())
            return embeds
        features = self.image_features(pixel_values, image_sizes)  # (total_tokens, H)
        if n_positions != features.shape[0]:
            n_img = len(image_sizes) if image_sizes is not None else len(pixel_values)
            raise ValueError(f"image features and image tokens do not match: input_ids hold {n_positions} "
                             f"image-token positions, but the {n_img} image(s) give {features.shape[0]} features")
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_sizes=None, **lm_kwargs):
        """Logits and, given labels, the token-averaged cross-entropy over positions whose label is not -100.

        Returns the LM's output (``.loss``, ``.logits``). Without labels, ``.logits`` is ``(B, T, V)``. With
        labels, the LM head runs only where the next token has a label (the answers): image and prompt positions,
        most of a LLaVA batch, never produce a row of vocabulary logits. ``.logits`` is then ``(K, V)``, one row
        per labelled token in reading order, and the loss equals the full computation's.
        """
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        if labels is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, **lm_kwargs)
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = nn.functional.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # (B, T): the head's positions
        # logits_to_keep is the LM's own hook (transformers >= 5): a boolean (B, T) mask keeps those positions'
        # hidden states before the head, flattened to (K, H), whatever the architecture does after the head
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, **lm_kwargs)
        out.loss = nn.functional.cross_entropy(out.logits.float(), targets[keep[:, :-1]])  # (K, V), (K,)
        return out

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float | None = None, image_sizes=None,
                 use_cache: bool = True, streamer=None) -> torch.Tensor:
        """Batched generation with the LM's KV cache; returns only the new tokens (B, <= max_new_tokens).

        Rows must be left-padded (``pad_batch(..., padding_side="left")``). ``temperature=0`` is greedy
        decoding (every LLaVA benchmark); a row that ends (EOS) is padded with the pad token.
        ``use_cache=False`` (greedy only) is the reference decoding: the whole sequence is recomputed at every step.
        ``streamer``: a transformers streamer (e.g. ``TextStreamer``), given each new token as it is made.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding: some rows end with padding (attention_mask 0)")
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        sampling = temperature > 0
        if not use_cache:
            if sampling or streamer is not None:
                raise ValueError("use_cache=False supports greedy decoding (temperature=0) without a streamer only")
            return self._generate_without_cache(embeds, attention_mask, max_new_tokens)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling,
                                  temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                                  eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                  bos_token_id=self.tokenizer.bos_token_id, use_cache=use_cache)
        # Given only inputs_embeds, transformers' generate returns only the new tokens.
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config,
                                streamer=streamer)

    def _generate_without_cache(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                                max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding that recomputes all positions every step (no KV cache): slow, simple, the reference."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        new = attention_mask.new_empty(len(embeds), 0)
        done = torch.zeros(len(embeds), dtype=torch.bool, device=embeds.device)
        for _ in range(max_new_tokens):
            mask = torch.cat([attention_mask, torch.ones_like(new)], dim=1)  # (B, T + generated)
            inputs = torch.cat([embeds, self.lm.get_input_embeddings()(new)], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
            logits = self.lm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                             use_cache=False).logits[:, -1]  # (B, V)
            token = torch.where(done, pad, logits.argmax(-1))
            new = torch.cat([new, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
        return new

    def answer(self, images: Sequence[Image.Image | None], questions: Sequence[str],
               template: str = "vicuna_v1", format_prompt: str | None = None, preprocess: str = "pad",
               max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        """Answer one question per image (``None`` for a text-only question), as the LLaVA-1.5 evaluation does.

        >>> model.answer([Image.open("cat.jpg")], ["What animal is this?"], format_prompt=SHORT_ANSWER)
        """
        batch = self.prompt_batch(images, questions, template, format_prompt, preprocess)
        new_tokens = self.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                   max_new_tokens, temperature, image_sizes=batch["image_sizes"])
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def chat(self, image: Image.Image | None, conversation: Sequence[dict], template: str = "vicuna_v1",
             preprocess: str = "pad", max_new_tokens: int = 512, temperature: float = 0.0, streamer=None) -> str:
        """The assistant's next reply in a multi-turn conversation about one image (``None``: text only), as the
        official ``llava.serve.cli`` does it.

        ``conversation`` is LLaVA's turns so far, ``[{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]``,
        ending with a human turn; the image goes before the first question (unless a turn already holds the
        ``<image>`` marker). ``streamer`` (e.g. ``transformers.TextStreamer(model.tokenizer, skip_prompt=True,
        skip_special_tokens=True)``) prints the reply as it is made.

        >>> turns = [{"from": "human", "value": "What is in the picture?"}]
        >>> turns += [{"from": "gpt", "value": model.chat(image, turns)}, {"from": "human", "value": "Where?"}]
        >>> model.chat(image, turns)
        """
        batch = self.prompt_batch([image], [conversation], template, preprocess=preprocess)
        new_tokens = self.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens,
                                   temperature, image_sizes=batch["image_sizes"], streamer=streamer)
        return self.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()

    def prompt_batch(self, images: Sequence[Image.Image | None], questions: Sequence[str | Sequence[dict]],
                     template: str = "vicuna_v1", format_prompt: str | None = None, preprocess: str = "pad") -> dict:
        """The generation prompts of ``answer`` and ``chat`` as one left-padded batch on the model's device:
        ``input_ids``, ``attention_mask`` (B, T), ``pixel_values`` (None without images) and ``image_sizes``.

        Each question is a string (one turn; ``format_prompt`` appended) or a conversation so far (LLaVA turns
        ending with a human one). The image goes before the first question unless a turn holds ``<image>``."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        samples, prepared = [], []
        for image, question in zip(images, questions):
            if isinstance(question, str):
                question = [{"from": "human",
                             "value": with_format_prompt(question, format_prompt) if format_prompt else question}]
            turns = [dict(turn) for turn in question]
            counts = []
            if image is not None:
                if turns and not any(IMAGE in str(turn.get("value")) for turn in turns):
                    turns[0]["value"] = IMAGE + "\n" + turns[0]["value"]
                prepared.append(self.prepare_image(image, preprocess))
                counts.append(prepared[-1]["n_tokens"])
            samples.append(tokenize_conversation(turns, self.tokenizer, self.image_token_id, counts, template,
                                                 for_generation=True))
        batch = pad_batch(samples, self.tokenizer.pad_token_id, padding_side="left")
        device = next(self.parameters()).device
        pixels = torch.cat([p["pixel_values"] for p in prepared]).to(device) if prepared else None
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                "pixel_values": pixels, "image_sizes": [p["image_size"] for p in prepared]}
