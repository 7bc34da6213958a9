"""The embedded default backbones: a tiny tokenizer, vision tower and language model, in Hugging Face format.

minillava never special-cases its own small models: they are ordinary transformers models (a CLIP vision
tower, a Llama LM, a ``tokenizers`` BPE tokenizer) saved with ``save_pretrained``, so that
``MiniLlava.from_backbones(folder_a, folder_b)`` is the very call that loads
``openai/clip-vit-large-patch14-336`` and ``lmsys/vicuna-7b-v1.5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

# Llama's layout: <unk>=0, <s>=1, </s>=2; then the pad and image tokens LLaVA needs.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


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
