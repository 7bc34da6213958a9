"""Each exercise check fails on the untouched TODO and on a plausible wrong answer, and passes on the solution.

The TODO and the solution are read from the exercise notebooks themselves (cells tagged ``todo`` / ``solution``),
so these tests check what students and teachers actually get."""

from pathlib import Path

import nbformat
import pytest
import torch

from minillava import exercises

FOLDER = Path(__file__).parent.parent / "notebooks" / "exercises"


def function_from(notebook: Path, tag: str, name: str):
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook}: expected one cell tagged {tag!r}"
    namespace: dict = {}
    exec(cells[0].source, namespace)
    return namespace[name]


def wrong_connector(vision_dim, llm_dim):  # ReLU instead of GELU
    return torch.nn.Sequential(torch.nn.Linear(vision_dim, llm_dim), torch.nn.ReLU(), torch.nn.Linear(llm_dim, llm_dim))


def wrong_labels(segments):  # forgets to mask the prompt
    ids = [t for tokens, _ in segments for t in tokens]
    return ids, list(ids)


def wrong_grid(width, height, cell, grids):  # the biggest grid always
    return max(grids, key=lambda g: g[0] * g[1])


def wrong_splice(text_embeds, input_ids, image_token_id, image_features):  # fills each row from feature 0
    out = text_embeds.clone()
    for row in range(len(out)):
        mask = input_ids[row] == image_token_id
        out[row, mask] = image_features[: int(mask.sum())]
    return out


def wrong_pope(answer):  # looks at the whole answer, not the text before the first '.'
    return "no" if "no" in answer.lower().replace(",", "").split() else "yes"


def wrong_lookup(things, target, kind):  # reads the answer from the first object, not the named one
    context = "I see " + ", ".join(f"a {size} {colour} {shape}" for size, colour, shape in things) + "."
    size, colour, shape = things[target]
    if kind == "colour":
        return context, f"What colour is the {shape}?", things[0][1]
    return context, f"What shape is the {colour} object?", things[0][2]


def wrong_ratio(weights, on):  # the even spread of 1, not of the image's share
    return float(weights[on].sum() / (len(on) / len(weights)))


CASES = [("01_mlp_connector", "build", exercises.check_mlp_connector, wrong_connector),
         ("02_label_mask", "build", exercises.check_label_mask, wrong_labels),
         ("03_grid_choice", "choose", exercises.check_grid_choice, wrong_grid),
         ("04_image_splice", "splice", exercises.check_image_splice, wrong_splice),
         ("05_pope_parser", "parse", exercises.check_pope_parser, wrong_pope),
         ("06_text_lookup", "lookup", exercises.check_text_lookup, wrong_lookup),
         ("07_attention_ratio", "ratio", exercises.check_attention_ratio, wrong_ratio)]


@pytest.mark.parametrize("name, fn, check, wrong", CASES, ids=[c[0] for c in CASES])
def test_check_fails_on_todo_and_wrong_and_passes_on_solution(name, fn, check, wrong, capsys):
    assert check(function_from(FOLDER / f"{name}.ipynb", "todo", fn)) is False
    assert "not implemented yet" in capsys.readouterr().out
    assert check(wrong) is False
    assert "✗" in capsys.readouterr().out
    assert check(function_from(FOLDER / "solutions" / f"{name}.ipynb", "solution", fn)) is True


def no_tie_break(width, height, cell, grids):  # the 90% rule and the fewest cells, but no padding tie-break
    def effective(g):
        scale = min(g[0] * cell / width, g[1] * cell / height)
        return min(int(width * scale) * int(height * scale), width * height)
    best = max(effective(g) for g in grids)
    return min((g for g in grids if effective(g) >= 0.9 * best), key=lambda g: g[0] * g[1])


def no_90_rule(width, height, cell, grids):  # the best resolution, then the fewest cells
    def effective(g):
        scale = min(g[0] * cell / width, g[1] * cell / height)
        return min(int(width * scale) * int(height * scale), width * height)
    best = max(effective(g) for g in grids)
    return min((g for g in grids if effective(g) == best), key=lambda g: g[0] * g[1])


def first_round_only(segments):  # masks everything after the first answer
    ids, labels, answered = [], [], False
    for tokens, trained in segments:
        ids += tokens
        labels += tokens if trained and not answered else [-100] * len(tokens)
        answered = answered or trained
    return ids, labels


@pytest.mark.parametrize("check, wrong, hint", [
    (exercises.check_grid_choice, no_tie_break, "tie by the least padding"),
    (exercises.check_grid_choice, no_90_rule, "fewest cells"),
    (exercises.check_label_mask, first_round_only, "round after round"),
    (exercises.check_text_lookup, wrong_lookup, "belongs to another object"),
    (exercises.check_text_lookup, lambda things, t, kind: ("I see " + " and ".join(f"a {c} {s}" for _, c, s in things),
                                                          f"What colour is the {things[t][1]} {things[t][2]}?",
                                                          things[t][1]), "gives the answer away"),
    (exercises.check_attention_ratio, wrong_ratio, "image's* share"),
    (exercises.check_attention_ratio, lambda w, on: float(w[on].sum()), "named object's share")],
    ids=["tie-break", "90%", "second turn", "wrong object", "leaky question", "even spread of 1", "no division"])
def test_subtle_rules_are_told_apart(check, wrong, hint, capsys):
    assert check(wrong) is False
    assert hint in capsys.readouterr().out


WRONG_TYPES = {  # a function of the right arity returning something of the wrong type
    "01_mlp_connector": lambda vision, llm: [torch.nn.Linear(vision, llm)],
    "02_label_mask": lambda segments: "ids, labels",
    "03_grid_choice": lambda w, h, cell, grids: "2x2",
    "04_image_splice": lambda embeds, ids, image_id, features: embeds.tolist(),
    "05_pope_parser": lambda answer: answer.startswith("Yes"),
    "06_text_lookup": lambda things, target, kind: {"answer": "red"},
    "07_attention_ratio": lambda weights, on: "3.2"}


@pytest.mark.parametrize("name, fn, check, wrong", CASES, ids=[c[0] for c in CASES])
def test_check_explains_none_and_wrong_types_without_a_traceback(name, fn, check, wrong, capsys):
    def returns_none(*args):  # the classic slip: the answer is computed, the `return` is missing
        wrong(*args)

    assert check(returns_none) is False
    out = capsys.readouterr().out
    assert "returned None" in out and "return` missing" in out and "Traceback" not in out
    assert check(WRONG_TYPES[name]) is False
    out = capsys.readouterr().out
    assert "should return" in out and "Traceback" not in out
    assert check("build") is False  # the function's name as a string, not the function
    assert "pass your function itself" in capsys.readouterr().out


def test_a_crashing_answer_is_reported_not_raised(capsys):
    assert exercises.check_pope_parser(lambda answer: answer.nonexistent) is False
    assert "AttributeError" in capsys.readouterr().out
