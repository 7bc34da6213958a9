"""The toy world and the data pipeline: determinism, validation, skipping, grouping, collation, datasets."""

import json
import random

import pytest
import torch
from PIL import Image

from minillava.data import (
    LlavaDataset,
    ModalityLengthGroupedSampler,
    RecordError,
    collate,
    load_records,
    records_from_hf_dataset,
)
from minillava.prompts import IGNORE_INDEX, IMAGE
from minillava.toyworld import EVAL_TASKS, draw_scene, make_scene, world_scene, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), n_train=60, n_eval=6, seed=3, progress=False)


def dataset(model, records, folder, **kwargs):
    return LlavaDataset(records, model.tokenizer, model.image_token_id, model.prepare_image, folder, **kwargs)


def test_same_seed_same_world(world, tmp_path):
    again = write_world(tmp_path / "again", n_train=60, n_eval=6, seed=3, progress=False)
    for name in ["stage1.json", "stage2.json"] + [f"eval/{t}.jsonl" for t in EVAL_TASKS]:
        assert (again / name).read_bytes() == (world / name).read_bytes(), name
    for image in sorted((world / "images").iterdir()):
        assert (again / "images" / image.name).read_bytes() == image.read_bytes()
    other = write_world(tmp_path / "other", n_train=60, n_eval=6, seed=4, progress=False)
    assert (other / "stage2.json").read_bytes() != (world / "stage2.json").read_bytes()
    assert list(draw_scene(make_scene(7)).getdata()) == list(draw_scene(make_scene(7)).getdata())


def test_world_mirrors_the_llava_mix(world):
    stage2 = load_records(world / "stage2.json")
    kinds = {k for r in stage2 for k in (r["id"].split("-")[-1].split("+") if "image" in r else ["text-only"])}
    assert {"detail", "conversation", "short", "choice", "pope", "text", "region"} <= kinds
    assert any("image" not in r for r in stage2)  # text-only conversations
    assert all(r["conversations"][0]["value"].startswith(IMAGE) for r in stage2 if "image" in r)
    questions = [json.loads(line) for line in (world / "eval" / "pope.jsonl").read_text().splitlines()]
    assert set(questions[0]) == {"question_id", "image", "text", "category"}


def test_stage2_keeps_the_lms_text_lookups_on_a_stream_of_their_own(world, tmp_path):
    """Text-only lookups (a scene in words, questions about it) join stage 2 as ShareGPT joins LLaVA-1.5's mix,
    drawn from their own random stream: without them the image records are the same, record for record."""
    records = load_records(world / "stage2.json")
    lookups = [r for r in records if r["id"].startswith("text-scene")]
    assert lookups and not any("image" in r or IMAGE in r["conversations"][0]["value"] for r in lookups)
    without = write_world(tmp_path / "without", n_train=60, n_eval=6, seed=3, text_lookup_share=0.0, progress=False)
    assert [r for r in records if not r["id"].startswith("text-scene")] == load_records(without / "stage2.json")


def test_the_world_holds_text_in_images_as_the_llava_mix_does(world, tmp_path):
    """Stage-1 captions name the printed character (as TextCaps' captions do), and close-ups of other scenes, as
    an HD cell shows them, ask which character is printed (as OCR-VQA does), from a random stream of their own:
    without them every other record is the same."""
    captions = [r["conversations"][1]["value"] for r in load_records(world / "stage1.json")]
    scenes = [world_scene(3, i) for i in range(60)]
    assert [c.endswith(f"The character {s.character} is printed near the bottom.") for c, s in zip(captions, scenes)] \
        == [bool(s.character) for s in scenes]
    records = load_records(world / "stage2.json")
    close_ups = [r for r in records if r["id"].startswith("closeup")]
    assert 3 <= len(close_ups) <= 20  # 15% of 60 images
    for r in close_ups:
        scene = make_scene(int(r["id"].removeprefix("closeup").split("-")[0]))
        assert r["conversations"][1]["value"] == (scene.character or "none")
        assert Image.open(world / "images" / r["image"]).size == (64, 64)  # one HD cell of the toy tower
    without = write_world(tmp_path / "without", n_train=60, n_eval=6, seed=3, close_up_share=0.0, progress=False)
    assert [r for r in records if r not in close_ups] == load_records(without / "stage2.json")


