"""The vision encoder wrapper and the connector."""

import pytest
import torch
from conftest import make_image
from transformers import CLIPVisionModel, SiglipVisionModel

from minillava.connector import build_connector, official_projector_state_dict
from minillava.encoder import VisionEncoder, expand_to_square, mean_colour


def test_feature_layer_is_penultimate_hidden_state_without_cls(clip_dir):
    enc = VisionEncoder.from_pretrained(str(clip_dir))
    raw = CLIPVisionModel.from_pretrained(clip_dir)
    pixels = enc.preprocess([make_image(32, 32), make_image(50, 20, seed=1)])
    feats = enc(pixels)
    expected = raw(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert enc.has_cls and feats.shape == (2, 16, 32) == (2, enc.num_features, enc.hidden_size)
    torch.testing.assert_close(feats, expected)
    full = VisionEncoder.from_pretrained(str(clip_dir), select="full")
    assert full(pixels).shape == (2, 17, 32) and full.num_features == 17
    other = VisionEncoder.from_pretrained(str(clip_dir), feature_layer=-1)
    torch.testing.assert_close(other(pixels), raw(pixels, output_hidden_states=True).hidden_states[-1][:, 1:])


def test_siglip_has_no_cls_to_drop(siglip_dir):
    enc = VisionEncoder.from_pretrained(str(siglip_dir))
    raw = SiglipVisionModel.from_pretrained(siglip_dir)
    pixels = enc.preprocess([make_image(32, 32)])
    assert not enc.has_cls and enc.num_features == 16
    torch.testing.assert_close(enc(pixels), raw(pixels, output_hidden_states=True).hidden_states[-2])


def test_pad_uses_clip_mean_colour(clip_dir):
    enc = VisionEncoder.from_pretrained(str(clip_dir))
    assert enc.pad_colour == mean_colour([0.48145466, 0.4578275, 0.40821073]) == (122, 116, 104)
    square = expand_to_square(make_image(40, 20), enc.pad_colour)
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((39, 39)) == (122, 116, 104)
    assert square.getpixel((0, 10)) == make_image(40, 20).getpixel((0, 0))  # pasted centred: rows 10..29


def test_pad_and_crop_differ_on_non_square_images(clip_dir):
    enc = VisionEncoder.from_pretrained(str(clip_dir))
    image = make_image(64, 16)
    padded, cropped = enc.preprocess([image], "pad"), enc.preprocess([image], "crop")
    assert padded.shape == cropped.shape == (1, 3, 32, 32)
    assert not torch.allclose(padded, cropped)
    with pytest.raises(ValueError, match="crop' or 'pad"):
        enc.preprocess([image], "squash")


def test_frozen_tower_gets_no_gradient(clip_dir):
    enc = VisionEncoder.from_pretrained(str(clip_dir))
    connector = build_connector("mlp2x_gelu", enc.hidden_size, 24)
    pixels = enc.preprocess([make_image(32, 32)]).requires_grad_(False)
    connector(enc(pixels)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.tower.parameters())
    assert all(p.grad is not None for p in connector.parameters())
    trainable = VisionEncoder.from_pretrained(str(clip_dir), frozen=False)
    trainable(pixels).sum().backward()
    assert any(p.grad is not None for p in trainable.tower.parameters())


def test_connector_shapes_and_parameter_counts():
    x = torch.randn(2, 5, 16)
    assert build_connector("mlp2x_gelu", 16, 8)(x).shape == (2, 5, 8)
    assert build_connector("linear", 16, 8)(x).shape == (2, 5, 8)
    assert build_connector("identity", 16, 16)(x) is x
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(build_connector("mlp2x_gelu", 1024, 4096)) == 20_979_712  # LLaVA-1.5-7B
    assert count(build_connector("linear", 1024, 4096)) == 1024 * 4096 + 4096
    assert count(build_connector("mlp3x_gelu", 16, 8)) == 16 * 8 + 8 + 2 * (8 * 8 + 8)
    mlp = build_connector("mlp2x_gelu", 16, 8)
    assert isinstance(mlp[1], torch.nn.GELU) and mlp[1].approximate == "none"  # exact (erf) GELU
    for bad in ("mlp0x_gelu", "mlp2x_relu", "conv"):
        with pytest.raises(ValueError, match="unknown connector"):
            build_connector(bad, 16, 8)
    with pytest.raises(ValueError, match="equal widths"):
        build_connector("identity", 16, 8)


def test_official_projector_keys_load():
    mlp = build_connector("mlp2x_gelu", 16, 8)
    official = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in mlp.state_dict().items()}
    mlp.load_state_dict(official_projector_state_dict(official), strict=True)
    torch.testing.assert_close(mlp[2].bias, official["model.mm_projector.2.bias"])
    with pytest.raises(ValueError, match="mm_projector"):
        official_projector_state_dict({"model.layers.0.weight": torch.zeros(1)})
