"""Nothing lost, nothing silent: every bad input ends in a named error or a counted skip (with and without
DataLoader workers), checkpoints survive a kill in any phase of a save, resume never unpickles, a non-finite
step stops the run before it is saved, and every image goes through one conversion."""

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import make_image
from PIL import Image

from minillava.checkpoint import CheckpointError, find_checkpoint
from minillava.cli import main
from minillava.data import LlavaDataset, RecordError, check_data, load_records
from minillava.encoder import MAX_SIDE, expand_to_square, to_rgb
from minillava.model import MiniLlava
from minillava.trainer import Recipe, train

ROOT = Path(__file__).resolve().parent.parent
GOOD = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A picture."}]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def bad_corpus(folder: Path) -> list[tuple[dict, str]]:
    """(record, the reason it is rejected for): 28 kinds across files, images, records, fields, values and
    encodings. Writes the image files they point at into ``folder``."""
    make_image(16, 16).save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"not a png at all")
    (folder / "empty.png").write_bytes(b"")
    make_image(64, 64, seed=1).save(folder / "whole.png")
    whole = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "page.jpg").write_bytes(b"<html><body>403 Forbidden</body></html>")  # a scraper's saved error page
    (folder / "bomb.png").write_bytes(png_header_only(30000, 30000))  # 900 megapixels declared
    (folder / "folder.png").mkdir()

    def rec(rid, conversations=GOOD, **fields):
        return {"id": rid, "conversations": conversations, **fields}

    q, a = GOOD
    return [
        (rec("missing-file", image="nope.png"), "missing image"),
        (rec("image-is-a-folder", image="folder.png"), "missing image"),
        (rec("empty-image-path", image=""), "missing image"),
        (rec("corrupt-bytes", image="corrupt.png"), "corrupt image"),
        (rec("zero-byte-file", image="empty.png"), "corrupt image"),
        (rec("truncated-file", image="truncated.png"), "corrupt image"),
        (rec("html-saved-as-jpg", image="page.jpg"), "corrupt image"),
        (rec("decompression-bomb", image="bomb.png"), "corrupt image"),
        (["a", "list", "not", "a", "record"], "structure"),
        ({"id": "no-conversations", "image": "ok.png"}, "structure"),
        (rec("conversations-is-a-string", "hello", image="ok.png"), "structure"),
        (rec("empty-conversation", [], image="ok.png"), "structure"),
        (rec("image-is-a-number", image=5), "structure"),
        (rec({"a": 1}, image="ok.png"), "structure"),  # an id that is a dict
        (rec("answer-first", [a, q], image="ok.png"), "roles"),
        (rec("ends-with-a-question", [q], image="ok.png"), "roles"),
        (rec("turns-are-strings", ["<image>\nhi", "there"], image="ok.png"), "roles"),
        (rec("unknown-role", [{"from": "system", "value": "<image>\nhi"}, a], image="ok.png"), "roles"),
        (rec("value-is-a-number", [q, {"from": "gpt", "value": 42}], image="ok.png"), "roles"),
        (rec("value-missing", [q, {"from": "gpt"}], image="ok.png"), "roles"),
        (rec("image-without-marker", [{"from": "human", "value": "hi"}, a], image="ok.png"), "image marker"),
        (rec("two-markers", [{"from": "human", "value": "<image><image>\nhi"}, a], image="ok.png"),
         "image marker"),
        (rec("marker-without-image", GOOD), "image marker"),
        (rec("empty-answer", [q, {"from": "gpt", "value": "  "}], image="ok.png"), "empty text"),
        (rec("eos-in-answer", [q, {"from": "gpt", "value": "Done.</s> Then more."}], image="ok.png"),
         "control token"),
        (rec("bos-in-question", [{"from": "human", "value": "<image>\n<s>hi"}, a], image="ok.png"),
         "control token"),
        (rec("too-long", [{"from": "human", "value": "Q " * 60}, a, q, a], image="ok.png"), "too long"),
        (rec("lone-surrogate", [q, {"from": "gpt", "value": "caf\ud800"}], image="ok.png"), "text encoding"),
    ]


def good_records(n: int) -> list[dict]:
    return [{"id": f"good-{i}", "image": "ok.png", "conversations": GOOD} for i in range(n)]


def dataset(model, records, folder, on_error="error"):
    return LlavaDataset(records, model.tokenizer, model.image_token_id, model.prepare_image, image_folder=folder,
                        max_length=64, on_error=on_error)


def rid_of(record, index) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


def test_the_corpus_covers_at_least_25_kinds(tmp_path):
    assert len(bad_corpus(tmp_path)) >= 25