def test_pope_records_ask_about_one_present_and_one_absent_object(world):
    records = [r for r in load_records(world / "stage2.json") if "pope" in r["id"].split("-")[-1].split("+")]
    assert records
    for record in records:
        scene = make_scene(int(record["id"].split("-")[0].removeprefix("scene")))
        present = {t.name for t in scene.things}
        asked = [(turn["value"].removeprefix(IMAGE + "\n").split("\n")[0], answer["value"])
                 for turn, answer in zip(record["conversations"][::2], record["conversations"][1::2])
                 if turn["value"].removeprefix(IMAGE + "\n").startswith("Is there a ")]
        assert sorted(a for _, a in asked) == ["no", "yes"], record["id"]
        for question, answer in asked:
            name = question.removeprefix("Is there a ").removesuffix(" in the image?")
            assert (name in present) == (answer == "yes"), record["id"]


def test_toy_records_validate_and_tokenize(model, world):
    for name, template in (("stage1.json", "plain"), ("stage2.json", "vicuna_v1")):
        data = dataset(model, load_records(world / name), world / "images", template=template)
        assert len(data) == len(load_records(world / name))
        for i in range(0, len(data), 7):
            sample = data[i]
            assert any(lab != IGNORE_INDEX for lab in sample["labels"])
            n_image = sample["input_ids"].count(model.image_token_id)
            assert n_image == (model.encoder.num_features if sample["pixel_values"] is not None else 0)


def bad_records(folder):
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"not a png")
    good = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    return [
        {"id": "good", "image": "ok.png", "conversations": good},
        {"id": "missing", "image": "nope.png", "conversations": good},
        {"id": "corrupt", "image": "corrupt.png", "conversations": good},
        {"id": "roles", "image": "ok.png", "conversations": good[::-1]},
        {"id": "no-marker", "image": "ok.png", "conversations": [{"from": "human", "value": "Q"}, good[1]]},
        {"id": "empty", "conversations": []},
        # the image comes after a long first exchange: cutting at max_length would cut its block
        {"id": "long", "image": "ok.png", "conversations": [{"from": "human", "value": "Q " * 60}, good[1], *good]},
    ]


@pytest.mark.parametrize("rid, message", [("missing", "nope.png not found"),
                                          ("roles", "turn 0 is from 'gpt', expected 'human'"),
                                          ("no-marker", "exactly one <image> marker"),
                                          ("empty", "empty conversation")])
def test_bad_records_raise_naming_the_record(model, tmp_path, rid, message):
    records = [r for r in bad_records(tmp_path) if r["id"] == rid]
    with pytest.raises(RecordError, match=f"record {rid}: .*{message}"):
        dataset(model, records, tmp_path)


@pytest.mark.parametrize("rid, message", [("corrupt", "cannot read image 'corrupt.png'"),
                                          ("long", "max_length 64")])
def test_unreadable_or_too_long_records_raise_when_read(model, tmp_path, rid, message):
    data = dataset(model, [r for r in bad_records(tmp_path) if r["id"] == rid], tmp_path, max_length=64)
    with pytest.raises(RecordError, match=f"record {rid}: .*{message}"):
        data[0]


