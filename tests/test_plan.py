"""`minillava plan`: parameter counts against transformers' own models (built on the meta device: no weights)
and the paper's projector size; memory arithmetic by hand."""

from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from minillava.cli import main
from minillava.plan import LLMS, VISION, clip_vision_parameters, llama_parameters, plan
from minillava.trainer import Recipe


def count_on_meta(model_cls, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(config).parameters())


@pytest.mark.parametrize("name", sorted(LLMS))
def test_llama_count_matches_transformers(name):
    s = LLMS[name]
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                         intermediate_size=s["intermediate"], num_attention_heads=s["heads"], tie_word_embeddings=False)
    assert llama_parameters(**s) == count_on_meta(LlamaForCausalLM, config)


def test_clip_count_matches_transformers():
    s = VISION["openai/clip-vit-large-patch14-336"]
    config = CLIPVisionConfig(image_size=s["image"], patch_size=s["patch"], hidden_size=s["hidden"],
                              num_hidden_layers=s["layers"], intermediate_size=s["intermediate"],
                              num_attention_heads=16)
    assert clip_vision_parameters(**s) == count_on_meta(CLIPVisionModel, config)


def test_paper_sizes_and_memory():
    stage1, stage2 = Recipe(stage=1, per_device_batch_size=32), Recipe(stage=2, per_device_batch_size=16,
                                                                        gradient_checkpointing=True)
    p1 = plan(stage1, "lmsys/vicuna-7b-v1.5", strategy="zero2")
    assert p1.connector_parameters == 20_979_712 and p1.trainable == 20_979_712
    assert p1.llm_parameters == 6_738_415_616
    p13 = plan(stage1, "lmsys/vicuna-13b-v1.5")
    assert p13.connector_parameters == 1024 * 5120 + 5120 + 5120 * 5120 + 5120
    p2 = plan(stage2, "lmsys/vicuna-7b-v1.5", gpus=8, strategy="zero3")
    everything = p2.llm_parameters + p2.vision_parameters + p2.connector_parameters
    # ZeRO-3: bf16 weights, bf16 grads and fp32 AdamW (12 bytes) of the trainable part, all split 8 ways
    assert p2.memory_gb["weights"] == pytest.approx(2 * everything / 8 / 1e9)
    assert p2.memory_gb["optimizer"] == pytest.approx(12 * p2.trainable / 8 / 1e9)
    ddp = plan(stage2, "lmsys/vicuna-7b-v1.5", strategy="ddp")
    assert ddp.memory_gb["total"] > 80 > p2.memory_gb["total"]  # full fine-tuning of 7B needs sharding
    assert p2.paper_hours == 10.0 and 3 < p2.hours < 30
    # logits of the LM head, fp32, one micro-batch of 16: 976 positions (576 image + 400 text) vs 150 labelled
    assert p2.logits_gb["every position"] == pytest.approx(4 * 16 * 976 * 32000 / 1e9)
    assert p2.logits_gb["labelled only"] == pytest.approx(4 * 16 * 150 * 32000 / 1e9)


def test_plan_command(capsys):
    main(["plan", "--recipe", str(Path(__file__).parent.parent / "configs/recipes/llava15-7b-stage2.yaml")])
    out = capsys.readouterr().out
    assert "connector 20,979,712" in out and "fits" in out and "paper: 10 h" in out
    assert "at the labelled ones only" in out and "GB saved" in out
