"""Scorers against hand-computed cases, and the benchmark runner's answer file and scores."""

import json

import pytest
import torch
from conftest import make_image

from minillava.evaluate import (
    choice_letter,
    exact_match,
    load_annotations,
    mme_label,
    mme_scores,
    multiple_choice_accuracy,
    normalize_vqa,
    pope_label,
    pope_scores,
    read_jsonl,
    run_benchmark,
    score_benchmark,
    vqa_accuracy,
    with_benchmark_prompt,
)
from minillava.prompts import SHORT_ANSWER
from minillava.toyreport import beats_majority, by_objects, probe_vision_features, write_report


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("a dog.", "dog"), ("The Dog", "dog"), ("dont", "don't"), ("yes!", "yes"),
    ("1,000", "1000"), ("2.5", "2.5"), ("red, white", "red white"), ("black/white", "black white"),
    ("  ten\n", "10"), ("none", "0")])
def test_vqa_normalisation(raw, normal):
    assert normalize_vqa(raw) == normal


def test_vqa_accuracy_leave_one_out():
    # 3 of 10 humans said "2": 7 subsets keep all 3 (score 1), 3 subsets keep 2 (score 2/3) -> 0.9
    humans = ["2", "2", "2"] + ["3"] * 7
    assert vqa_accuracy("Two", humans) == pytest.approx(0.9)
    assert vqa_accuracy("three", humans) == pytest.approx(1.0)
    # 1 of 10: 9 subsets keep it (1/3 each), 1 subset doesn't -> 0.3
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("a dog.", ["dog"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("bird", ["dog"] * 10) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


def test_gqa_exact_match():
    assert exact_match(["Dog.", "cat", "a dog"], ["dog", "Cat", "dog"]) == pytest.approx(2 / 3)


def test_pope_parsing_and_scores():
    assert pope_label("No, there is not.") == "no"
    assert pope_label("Yes.") == "yes"
    assert pope_label("There is not a dog.") == "no"
    assert pope_label("Yes. No dog though.") == "yes"  # only the text before the first '.'
    assert pope_label("Nope") == "yes"  # the official rule looks for the words No/not/no only
    preds = ["Yes.", "No, there is not.", "yes", "no"]
    gold = ["yes", "no", "no", "yes"]
    s = pope_scores(preds, gold)
    # tp=1 (first), fp=1 (third), fn=1 (fourth), tn=1
    assert s["accuracy"] == 0.5 and s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5
    assert s["yes_ratio"] == 0.5


def test_multiple_choice_letter():
    assert choice_letter("C") == "C"
    assert choice_letter("B. red") == "B"
    assert choice_letter("The answer is C.") == "C"
    assert choice_letter("Red") is None
    assert choice_letter("A bird") is None  # the article "A" is not the letter A
    assert multiple_choice_accuracy(["The answer is C.", "B", "I think A"], ["C", "A", "A"]) == pytest.approx(1 / 3)


def test_mme_accuracy_plus():
    assert mme_label("Yes, it is.") == "yes" and mme_label("no") == "no" and mme_label("maybe") == "other"
    # image a: both right; image b: one of two right; task "count" only
    s = mme_scores(["Yes", "No", "yes", "yes"], ["yes", "no", "yes", "no"], ["a", "a", "b", "b"], ["count"] * 4)
    assert s["count"]["accuracy"] == 0.75 and s["count"]["accuracy_plus"] == 0.5
    assert s["count"]["score"] == pytest.approx(125.0) and s["total"] == pytest.approx(125.0)


def test_load_annotations_layouts(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question_id": 1, "answer": "dog"}\n{"question_id": 2, "label": "no"}\n')
    assert load_annotations(tmp_path / "a.jsonl") == {"1": "dog", "2": "no"}
    vqa = {"annotations": [{"question_id": 7, "answers": [{"answer": "2"}, {"answer": "two"}]}]}
    (tmp_path / "v.json").write_text(json.dumps(vqa))
    assert load_annotations(tmp_path / "v.json") == {"7": ["2", "two"]}
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1}\n')
    with pytest.raises(ValueError, match="row 0"):
        load_annotations(tmp_path / "bad.jsonl")


def test_benchmark_prompt_is_appended_once():
    assert with_benchmark_prompt("Is there a dog?", "pope") == f"Is there a dog?\n{SHORT_ANSWER}"
    assert with_benchmark_prompt(f"Is there a dog?\n{SHORT_ANSWER}", "pope") == f"Is there a dog?\n{SHORT_ANSWER}"
    assert with_benchmark_prompt("Describe it.", "long") == "Describe it."


def test_runner_round_trip_and_scores_equal_the_scorer(model, tmp_path):
    (tmp_path / "images").mkdir()
    questions, annotations = [], []
    for i in range(5):
        make_image(40 + 8 * i, 32, seed=i).save(tmp_path / "images" / f"{i}.png")
        questions.append({"question_id": f"q{i}", "image": f"{i}.png", "text": "Is there a dog?",
                          "category": "random" if i < 3 else "popular"})
        annotations.append({"question_id": f"q{i}", "label": "yes" if i % 2 else "no"})
    q_file, a_file = tmp_path / "pope.jsonl", tmp_path / "pope_annotations.jsonl"
    q_file.write_text("".join(json.dumps(q) + "\n" for q in questions))
    a_file.write_text("".join(json.dumps(a) + "\n" for a in annotations))
    out = tmp_path / "answers.jsonl"
    scores = run_benchmark(model, "pope", q_file, tmp_path / "images", out, a_file, batch_size=2,
                           max_new_tokens=3, progress=False)
    answers = read_jsonl(out)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert all(a["prompt"].endswith(SHORT_ANSWER) and {"text", "answer_id", "model_id"} <= a.keys()
               for a in answers)
    expected = pope_scores([a["text"] for a in answers], [a["label"] for a in annotations])
    assert {k: scores[k] for k in expected} == expected
    assert set(scores) >= {"random", "popular"}
    assert json.loads(out.with_suffix(".scores.json").read_text()) == scores
    assert score_benchmark("pope", questions, answers, load_annotations(a_file)) == scores


def test_runner_names_the_bad_line(model, tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "text": "hi"}\n{"text": "no id"}\n')
    with pytest.raises(ValueError, match="line 2"):
        run_benchmark(model, "gqa", tmp_path / "q.jsonl", None, tmp_path / "a.jsonl", progress=False)
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_benchmark(model, "vqa2", tmp_path / "q.jsonl", None, tmp_path / "a.jsonl", progress=False)


def test_eval_command_scores_a_saved_model(model, tmp_path, capsys):
    from minillava.cli import main

    model.save_pretrained(tmp_path / "model")
    make_image(48, 40).save(tmp_path / "a.png")
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "a.png", "text": "What colour?"}\n')
    (tmp_path / "gold.jsonl").write_text('{"question_id": 1, "answers": ["red", "red", "red"]}\n')
    main(["eval", "--model", str(tmp_path / "model"), "--benchmark", "vqa", "--questions", str(tmp_path / "q.jsonl"),
          "--image-folder", str(tmp_path), "--annotations", str(tmp_path / "gold.jsonl"), "--max-new-tokens", "2"])
    answer = read_jsonl(tmp_path / "q_answers.jsonl")[0]["text"]
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == {"accuracy": vqa_accuracy(answer, ["red"] * 3), "n": 1}


def test_beats_majority_by_two_standard_errors():
    # majority 0.5 over 100 questions: standard error 0.05, so the bar is 0.6
    assert beats_majority({"accuracy": 0.61, "majority": 0.5, "n": 100}) is True
    assert beats_majority({"accuracy": 0.59, "majority": 0.5, "n": 100}) is False
    assert beats_majority({"accuracy": 0.59, "majority": 0.5, "n": 10_000}) is True
    assert beats_majority({"word_f1": 0.7, "majority": None, "n": 100}) is None


def test_vision_probe_reads_the_features(model):
    probe = probe_vision_features(model.encoder, n_scenes=150)
    assert set(probe) == {"colour", "shape", "size", "position"}
    assert probe["colour"] >= 0.7  # colour is linear in the pixels, even through a random tower

    class Blind:  # the same interface, features that hold nothing: the probe must fall to chance
        num_patches = model.encoder.num_patches
        preprocess = model.encoder.preprocess

        def __call__(self, pixels):
            return torch.zeros(len(pixels), self.num_patches, 8)

    blind = probe_vision_features(Blind(), n_scenes=150)
    assert blind["colour"] <= 0.45 and blind["position"] <= 0.35  # position: 9 classes, "center" ~22%


def test_answer_attention_sums_the_named_objects_share(model, clip_dir, llm_dir):
    from minillava.hd import HDConfig
    from minillava.model import MiniLlava
    from minillava.toyreport import answer_attention

    before = model.lm.config._attn_implementation
    alone = answer_attention(model, n_scenes=4, batch_size=1)
    batched = answer_attention(model, n_scenes=4, batch_size=4)  # left-padded rows: padding must change nothing
    assert model.lm.config._attn_implementation == before  # the fused kernel is back
    assert list(alone) == ["named object", "other objects", "whole image", "even spread"]
    for name in alone:
        assert len(alone[name]) == model.lm.config.num_hidden_layers
        torch.testing.assert_close(torch.tensor(alone[name]), torch.tensor(batched[name]), atol=1e-5, rtol=0)
    # with every query zeroed, each position gets the same weight: the named object gets exactly the even spread
    for layer in model.lm.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    even = answer_attention(model, n_scenes=6, batch_size=3)
    torch.testing.assert_close(torch.tensor(even["named object"]), torch.tensor(even["even spread"]))
    assert all(0 < a < 1 for a in even["whole image"]) and max(even["named object"]) > 0
    with pytest.raises(ValueError, match="base encoder"):
        answer_attention(MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig()), n_scenes=1)