def test_skip_policy_counts_every_bad_record(model, tmp_path):
    data = dataset(model, bad_records(tmp_path), tmp_path, max_length=64, on_error="skip")
    assert len(data) == 3  # good, corrupt, long pass the structural checks
    samples = [data[i] for i in range(len(data))]
    assert [s["id"] for s in samples if "skipped" not in s] == ["good"]
    # found when the dataset was built: counted there; found when read: a marker that travels in the batch
    assert data.skipped["total"] == 4
    assert data.skipped["missing image"] == 1 and data.skipped["image marker"] == 1
    assert "skipped 4 bad record(s)" in data.summary()
    assert sorted(s["skipped"] for s in samples if "skipped" in s) == ["corrupt image", "too long"]
    batch = collate(samples, model.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    assert sorted(batch["skipped"]) == ["corrupt image", "too long"]
    empty = collate([samples[1], samples[2]], model.tokenizer.pad_token_id)
    assert empty["input_ids"] is None and len(empty["skipped"]) == 2


def test_collator_shapes_masks_and_text_only_rows(model, world):
    records = load_records(world / "stage2.json")
    text_only = next(r for r in records if "image" not in r)
    with_image = [r for r in records if "image" in r][:2]
    data = dataset(model, [with_image[0], text_only, with_image[1]], world / "images")
    batch = collate([data[i] for i in range(3)], model.tokenizer.pad_token_id)
    lengths = [len(data[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape[0] == 2
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padding] == model.tokenizer.pad_token_id).all()
    assert batch.pop("skipped") == []
    labels = batch.pop("labels")
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    # with labels, the LM head runs only where the next token is labelled: one row of logits per labelled token
    assert model(**batch, labels=labels).logits.shape[0] == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_grouped_sampler_never_mixes_modalities_within_a_global_batch():
    lengths = [n if n % 3 else -n for n in range(1, 104)]  # a third text-only (negative), the rest images
    group = 8
    sampler = ModalityLengthGroupedSampler(lengths, group, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    groups = [order[k:k + group] for k in range(0, len(order), group)]
    for g in groups[:-1]:
        assert len({lengths[i] > 0 for i in g}) == 1
        assert [abs(lengths[i]) for i in g] == sorted((abs(lengths[i]) for i in g), reverse=True)
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order


def test_grouped_sampler_pads_less_than_random_batches():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (512,)).tolist()
    def padding(order):
        batches = [order[k:k + 8] for k in range(0, len(order), 8)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    grouped = padding(list(ModalityLengthGroupedSampler(lengths, 64, seed=0)))
    shuffled = padding(torch.randperm(512, generator=g).tolist())
    assert grouped < 0.5 * shuffled


def test_records_from_hugging_face_datasets(model):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImageFeature

    image = Image.new("RGB", (20, 10), (255, 0, 0))
    conversations = [[{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
                     [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]]
    features = Features({"id": Value("string"), "image": HFImageFeature(),
                         "conversations": List({"from": Value("string"), "value": Value("string")})})
    ds = Dataset.from_dict({"id": ["a", "b"], "image": [image, None], "conversations": conversations},
                           features=features)
    records = records_from_hf_dataset(ds)
    assert [r["id"] for r in records] == ["a", "b"] and "image" not in records[1]
    data = dataset(model, records, None)
    sample = data[0]
    assert sample["pixel_values"].shape == (1, 3, 32, 32) and data[1]["pixel_values"] is None
    torch.testing.assert_close(sample["pixel_values"], model.prepare_image(image)["pixel_values"])
    assert sample["image_size"] == (20, 10)


TINY_SPEC = dict(corpus_scenes=60, tower_scenes=20, glyph_close_ups=4, vision_steps=2, lm_steps=2, lm_caption_steps=1,
                 lm_hop_steps=1, lm_position_steps=1, lm_character_steps=1, probe_scenes=4)


def test_building_backbones_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    from minillava.backbones import BackboneSpec, toy_backbones

    monkeypatch.setenv("MINILLAVA_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    toy_backbones(BackboneSpec(**TINY_SPEC), progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # built or cached, the caller's next draw is the same


def test_cached_builds_happen_aside_and_survive_a_concurrent_builder(world, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    from minillava.backbones import BackboneSpec, toy_backbones

    # an interrupted build of an older version is replaced, not mistaken for a finished world
    stale = tmp_path / "w"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "junk.png").write_bytes(b"half a file")
    assert write_world(stale, n_train=60, n_eval=6, seed=3, progress=False) == stale
    assert not (stale / "images" / "junk.png").exists()
    assert (stale / "stage2.json").read_bytes() == (world / "stage2.json").read_bytes()
    # two builders of the same backbones at once (two notebooks starting together): both get the finished
    # folders, and nothing half-built is left next to them
    monkeypatch.setenv("MINILLAVA_CACHE", str(tmp_path / "cache"))
    spec = BackboneSpec(**TINY_SPEC)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: toy_backbones(spec, progress=False), range(2)))
    assert results[0] == results[1] and (results[0][1] / "config.json").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [results[0][0].parent.name]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("w")] == ["w"]
    # another spec is built apart; the LM's pretraining does not depend on the tower's. Compared between two
    # builds made one after the other: the two threads above share torch's global random state.
    monkeypatch.setenv("MINILLAVA_CACHE", str(tmp_path / "sequential"))
    short = toy_backbones(spec, progress=False)
    longer = toy_backbones(BackboneSpec(**{**TINY_SPEC, "vision_steps": 3}), progress=False)
    assert longer[0] != short[0]
    lm_a, lm_b = load_file(str(short[1] / "model.safetensors")), load_file(str(longer[1] / "model.safetensors"))
    assert lm_a.keys() == lm_b.keys() and all(torch.equal(lm_a[k], lm_b[k]) for k in lm_a)
    tower_a = load_file(str(short[0] / "model.safetensors"))
    tower_b = load_file(str(longer[0] / "model.safetensors"))
    assert not all(torch.equal(tower_a[k], tower_b[k]) for k in tower_a)


def test_patch_labels_name_what_lies_under_each_patch():
    from minillava.toyworld import ATTRIBUTES, Scene, Thing, draw_scene, glyph_patches, patch_labels

    # 128 x 128 canvas, 8 x 8 grid: 16 px cells with centres 8, 24, 40, ...; a large red circle (half-width 22)
    # at (40, 40) covers the centres 24, 40, 56 in x and y -> 9 patches
    scene = Scene(128, 128, (Thing("circle", "red", "large", 40, 40),), "A", (100, 116), seed=0)
    labels = patch_labels(scene, grid=8)
    on = [i for i, row in enumerate(labels) if row[1] != -100]
    assert on == [gy * 8 + gx for gy in (1, 2, 3) for gx in (1, 2, 3)]
    circle = [ATTRIBUTES["colour"].index("red"), ATTRIBUTES["shape"].index("circle"), ATTRIBUTES["size"].index("large")]
    assert all(labels[i][:3] == circle for i in on)
    assert all(row[3] == -100 for row in labels)  # the character only when asked for
    # its place (centre (40, 40): the top-left third) on every one of its patches, as its colour is
    assert [i for i, row in enumerate(labels) if row[4] != -100] == on
    assert all(labels[i][4] == ATTRIBUTES["position"].index("top left") for i in on)
    # what the whole scene holds, on every patch of the whole view, background too: one shape, a character
    assert all(row[5:] == [ATTRIBUTES["count"].index("1"), ATTRIBUTES["printed"].index("yes")] for row in labels)
    two = Scene(128, 128, scene.things + (Thing("square", "blue", "small", 100, 100),), None, None, seed=0)
    assert all(row[5:] == [ATTRIBUTES["count"].index("2"), ATTRIBUTES["printed"].index("no")]
               for row in patch_labels(two, grid=8))
    # a 64 px close-up at (64, 64) with 8 px cells: the glyph drawn at (100, 116) spans about (101, 119) to
    # (106, 125), cells x (101 - 64) // 8 = 4 to 5, y 6 to 7; its centre (103, 122) is in cell (4, 7). The
    # circle (18..62) lies outside the crop.
    close = patch_labels(scene, grid=8, view=(64, 64, 64), character=True)
    glyph = [6 * 8 + 4, 6 * 8 + 5, 7 * 8 + 4, 7 * 8 + 5]
    # no place, count or "printed": a crop shows part of the scene
    assert [i for i, row in enumerate(close) if row != [-100] * len(ATTRIBUTES)] == glyph
    assert all(close[i][3] == ATTRIBUTES["character"].index("A") for i in glyph)
    assert glyph_patches(scene, 8, (64, 64, 64)) == (7 * 8 + 4, glyph)
    ink = draw_scene(scene).convert("L").crop((64 + 4 * 8, 64 + 7 * 8, 64 + 5 * 8, 64 + 8 * 8))  # the centre's cell
    assert min(ink.getdata()) < 100  # the dark glyph is really drawn there


def test_close_ups_show_the_scene_as_an_hd_cell_does():
    from minillava.hd import HDConfig, fitted_size, split_into_cells
    from minillava.toyworld import close_up, draw_scene, glyph_patches, make_scene

    scenes = [s for s in (make_scene(seed) for seed in range(200)) if s.character][:40]
    rng = random.Random(0)
    for scene in scenes:
        image, (left, top, side) = close_up(scene, 64, rng, around_character=True)
        # a 2 x 2 grid of 64 px cells shows the square canvas at full scale, 160 x 128 and 128 x 160 at 0.8
        assert image.size == (64, 64) and side == (64 if scene.width == scene.height else 80)
        # the close-up is a crop of the scene resized as the grid encoder resizes it: its own first cell is one
        scale = 64 / side
        cells = split_into_cells(draw_scene(scene), HDConfig(max_cells=4, global_context=False), 64, (0, 0, 0))
        resized = draw_scene(scene).resize(fitted_size(scene.width, scene.height, (2, 2), 64), Image.BICUBIC)
        assert list(resized.crop((0, 0, 64, 64)).getdata()) == list(cells[0].getdata())
        x, y = round(left * scale), round(top * scale)
        assert list(resized.crop((x, y, x + 64, y + 64)).getdata()) == list(image.getdata())
        # the glyph's centre patch is in view and really holds ink, wherever the crop put it
        centre, covered = glyph_patches(scene, 8, (left, top, side))
        assert centre in covered
        row, col = divmod(centre, 8)
        assert min(image.convert("L").crop((col * 8, row * 8, col * 8 + 8, row * 8 + 8)).getdata()) < 140


def test_the_character_cell_is_the_hd_grid_cell_that_shows_the_glyph():
    from minillava.hd import HDConfig, split_into_cells
    from minillava.toyworld import character_cell, make_scene

    scenes = [s for s in (make_scene(seed) for seed in range(200)) if s.character][:40]
    assert {(s.width, s.height) for s in scenes} == {(128, 128), (160, 128), (128, 160)}  # scales 1.0 and 0.8
    for scene in scenes:
        cell, centre = character_cell(scene, 64, 8, fill=(255, 255, 255))
        cells = split_into_cells(draw_scene(scene), HDConfig(max_cells=4, global_context=False), 64, (255,) * 3)
        assert any(list(cell.getdata()) == list(c.getdata()) for c in cells)  # one of the grid's own cells
        # the glyph (its dark grey ink; blue shapes are dark too, but not grey) is centred on the named patch
        ink = [(i % 64, i // 64) for i, (r, g, b) in enumerate(cell.getdata()) if max(r, g, b) < 150]
        x = (min(x for x, _ in ink) + max(x for x, _ in ink)) / 2
        y = (min(y for _, y in ink) + max(y for _, y in ink)) / 2
        row, col = divmod(centre, 8)
        assert col * 8 - 1.5 <= x <= col * 8 + 9.5 and row * 8 - 1.5 <= y <= row * 8 + 9.5, (scene, x, y, centre)


def test_canvas_patches_mark_the_padding():
    from minillava.toyworld import Scene, canvas_patches

    assert all(canvas_patches(Scene(128, 128, (), None, None, seed=0), grid=8))
    # 160 x 128 padded to 160 x 160: 16 px of padding above and below; 20 px cells, centres at 10, 30, ..., 150
    wide = canvas_patches(Scene(160, 128, (), None, None, seed=0), grid=8)
    assert wide[:8] == [False] * 8 and wide[-8:] == [False] * 8 and all(wide[8:56])
    tall = canvas_patches(Scene(128, 160, (), None, None, seed=0), grid=8)
    assert [tall[r * 8] for r in range(8)] == [False] * 8 and all(tall[r * 8 + 3] for r in range(8))
