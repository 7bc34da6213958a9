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


CASES = [("01_mlp_connector", "build", exercises.check_mlp_connector, wrong_connector),
         ("02_label_mask", "build", exercises.check_label_mask, wrong_labels),
         ("03_grid_choice", "choose", exercises.check_grid_choice, wrong_grid),
         ("04_image_splice", "splice", exercises.check_image_splice, wrong_splice),
         ("05_pope_parser", "parse", exercises.check_pope_parser, wrong_pope)]


@pytest.mark.parametrize("name, fn, check, wrong", CASES, ids=[c[0] for c in CASES])
def test_check_fails_on_todo_and_wrong_and_passes_on_solution(name, fn, check, wrong, capsys):
    assert check(function_from(FOLDER / f"{name}.ipynb", "todo", fn)) is False
    assert "not implemented yet" in capsys.readouterr().out
    assert check(wrong) is False
    assert "✗" in capsys.readouterr().out
    assert check(function_from(FOLDER / "solutions" / f"{name}.ipynb", "solution", fn)) is True


def test_a_crashing_answer_is_reported_not_raised(capsys):
    assert exercises.check_pope_parser(lambda answer: answer.nonexistent) is False
    assert "AttributeError" in capsys.readouterr().out