def test_accuracy_by_number_of_shapes():
    from minillava.toyworld import make_scene, objects_in

    one, three = (next(s for s in range(100) if len(make_scene(s).things) == n) for n in (1, 3))
    assert objects_in(f"scene{one}-colour") == 1 and objects_in(f"scene{three}-pope") == 3
    questions = [{"question_id": f"scene{one}-colour"}, {"question_id": f"scene{three}-colour"},
                 {"question_id": f"scene{three}-colour"}]
    assert by_objects("colour", questions, ["red", "blue", "red"], ["Red", "blue", "green"]) == {1: 1.0, 3: 0.5}
    assert by_objects("pope", questions, ["Yes", "no", "yes"], ["yes", "yes", "yes"]) == {1: 1.0, 3: 0.5}
    assert by_objects("detail", questions, ["a"] * 3, ["a"] * 3) is None


def test_report_names_the_failed_tasks_and_why(tmp_path):
    results = {"colour": {"accuracy": 0.9, "majority": 0.3, "n": 100, "short_share": 1.0, "examples": []},
               "shape": {"accuracy": 0.4, "majority": 0.36, "n": 100, "short_share": 1.0, "examples": [],
                         "by_objects": {1: 0.9, 2: 0.35, 3: 0.3}},
               "text": {"accuracy": 0.47, "majority": 0.47, "n": 100, "short_share": 1.0, "examples": []}}
    attention = {"named object": [0.02, 0.05], "other objects": [0.02, 0.04], "whole image": [0.3, 0.6],
                 "even spread": [0.02, 0.04]}
    write_report(results, tmp_path, probe={"colour": 0.99, "shape": 0.6, "size": 0.7}, attention=attention)
    report = (tmp_path / "report.md").read_text()
    section = report.split("## What it gets wrong, and why")[1].split("##")[0]
    assert "**text** (47% vs 47%)" in section and "HD grid encoder" in section
    assert "**colour**" not in section and "shape 60%" in section
    assert "by number of shapes in the scene: 1: 90%, 2: 35%, 3: 30%" in section and "(binding)" in section
    assert json.loads((tmp_path / "vision_probe.json").read_text())["shape"] == 0.6
    # the layer that looks hardest at the named object is quoted (here the last): 5% against 4% evenly spread
    assert "5.0% on the named object's patches" in section and "would get 4.0%" in section
    assert "has not formed" in section
    attention["named object"][-1] = 0.3  # a model that found it
    write_report(results, tmp_path, attention=attention)
    assert "has not formed" not in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "answer_attention.json").read_text())["named object"] == [0.02, 0.3]


def test_patches_on_uses_the_padded_square():
    from minillava.toyworld import Scene, Thing, patches_on

    # a 160 x 128 canvas is padded to 160 x 160 (16 px on top); 8 x 8 grid -> 20 px cells with centres 10, 30, ...
    # a small circle (half-width 13) at (50, 34) sits at (50, 50) on the square: centres 50 only (|30-50| = 20)
    thing = Thing("circle", "red", "small", 50, 34)
    assert patches_on(thing, Scene(160, 128, (thing,), None, None, seed=0), grid=8) == [2 * 8 + 2]
