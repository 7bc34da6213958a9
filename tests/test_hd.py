"""The grid HD encoder: grid choice, token counts, padding removal, row-end tokens, global context."""

import pytest
import torch
from conftest import make_image
from PIL import Image

from minillava.data import collate, pad_batch
from minillava.encoder import to_rgb
from minillava.hd import HDConfig, choose_grid, default_grids, feature_layout, num_image_tokens
from minillava.model import MiniLlava
from minillava.prompts import tokenize_conversation


@pytest.mark.parametrize("size, grid", [((224, 224), (1, 1)), ((448, 448), (2, 2)), ((672, 448), (3, 2)),
                                        ((448, 672), (2, 3)), ((1000, 100), (5, 1)), ((100, 1000), (1, 5)),
                                        ((225, 225), (1, 1)), ((10, 10), (1, 1)), ((4000, 3000), (3, 2))])
def test_grid_choice_table(size, grid):
    assert choose_grid(*size, cell=224) == grid


def test_grid_never_exceeds_the_configured_cells():
    for max_cells in (1, 2, 4, 6):
        grids = default_grids(max_cells)
        assert all(c * r <= max_cells for c, r in grids) and (1, 1) in grids
        for size in [(5000, 100), (100, 5000), (3000, 3000), (224, 224)]:
            c, r = choose_grid(*size, cell=224, grids=grids)
            assert c * r <= max_cells
    assert len(default_grids(6)) == 14  # 1x1..1x6, 6x1..2x1, 2x2, 2x3, 3x2
    with pytest.raises(ValueError, match="positive"):
        choose_grid(0, 10, cell=224)


@pytest.fixture
def hd_model(clip_dir, llm_dir):
    torch.manual_seed(0)
    return MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig()).eval()


# the grid-choice table's sizes, and the same shapes scaled to the tiny tower's 32-pixel cells
SIZES = [(224, 224), (448, 448), (672, 448), (448, 672), (1000, 100), (100, 1000), (225, 225), (10, 10),
         (4000, 3000), (32, 32), (64, 64), (96, 64), (64, 96), (143, 14), (14, 143), (33, 33), (2, 2), (571, 428)]


@pytest.mark.parametrize("global_context", [True, False])
def test_token_count_equals_features_produced(clip_dir, llm_dir, global_context):
    model = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig(global_context=global_context))
    for w, h in SIZES:
        prepared = model.prepare_image(make_image(w, h))
        features = model.image_features(prepared["pixel_values"], [prepared["image_size"]])
        assert features.shape[0] == prepared["n_tokens"] == num_image_tokens(w, h, 32, 8, model.hd.config), (w, h)


def test_padding_removal():
    square = feature_layout(448, 448, 224, 14, HDConfig())
    assert square["removed"] == 0 and square["tokens"] == 256 + 32 * 33  # global + 32 rows of 32 + row end
    wide = feature_layout(1000, 100, 224, 14, HDConfig(global_context=False, row_end=False))
    # a 5x1 grid is 80 x 16 features; the image fills 1120 x 112 pixels of it = 80 x 8 features
    assert wide["grid"] == (5, 1) and (wide["cols"], wide["rows"]) == (80, 8)
    assert wide["removed"] == 5 * 256 - 80 * 8 and wide["tokens"] == 640


def test_one_cell_without_extras_is_the_base_encoder(clip_dir, llm_dir):
    torch.manual_seed(0)
    base = MiniLlava.from_backbones(str(clip_dir), str(llm_dir))
    hd = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig(max_cells=1, global_context=False,
                                                                            row_end=False))
    hd.connector.load_state_dict(base.connector.state_dict())
    image = make_image(32, 32)
    ours = hd.prepare_image(image)
    assert ours["n_tokens"] == base.encoder.num_features
    torch.testing.assert_close(hd.image_features(ours["pixel_values"], [ours["image_size"]]),
                               base.image_features(base.prepare_image(image)["pixel_values"]))


