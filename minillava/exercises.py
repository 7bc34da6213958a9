"""Checks for the classroom exercises in ``notebooks/exercises/``.

Each ``check_…`` takes the student's function, compares it with minillava's own implementation on a set of
cases (including the tricky ones), prints what is right or a hint about what is wrong, and returns ``True`` or
``False``. They never raise on a wrong answer, so an exercise notebook always runs to the end.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from .connector import build_connector
from .evaluate import pope_label
from .hd import choose_grid, default_grids
from .prompts import IGNORE_INDEX


def _ok(message: str) -> bool:
    print(f"✓ {message}")
    return True


def _fail(message: str) -> bool:
    print(f"✗ {message}")
    return False


def _call(fn: Callable, *args):
    """(result, None) or (None, a message about the exception)."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, "not implemented yet: replace the `raise NotImplementedError` with your code"
    except Exception as e:  # a student's bug: show it, don't crash the notebook
        return None, f"your function raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=-1)}"


# ----------------------------------------------------------------------------- 1. the MLP connector


def check_mlp_connector(build: Callable[[int, int], torch.nn.Module]) -> bool:
    """``build(vision_dim, llm_dim)`` must return LLaVA-1.5's mlp2x_gelu: Linear(v, l) -> GELU -> Linear(l, l)."""
    module, error = _call(build, 24, 40)
    if error:
        return _fail(error)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [tuple(m.weight.shape) for m in linears]
    if shapes != [(40, 24), (40, 40)]:
        return _fail(f"expected two Linear layers, 24 -> 40 then 40 -> 40 (weights (40, 24), (40, 40)); "
                     f"found weights {shapes}")
    if any(m.bias is None for m in linears):
        return _fail("LLaVA's connector layers have biases (nn.Linear's default)")
    reference = build_connector("mlp2x_gelu", 24, 40)
    with torch.no_grad():
        for ours, theirs in zip([reference[0], reference[2]], linears):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        x = torch.randn(2, 5, 24)
        got, error = _call(module, x)
        if error:
            return _fail(error)
        if tuple(got.shape) != (2, 5, 40):
            return _fail(f"(batch, patches, 24) must map to (batch, patches, 40); got {tuple(got.shape)}")
        if not torch.allclose(got, reference(x), atol=1e-5):
            relu = torch.nn.Sequential(reference[0], torch.nn.ReLU(), reference[2])
            if torch.allclose(got, relu(x), atol=1e-5):
                return _fail("close: LLaVA-1.5 uses GELU between the layers, not ReLU")
            if torch.allclose(got, reference[2](reference[0](x)), atol=1e-5):
                return _fail("without a non-linearity two Linear layers are just one linear map: add a GELU")
            return _fail("the output differs from Linear -> GELU -> Linear with the same weights")
    n = sum(p.numel() for p in module.parameters())
    return _ok(f"mlp2x_gelu with {n} parameters (for CLIP-L 1024 -> Vicuna-7B 4096 it would be 20,979,712)")


# ----------------------------------------------------------------------------- 2. the label mask


def _reference_labels(segments):
    ids, labels = [], []
    for tokens, trained in segments:
        ids += tokens
        labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    return ids, labels


LABEL_CASES = [
    [([1, 10, 11, 12], False), ([20, 21, 2], True)],  # system+question, answer + </s>
    [([1, 10], False), ([20, 2], True), ([13, 14], False), ([22, 23, 24, 2], True)],  # two rounds
    [([1, 10, 11], False)],  # nothing to learn: all masked
    [([5, 6], True)],  # everything trained (the plain template's caption)
]


def check_label_mask(build: Callable[[list[tuple[list[int], bool]]], tuple[list[int], list[int]]]) -> bool:
    """``build(segments)`` -> ``(input_ids, labels)``: ids concatenated; labels = the ids of trained segments,
    IGNORE_INDEX (-100) elsewhere. No shift: the model shifts labels itself."""
    for case in LABEL_CASES:
        got, error = _call(build, [(list(t), trained) for t, trained in case])
        if error:
            return _fail(error)
        want = _reference_labels(case)
        if not isinstance(got, tuple | list) or len(got) != 2:
            return _fail("return a pair (input_ids, labels)")
        ids, labels = list(got[0]), list(got[1])
        if ids != want[0]:
            return _fail(f"input_ids should be all segments' tokens in order: want {want[0]}, got {ids}")
        if labels == want[1]:
            continue
        if labels == want[0]:
            return _fail(f"every token is trained in {case}: the prompt segments must be masked with {IGNORE_INDEX}")
        if labels[:-1] == want[1][1:] or labels[1:] == want[1][:-1]:
            return _fail("labels are shifted by one: keep them aligned with input_ids (the model shifts them)")
        return _fail(f"for segments {case}: want labels {want[1]}, got {labels}")
    return _ok("labels by construction: only the answers (and their </s>) are trained")