@pytest.mark.parametrize("index", range(28))
def test_each_bad_record_is_an_error_naming_it(model, tmp_path, index):
    record, reason = bad_corpus(tmp_path)[index]
    with pytest.raises(RecordError) as caught:
        data = dataset(model, [record], tmp_path)  # structural problems: found when the dataset is built
        data[0]  # the rest: when the record is read
    assert caught.value.reason == reason
    assert f"record {rid_of(record, 0)}" in str(caught.value)


def write_data(tmp_path) -> tuple[Path, Counter]:
    corpus = bad_corpus(tmp_path)
    records = good_records(10) + [record for record, _ in corpus]
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path / "data.json", Counter(reason for _, reason in corpus)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_counts_every_bad_record_by_reason(model, tmp_path, workers):
    data, expected = write_data(tmp_path)
    recipe = Recipe(stage=2, data=str(data), image_folder=str(tmp_path), max_length=64, per_device_batch_size=4,
                    epochs=1, learning_rate=1e-3, log_every=1, on_bad_record="skip", num_workers=workers)
    metrics = train(recipe, model, tmp_path / "run", progress=False)
    assert metrics and all(m["loss"] is None or m["loss"] > 0 for m in metrics)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert lines[-1]["summary"] == "skipped" and lines[-1]["skipped"] == dict(expected)


def test_data_check_finds_what_training_would_reject(model, tmp_path):
    data, expected = write_data(tmp_path)
    report = check_data(data, tmp_path, decode=True, progress=False, tokenizer=model.tokenizer, max_length=64,
                        image_tokens=model.encoder.num_features)
    assert report["problems"] == dict(expected)
    assert any("record decompression-bomb" in m for m in report["examples"]["corrupt image"])


@pytest.mark.parametrize("content, suffix, message", [
    ("[{]", ".json", r"data.json: not valid JSON \(.* line 1"),
    ('{"id": 1, "conversations": []}\n{oops\n', ".jsonl", r"data.jsonl, line 2: not valid JSON"),
    ('{"id": "a dict, not a list"}', ".json", "expected a JSON list"),
    ("caf\xe9".encode("latin-1"), ".json", "not UTF-8"),
])
def test_bad_data_files_name_the_file(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RecordError, match=message):
        load_records(path)
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_records(tmp_path / "nope.json")


@pytest.mark.parametrize("records, message", [([], "no usable record"),
                                              (None, "every sample read was skipped")])
def test_nothing_usable_stops_at_once(model, tmp_path, records, message):
    corpus = bad_corpus(tmp_path)
    if records is None:  # only records that fail when read: the dataset is not empty, every sample is skipped
        records = [r for r, reason in corpus if reason in ("corrupt image", "too long", "text encoding")]
    (tmp_path / "data.json").write_text(json.dumps(records))
    recipe = Recipe(stage=2, data=str(tmp_path / "data.json"), image_folder=str(tmp_path), max_length=64,
                    per_device_batch_size=2, epochs=3, on_bad_record="skip")
    with pytest.raises(RecordError, match=message):
        train(recipe, model, tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------- checkpoints, resume, pickles

KILLER = """
import os, signal, sys, torch
from minillava import checkpoint
from minillava.model import MiniLlava
from minillava.trainer import Recipe, train
clip, llm, recipe_json, out, phase, at_save = sys.argv[1:7]
saves = []
def hook(name):
    if name == "begin":
        saves.append(1)
    if name == phase and len(saves) == int(at_save):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.phase_hook = hook
torch.manual_seed(0)
train(Recipe(**__import__("json").loads(recipe_json)), MiniLlava.from_backbones(clip, llm), out, progress=False)
"""


def fresh(clip_dir, llm_dir):
    torch.manual_seed(0)
    return MiniLlava.from_backbones(str(clip_dir), str(llm_dir))


def losses(metrics):
    return [m["loss"] for m in metrics]


@pytest.fixture(scope="module")
def resume_setup(clip_dir, llm_dir, tmp_path_factory):
    """A data file with skipped records among the good ones, its recipe, and the uninterrupted run's losses."""
    folder = tmp_path_factory.mktemp("resume")
    corpus = dict((r["id"], r) for r, _ in bad_corpus(folder) if isinstance(r, dict) and isinstance(r["id"], str))
    records = good_records(12)
    for i, rid in enumerate(("corrupt-bytes", "too-long", "truncated-file")):  # skipped when read, mid-run
        records.insert(3 + 4 * i, corpus[rid])
    records = [dict(r, conversations=[GOOD[0], {"from": "gpt", "value": f"Picture {i}."}]) if r["id"].startswith(
        "good") else r for i, r in enumerate(records)]  # different answers: a repeated batch changes the losses
    (folder / "data.json").write_text(json.dumps(records))
    recipe = Recipe(stage=2, data=str(folder / "data.json"), image_folder=str(folder), max_length=64,
                    per_device_batch_size=2, gradient_accumulation_steps=2, max_steps=6, save_every=2,
                    log_every=1, learning_rate=1e-3, on_bad_record="skip", group_by_modality_length=False)
    straight = train(recipe, fresh(clip_dir, llm_dir), folder / "straight", progress=False)
    return folder, recipe, straight


@pytest.mark.parametrize("phase", ["begin", "written", "listed", "moved aside", "moved in"])
def test_a_kill_in_any_phase_of_a_save_resumes_to_the_same_losses(clip_dir, llm_dir, resume_setup, phase):
    from dataclasses import asdict

    folder, recipe, straight = resume_setup
    out = folder / f"killed-{phase.replace(' ', '-')}"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(clip_dir), str(llm_dir), json.dumps(asdict(recipe)),
                             str(out), phase, "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert killed.returncode == -9, killed.stderr[-2000:]  # killed inside the second save (step 4)
    resumed = train(recipe, fresh(clip_dir, llm_dir), out, resume=True, progress=False)
    assert [m["step"] for m in resumed] == list(range(1, 7))
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6)