def test_all_cells_of_all_images_are_encoded_in_one_call(hd_model):
    calls = []
    handle = hd_model.encoder.tower.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    prepared = [hd_model.prepare_image(make_image(w, h)) for w, h in [(64, 64), (96, 32), (32, 32)]]
    hd_model.image_features(torch.cat([p["pixel_values"] for p in prepared]), [p["image_size"] for p in prepared])
    handle.remove()
    assert calls == [(1 + 4) + (1 + 3) + (1 + 1)]


def test_row_end_follows_every_feature_row(hd_model):
    prepared = hd_model.prepare_image(make_image(64, 32))  # 2x1 grid: 4 rows of 8 features + global
    features = hd_model.image_features(prepared["pixel_values"], [prepared["image_size"]])
    grid = features[16:].view(4, 9, -1)  # after the 16 global features: 4 rows of 8 + row end
    for row in grid:
        torch.testing.assert_close(row[-1], hd_model.hd.row_end)
    assert not torch.allclose(grid[0, 0], hd_model.hd.row_end)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "1", "CMYK"])
def test_image_modes_are_converted(hd_model, mode):
    image = make_image(40, 30).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 40000)
    prepared = hd_model.prepare_image(image)
    assert prepared["pixel_values"].shape[1:] == (3, 32, 32) and to_rgb(image).mode == "RGB"


def test_empty_images_give_a_clear_error(hd_model):
    with pytest.raises(ValueError, match="0x5 has no pixels"):
        hd_model.prepare_image(Image.new("RGB", (0, 5)))
    assert hd_model.prepare_image(Image.new("RGB", (1, 1)))["n_tokens"] > 0


def test_hd_training_step_mixing_aspect_ratios(hd_model):
    hd_model.train()
    samples, prepared = [], []
    for (w, h), answer in zip([(64, 64), (96, 32), (32, 80)], ["Square.", "Wide.", "Tall."]):
        prepared.append(hd_model.prepare_image(make_image(w, h)))
        samples.append(tokenize_conversation([{"from": "human", "value": "<image>\nShape?"},
                                              {"from": "gpt", "value": answer}], hd_model.tokenizer,
                                             hd_model.image_token_id, prepared[-1]["n_tokens"]))
        samples[-1] |= {"pixel_values": prepared[-1]["pixel_values"], "image_size": prepared[-1]["image_size"]}
    batch = collate(samples, hd_model.tokenizer.pad_token_id)
    loss = hd_model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"],
                    image_sizes=batch["image_sizes"]).loss
    loss.backward()
    assert hd_model.hd.row_end.grad is not None and hd_model.hd.row_end.grad.abs().sum() > 0
    assert all(p.grad is not None for p in hd_model.connector.parameters())


def test_hd_generation_and_save_load(hd_model, tmp_path):
    answers = hd_model.answer([make_image(96, 32), make_image(32, 32)], ["What?", "Hm?"], max_new_tokens=3)
    assert len(answers) == 2
    hd_model.save_pretrained(tmp_path)
    loaded = MiniLlava.from_pretrained(tmp_path).eval()
    assert loaded.hd is not None and loaded.hd.config == hd_model.hd.config
    torch.testing.assert_close(loaded.hd.row_end, hd_model.hd.row_end)
    p = hd_model.prepare_image(make_image(96, 32))
    s = tokenize_conversation([{"from": "human", "value": "<image>\nQ"}], hd_model.tokenizer,
                              hd_model.image_token_id, p["n_tokens"], for_generation=True)
    batch = pad_batch([s], hd_model.tokenizer.pad_token_id)
    args = (batch["input_ids"], p["pixel_values"], batch["attention_mask"])
    torch.testing.assert_close(loaded(*args, image_sizes=[p["image_size"]]).logits,
                               hd_model(*args, image_sizes=[p["image_size"]]).logits)