# ----------------------------------------------------------------------------- 3. the HD grid choice

GRID_CASES = [(224, 224), (448, 448), (672, 448), (448, 672), (1000, 100), (100, 1000), (225, 225), (10, 10),
              (4000, 3000), (336, 224), (600, 200)]


def check_grid_choice(choose: Callable[[int, int, int, list[tuple[int, int]]], tuple[int, int]]) -> bool:
    """``choose(width, height, cell, grids)`` -> (cols, rows), the rule of ``minillava.hd.choose_grid``."""
    grids = default_grids(6)
    for w, h in GRID_CASES:
        got, error = _call(choose, w, h, 224, list(grids))
        if error:
            return _fail(error)
        want = choose_grid(w, h, 224, grids)
        if tuple(got) != tuple(want):
            hint = ""
            if tuple(got)[0] * tuple(got)[1] > want[0] * want[1]:
                hint = " (more cells than needed: among grids within 90% of the best resolution, take the fewest cells)"
            return _fail(f"{w}x{h} with 224-px cells: want grid {want}, got {tuple(got)}{hint}")
    return _ok(f"the same grid as minillava for all {len(GRID_CASES)} sizes")


# ----------------------------------------------------------------------------- 4. the image-token splice


def check_image_splice(splice: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]) -> bool:
    """``splice(text_embeds (B, T, H), input_ids (B, T), image_token_id, image_features (N, H))`` -> (B, T, H)
    with the N image positions (row by row, left to right) replaced by the features in order."""
    g = torch.Generator().manual_seed(0)
    image_id = 9
    input_ids = torch.tensor([[1, 9, 9, 9, 5, 6], [0, 1, 7, 9, 9, 9], [1, 4, 4, 4, 4, 4]])  # last row: text only
    embeds = torch.randn(3, 6, 4, generator=g)
    features = torch.randn(6, 4, generator=g)
    got, error = _call(splice, embeds.clone(), input_ids, image_id, features)
    if error:
        return _fail(error)
    want = embeds.masked_scatter((input_ids == image_id).unsqueeze(-1), features)
    if tuple(got.shape) != tuple(want.shape):
        return _fail(f"shape must stay (B, T, H) = {tuple(want.shape)}; got {tuple(got.shape)}")
    if torch.allclose(got, want):
        return _ok("image features fill the image positions in reading order; text positions untouched")
    text = input_ids != image_id
    if not torch.allclose(got[text], embeds[text]):
        return _fail("text positions changed: only the image-token positions may be replaced")
    if torch.allclose(got[0, 1:4], features[3:6]):
        return _fail("the images are out of order: the first <image> block in the batch takes the first features")
    return _fail("image positions hold the wrong features: row 0 positions 1-3 take features[0:3], "
                 "row 1 positions 3-5 take features[3:6]")


# ----------------------------------------------------------------------------- 5. the POPE answer parser

POPE_CASES = ["Yes.", "No.", "yes", "no", "No, there is not.", "There is not a dog in the image.",
              "Yes, there is a dog.", "Yes. There is no cat.", "Nope", "I do not see one.", "Not sure", "no, dog"]


def check_pope_parser(parse: Callable[[str], str]) -> bool:
    """``parse(answer)`` -> "yes" or "no", by the official POPE rule."""
    for text in POPE_CASES:
        got, error = _call(parse, text)
        if error:
            return _fail(error)
        want = pope_label(text)
        if got != want:
            hint = {"Yes. There is no cat.": " (only the text before the first '.' counts)",
                    "Nope": " (the rule matches the words No/not/no exactly, so 'Nope' is a yes)",
                    "no, dog": " (commas are dropped before splitting into words)"}.get(text, "")
            return _fail(f"{text!r}: want {want!r}, got {got!r}{hint}")
    return _ok(f"the official POPE parsing on all {len(POPE_CASES)} answers")