def test_a_damaged_checkpoint_is_refused_naming_a_complete_one(clip_dir, llm_dir, resume_setup, tmp_path):
    folder, recipe, straight = resume_setup
    train(recipe, fresh(clip_dir, llm_dir), tmp_path, progress=False, stop_after=3)  # saved at step 2
    checkpoint = tmp_path / "checkpoint"
    (tmp_path / "checkpoint.old").mkdir()  # a complete copy beside it, as a kill between the renames leaves
    for f in checkpoint.iterdir():
        (tmp_path / "checkpoint.old" / f.name).write_bytes(f.read_bytes())
    weights = next(checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # cut short
    with pytest.raises(CheckpointError, match=rf"{weights.name} has 100 bytes.*checkpoint.old is complete \(step 2\)"):
        train(recipe, fresh(clip_dir, llm_dir), tmp_path, resume=True, progress=False)
    (checkpoint / "trainer_state.json").unlink()  # never finished
    with pytest.raises(CheckpointError, match="never finished"):
        find_checkpoint(checkpoint)


def test_resume_with_nothing_to_resume_says_so(model, resume_setup, tmp_path, capsys):
    folder, recipe, straight = resume_setup
    train(Recipe(**{**recipe.__dict__, "max_steps": 1}), model, tmp_path, resume=True, progress=False)
    assert "nothing to resume" in capsys.readouterr().out


def test_a_changed_recipe_is_not_resumed(clip_dir, llm_dir, resume_setup, tmp_path):
    folder, recipe, straight = resume_setup
    train(recipe, fresh(clip_dir, llm_dir), tmp_path, progress=False, stop_after=3)
    changed = Recipe(**{**recipe.__dict__, "learning_rate": 5e-4})
    with pytest.raises(CheckpointError, match="recipe changed since \\(learning_rate\\)"):
        train(changed, fresh(clip_dir, llm_dir), tmp_path, resume=True, progress=False)


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",)


def test_resume_never_unpickles_a_planted_payload(clip_dir, llm_dir, resume_setup, tmp_path, monkeypatch):
    folder, recipe, straight = resume_setup
    train(recipe, fresh(clip_dir, llm_dir), tmp_path, progress=False, stop_after=3)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    checkpoint = tmp_path / "checkpoint"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    planted = [f for f in checkpoint.iterdir() if f.suffix in (".bin", ".pkl", ".pt")]
    assert planted  # the optimizer and the random states
    for f in planted:  # an attacker who can write the folder rewrites its listing too
        torch.save(Payload(), f)
        state["files"][f.name] = f.stat().st_size
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(pickle.UnpicklingError):
        train(recipe, fresh(clip_dir, llm_dir), tmp_path, resume=True, progress=False)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the payload is real: a plain torch.load would run it
        torch.load(planted[0], weights_only=True)
    torch.load(planted[0], weights_only=False)
    assert marker.exists()


def test_a_non_finite_step_stops_before_it_is_saved(clip_dir, llm_dir, resume_setup, tmp_path):
    folder, recipe, straight = resume_setup
    model = fresh(clip_dir, llm_dir)
    calls = []

    def poison(module, args, output):  # the loss turns NaN from the 5th micro-batch (step 3) on
        calls.append(1)
        if len(calls) >= 5:
            output.logits = output.logits * float("nan")  # the loss is computed from these
        return output

    model.lm.register_forward_hook(poison)
    nan_recipe = Recipe(**{**recipe.__dict__, "log_every": 5, "save_every": 2})
    with pytest.raises(FloatingPointError, match="non-finite at step 3"):
        train(nan_recipe, model, tmp_path, progress=False)
    _, state = find_checkpoint(tmp_path / "checkpoint")
    assert state["step"] == 2
    weights = next((tmp_path / "checkpoint").glob("*.safetensors"))
    from safetensors.torch import load_file
    assert all(torch.isfinite(v).all() for v in load_file(weights).values())


# ----------------------------------------------------------------------------- recipes and seeds

def test_overrides_parse_numbers_as_numbers(tmp_path):
    (tmp_path / "r.yaml").write_text("stage: 1\nlearning_rate: 1e-3\nmax_steps: 1e3\n")  # YAML 1.1: strings
    recipe = Recipe.from_yaml(tmp_path / "r.yaml", learning_rate="1e6", gradient_checkpointing="true")
    assert recipe.learning_rate == 1e6 and recipe.max_steps == 1000 and recipe.gradient_checkpointing is True
    for field, value in (("learning_rate", "fast"), ("max_steps", "2.5"), ("gradient_checkpointing", "maybe"),
                         ("learning_rate", "nan")):
        with pytest.raises(ValueError, match=f"{field}.*{value}"):
            Recipe.from_yaml(tmp_path / "r.yaml", **{field: value})


def test_the_same_seed_gives_the_same_run(clip_dir, llm_dir, tmp_path):
    world = tmp_path / "data"
    world.mkdir()
    make_image(16, 16).save(world / "ok.png")
    (world / "s1.json").write_text(json.dumps([{"id": str(i), "image": "ok.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"Caption {i}."}]} for i in range(8)]))
    args = ["--vision", str(clip_dir), "--llm", str(llm_dir), "--set", f"data={world / 's1.json'}",
            "--set", f"image_folder={world}", "--set", "max_steps=2", "--set", "per_device_batch_size=2",
            "--set", "mixed_precision=no", "--set", "max_length=64", "--set", "gradient_checkpointing=false",
            "--set", "num_workers=0"]
    recipe = str(ROOT / "configs" / "recipes" / "llava15-7b-stage1.yaml")
    for run in ("a", "b"):
        torch.manual_seed(hash(run) % 1000)  # whatever the caller's random state, the recipe's seed decides
        main(["train", recipe, "--out", str(tmp_path / run), *args])
    a, b = ((tmp_path / r / "connector.safetensors").read_bytes() for r in ("a", "b"))
    assert a == b


def test_stage2_resume_without_a_checkpoint_needs_the_stage1_connector(clip_dir, llm_dir, tmp_path):
    recipe = str(ROOT / "configs" / "recipes" / "llava15-7b-stage2.yaml")
    with pytest.raises(SystemExit, match="--resume found no checkpoint"):
        main(["train", recipe, "--out", str(tmp_path), "--resume", "--vision", str(clip_dir), "--llm", str(llm_dir)])


# ----------------------------------------------------------------------------- one image conversion

def test_one_conversion_for_training_evaluation_and_answer(model, tmp_path):
    rgba = Image.new("RGBA", (24, 16), (200, 30, 30, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 12, 16))  # left half transparent (black under alpha 0)
    rgba.save(tmp_path / "rgba.png")
    deep = Image.fromarray((torch.arange(16 * 16).reshape(16, 16) * 200).numpy().astype("uint16"))
    deep.save(tmp_path / "deep.png")
    records = [{"id": name, "image": f"{name}.png", "conversations": GOOD} for name in ("rgba", "deep")]
    data = dataset(model, records, tmp_path)
    for i, name in enumerate(("rgba", "deep")):
        with Image.open(tmp_path / f"{name}.png") as im:
            at_answer = model.prepare_image(im)["pixel_values"]  # what MiniLlava.answer feeds the tower
        assert torch.equal(data[i]["pixel_values"], at_answer), name
    with Image.open(tmp_path / "rgba.png") as im:
        assert to_rgb(im).getpixel((2, 2)) == (255, 255, 255)  # transparent: white, not the black beneath
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I") and len(set(to_rgb(im).getdata())) > 100  # 16-bit: scaled, not clipped


def test_an_extreme_aspect_ratio_is_padded_within_bounds():
    strip = Image.new("RGB", (10000, 10), (255, 0, 0))
    square = expand_to_square(strip, (0, 0, 0))
    assert square.size == (MAX_SIDE, MAX_SIDE) and MAX_SIDE * MAX_SIDE * 3 < 64 * 2**20
    assert square.getpixel((MAX_SIDE // 2, MAX_SIDE // 2)) == (255, 0, 0)


def test_evaluation_names_the_question_whose_image_is_bad(model, tmp_path):
    from minillava.evaluate import run_benchmark

    bad_corpus(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "ok.png", "text": "hi"}\n'
                                      '{"question_id": 7, "image": "truncated.png", "text": "hi"}\n')
    with pytest.raises(ValueError, match=r"question 7: cannot read image .*truncated.png"):
        run_benchmark(model, "gqa", tmp_path / "q.jsonl", tmp_path, tmp_path / "a.jsonl", progress=False)
