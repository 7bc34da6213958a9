"""Interop: export to transformers' Llava and back, official LLaVA-1.5 connector and checkpoints."""

import json

import pytest
import torch
from conftest import make_image
from transformers import AutoProcessor, LlamaForCausalLM, LlavaForConditionalGeneration

from minillava.convert import export_hf_llava, import_hf_llava, import_official_llava, load_official_projector
from minillava.data import pad_batch
from minillava.model import MiniLlava
from minillava.prompts import tokenize_conversation


def batch_with_padding_and_text_only_row(model, padding_side="right"):
    """Two image prompts of different lengths and image sizes plus a text-only row."""
    conversations = [[{"from": "human", "value": "<image>\nWhat is it?"}],
                     [{"from": "human", "value": "What colour is the shape on the left?\n<image>"}],
                     [{"from": "human", "value": "Say hello to the user, please."}]]
    samples = [tokenize_conversation(c, model.tokenizer, model.image_token_id, model.encoder.num_features,
                                     for_generation=True) for c in conversations]
    batch = pad_batch(samples, model.tokenizer.pad_token_id, padding_side=padding_side)
    batch["pixel_values"] = model.encoder.preprocess([make_image(40, 24, seed=5), make_image(24, 48, seed=6)])
    return batch


@pytest.fixture
def exported(model, tmp_path):
    with torch.no_grad():  # a trained-looking connector, not the default init, so a mix-up would show
        for p in model.connector.parameters():
            p.normal_(0, 0.2)
    return export_hf_llava(model, tmp_path / "hf")


def test_export_gives_same_logits_in_transformers(model, exported):
    hf = LlavaForConditionalGeneration.from_pretrained(exported).eval()
    batch = batch_with_padding_and_text_only_row(model)
    ours = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits
    theirs = hf(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)


def test_export_gives_same_greedy_tokens(model, exported):
    hf = LlavaForConditionalGeneration.from_pretrained(exported).eval()
    batch = batch_with_padding_and_text_only_row(model, padding_side="left")
    ours = model.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens=8)
    theirs = hf.generate(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                         attention_mask=batch["attention_mask"], max_new_tokens=8, do_sample=False,
                         pad_token_id=model.tokenizer.pad_token_id)
    assert theirs[:, batch["input_ids"].shape[1]:].tolist() == ours.tolist()


def test_exported_processor_matches_minillava_preprocessing(model, exported):
    processor = AutoProcessor.from_pretrained(exported)
    image = make_image(40, 24, seed=5)
    inputs = processor(images=[image], text=["USER: <image>\nWhat is it? ASSISTANT:"], return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], model.encoder.preprocess([image], "pad"))
    assert int((inputs["input_ids"] == model.image_token_id).sum()) == model.encoder.num_features


def test_import_hf_llava_round_trip(model, exported):
    back = import_hf_llava(exported).eval()
    batch = batch_with_padding_and_text_only_row(model)
    args = (batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    torch.testing.assert_close(back(*args).logits, model(*args).logits)
    assert back.encoder.select == "patch" and back.encoder.num_features == model.encoder.num_features


def test_export_refuses_connectors_transformers_cannot_express(clip_dir, llm_dir, tmp_path):
    linear = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), connector="linear")
    with pytest.raises(ValueError, match="Linear-GELU-Linear"):
        export_hf_llava(linear, tmp_path)


def test_official_stage1_projector_file_loads(model, tmp_path):
    weights = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in model.connector.state_dict().items()}
    torch.save(weights, tmp_path / "mm_projector.bin")
    model.connector.load_state_dict(load_official_projector(tmp_path / "mm_projector.bin"), strict=True)
    torch.testing.assert_close(model.connector[0].weight, weights["model.mm_projector.0.weight"])


def test_official_full_checkpoint_imports(tokenizer, clip_dir, tmp_path):
    """A folder laid out like liuhaotian/llava-v1.5-7b: llava_llama config, LLM + projector keys, no <image>."""
    from transformers import PreTrainedTokenizerFast

    from minillava.backbones import tiny_language_model

    plain_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>",
                                              bos_token="<s>", eos_token="</s>")
    llm = tiny_language_model(plain_tokenizer, hidden_size=48)
    folder = tmp_path / "official"
    folder.mkdir()
    config = llm.config.to_dict() | {"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
                                     "mm_vision_tower": str(clip_dir), "mm_projector_type": "mlp2x_gelu",
                                     "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
                                     "mm_hidden_size": 32, "image_aspect_ratio": "pad", "tune_mm_mlp_adapter": False}
    (folder / "config.json").write_text(json.dumps(config))
    projector = {"model.mm_projector.0.weight": torch.randn(48, 32), "model.mm_projector.0.bias": torch.randn(48),
                 "model.mm_projector.2.weight": torch.randn(48, 48), "model.mm_projector.2.bias": torch.randn(48)}
    torch.save(llm.state_dict() | projector, folder / "pytorch_model-00001-of-00001.bin")
    plain_tokenizer.save_pretrained(folder)

    model = import_official_llava(folder).eval()
    assert model.config.connector == "mlp2x_gelu" and model.encoder.feature_layer == -2
    torch.testing.assert_close(model.connector[2].bias, projector["model.mm_projector.2.bias"])
    text = torch.tensor([[1, 40, 41, 42]])
    torch.testing.assert_close(model.lm(text).logits[..., :len(plain_tokenizer)], llm.eval()(text).logits)
    assert model.tokenizer.convert_ids_to_tokens(model.image_token_id) == "<image>"
    assert isinstance(model.lm, LlamaForCausalLM)
