"""Checks for the classroom exercises in ``notebooks/exercises/``.

Each ``check_…`` takes the student's function, compares it with minillava's own implementation on a set of
cases (including the tricky ones), prints what is right or a hint about what is wrong, and returns ``True`` or
``False``. They never raise on a wrong answer, so an exercise notebook always runs to the end.
"""

from __future__ import annotations

import numbers
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


def _call(fn: Callable, *args, returns: type | tuple[type, ...] = object, what: str = "a value"):
    """(result, None) or (None, a message): about the exception the student's function raised, or about a result
    that is not of the type ``returns`` (``what`` says it in words) - the usual slip being a missing ``return``."""
    if not callable(fn):
        return None, f"pass your function itself (e.g. `check(build)`), not {type(fn).__name__}"
    try:
        result = fn(*args)
    except NotImplementedError:
        return None, "not implemented yet: replace the `raise NotImplementedError` with your code"
    except Exception as e:  # a student's bug: show it, don't crash the notebook
        return None, f"your function raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=-1)}"
    if result is None and returns is not object:
        return None, f"your function returned None: it should return {what} (is a `return` missing?)"
    if not isinstance(result, returns):
        return None, f"your function should return {what}; it returned {type(result).__name__}: {result!r:.80}"
    return result, None


# ----------------------------------------------------------------------------- 1. the MLP connector


def check_mlp_connector(build: Callable[[int, int], torch.nn.Module]) -> bool:
    """``build(vision_dim, llm_dim)`` must return LLaVA-1.5's mlp2x_gelu: Linear(v, l) -> GELU -> Linear(l, l)."""
    module, error = _call(build, 24, 40, returns=torch.nn.Module, what="an nn.Module (e.g. an nn.Sequential)")
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
        got, error = _call(module, x, returns=torch.Tensor, what="a tensor when called on a tensor")
        if error:
            return _fail(error.replace("your function", "your module"))
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
        got, error = _call(build, [(list(t), trained) for t, trained in case], returns=(tuple, list),
                           what="a pair (input_ids, labels)")
        if error:
            return _fail(error)
        want = _reference_labels(case)
        if len(got) != 2 or not all(isinstance(part, list | tuple | torch.Tensor) for part in got):
            return _fail(f"return a pair (input_ids, labels) of two lists; got {got!r:.80}")
        ids, labels = list(got[0]), list(got[1])
        if ids != want[0]:
            return _fail(f"input_ids should be all segments' tokens in order: want {want[0]}, got {ids}")
        if labels == want[1]:
            continue
        if labels == want[0]:
            return _fail(f"every token is trained in {case}: the prompt segments must be masked with {IGNORE_INDEX}")
        if labels[:-1] == want[1][1:] or labels[1:] == want[1][:-1]:
            return _fail("labels are shifted by one: keep them aligned with input_ids (the model shifts them)")
        if len(case) > 2 and labels[:len(case[0][0]) + len(case[1][0])] == want[1][:len(case[0][0]) + len(case[1][0])]:
            return _fail(f"the first round is right, a later one is not: every answer is trained and every "
                         f"question masked, round after round. For {case}: want {want[1]}, got {labels}")
        return _fail(f"for segments {case}: want labels {want[1]}, got {labels}")
    return _ok("labels by construction: only the answers (and their </s>) are trained")


# ----------------------------------------------------------------------------- 3. the HD grid choice

# (width, height, grids): None is default_grids(6). (225, 225) and the tall ones separate the 90% rule from "the
# best resolution, then the fewest cells"; the custom grid lists separate the tie-break (least padding) from
# "the first grid with the fewest cells".
GRID_CASES = [(224, 224, None), (448, 448, None), (672, 448, None), (448, 672, None), (1000, 100, None),
              (100, 1000, None), (225, 225, None), (10, 10, None), (4000, 3000, None), (336, 224, None),
              (600, 200, None), (200, 690, None), (350, 1040, None), (232, 50, [(1, 2), (2, 1)]),
              (453, 50, [(2, 3), (3, 2)]), (50, 458, [(3, 2), (2, 3)])]


def check_grid_choice(choose: Callable[[int, int, int, list[tuple[int, int]]], tuple[int, int]]) -> bool:
    """``choose(width, height, cell, grids)`` -> (cols, rows), the rule of ``minillava.hd.choose_grid``."""
    for w, h, grids in GRID_CASES:
        grids = grids or default_grids(6)
        got, error = _call(choose, w, h, 224, list(grids), returns=(tuple, list), what="a pair (cols, rows)")
        if error:
            return _fail(error)
        want = choose_grid(w, h, 224, grids)
        if len(got) != 2 or not all(isinstance(n, numbers.Integral) for n in got):
            return _fail(f"return a pair of two ints (cols, rows); got {got!r:.80}")
        if tuple(got) != tuple(want):
            hint = ""
            if got[0] * got[1] > want[0] * want[1]:
                hint = " (more cells than needed: among grids within 90% of the best resolution, take the fewest cells)"
            elif got[0] * got[1] == want[0] * want[1]:
                hint = " (as many cells: break the tie by the least padding, i.e. the most of the image's pixels kept)"
            return _fail(f"{w}x{h} with 224-px cells and grids {grids}: want grid {want}, got {tuple(got)}{hint}")
    return _ok(f"the same grid as minillava for all {len(GRID_CASES)} cases")


# ----------------------------------------------------------------------------- 4. the image-token splice


def check_image_splice(splice: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]) -> bool:
    """``splice(text_embeds (B, T, H), input_ids (B, T), image_token_id, image_features (N, H))`` -> (B, T, H)
    with the N image positions (row by row, left to right) replaced by the features in order."""
    g = torch.Generator().manual_seed(0)
    image_id = 9
    input_ids = torch.tensor([[1, 9, 9, 9, 5, 6], [0, 1, 7, 9, 9, 9], [1, 4, 4, 4, 4, 4]])  # last row: text only
    embeds = torch.randn(3, 6, 4, generator=g)
    features = torch.randn(6, 4, generator=g)
    got, error = _call(splice, embeds.clone(), input_ids, image_id, features, returns=torch.Tensor,
                       what="the (B, T, H) tensor of embeddings")
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
        got, error = _call(parse, text, returns=str, what='the string "yes" or "no"')
        if error:
            return _fail(error)
        want = pope_label(text)
        if got != want:
            hint = {"Yes. There is no cat.": " (only the text before the first '.' counts)",
                    "Nope": " (the rule matches the words No/not/no exactly, so 'Nope' is a yes)",
                    "no, dog": " (commas are dropped before splitting into words)"}.get(text, "")
            return _fail(f"{text!r}: want {want!r}, got {got!r}{hint}")
    return _ok(f"the official POPE parsing on all {len(POPE_CASES)} answers")


# ----------------------------------------------------------------------------- 6. a text lookup

LOOKUP_CASES = [  # (things, target index, kind): the named object is first, middle and last; one object alone
    ([("large", "red", "circle")], 0, "colour"),
    ([("small", "blue", "square"), ("large", "red", "triangle")], 1, "colour"),
    ([("small", "blue", "square"), ("large", "red", "triangle"), ("small", "green", "circle")], 0, "shape"),
    ([("small", "blue", "square"), ("large", "yellow", "triangle"), ("small", "green", "circle")], 1, "shape"),
    ([("large", "green", "square"), ("small", "red", "circle"), ("large", "blue", "triangle")], 2, "colour"),
]


def check_text_lookup(lookup: Callable[[list[tuple[str, str, str]], int, str], tuple[str, str, str]]) -> bool:
    """``lookup(things, target, kind)`` -> ``(context, question, answer)``: the scene in words (every object,
    its colour right before its shape), a question that names ``things[target]`` by one attribute and asks for
    the other (``kind`` "colour": "What colour is the <shape>?"; "shape": "What shape is the <colour> object?"),
    and the answer, read from the named object. The toy LM learns thousands of these before it sees an image."""
    for things, target, kind in LOOKUP_CASES:
        got, error = _call(lookup, [tuple(t) for t in things], target, kind, returns=(tuple, list),
                           what="a triple (context, question, answer)")
        if error:
            return _fail(error)
        if len(got) != 3 or not all(isinstance(part, str) for part in got):
            return _fail(f"return three strings (context, question, answer); got {got!r:.80}")
        context, question, answer = got
        size, colour, shape = things[target]
        want, name = (colour, shape) if kind == "colour" else (shape, colour)
        missing = [f"{c} {s}" for _, c, s in things if f"{c} {s}" not in context]
        if missing:
            return _fail(f"the context must tell every object, its colour right before its shape: {missing} "
                         f"not found in {context!r}")
        if want in question.lower().split("?")[0].split():
            return _fail(f"the question gives the answer away: {question!r} names {want!r}. Name the object by "
                         "its other attribute only, so that answering needs a look at the context")
        if name not in question:
            return _fail(f"the question must name the object by its {'shape' if kind == 'colour' else 'colour'} "
                         f"({name!r}); got {question!r}")
        if answer.strip().lower().rstrip(".") != want:
            others = [c if kind == "colour" else s for _, c, s in things]
            hint = (" - that belongs to another object: read the answer from the named one, things[target]"
                    if answer.strip().lower() in others else "")
            return _fail(f"for {things} and target {target} ({kind}): want the answer {want!r}, got {answer!r}{hint}")
    return _ok(f"a lookup the LM must read the context for, in all {len(LOOKUP_CASES)} scenes (named object "
               "first, middle and last)")


# ----------------------------------------------------------------------------- 7. reading an attention map


def _named_ratio(weights: torch.Tensor, on: list[int]) -> float:
    return float(weights[on].sum() / (weights.sum() * len(on) / len(weights)))


def check_attention_ratio(ratio: Callable[[torch.Tensor, list[int]], float]) -> bool:
    """``ratio(weights, on)`` -> how many times the even spread the named object gets: ``weights`` ``(N,)`` is
    the attention the answer position puts on each of the image's N patches (they sum to the image's share of
    the attention, less than 1: the rest goes to the text), ``on`` the named object's patch indices. The even
    spread is the image's share spread evenly over its patches; ``toyreport.answer_attention`` uses the same
    yardstick."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for share, n_on in ((0.6, 4), (0.25, 9), (0.9, 1)):
        w = torch.rand(64, generator=g)
        w = share * w / w.sum()  # the image's share of the attention: less than 1
        cases.append((w, sorted(torch.randperm(64, generator=g)[:n_on].tolist())))
    flat = torch.full((64,), 0.5 / 64)
    cases.append((flat, [3, 4, 11, 12]))  # an even spread: ratio exactly 1
    for weights, on in cases:
        got, error = _call(ratio, weights.clone(), list(on), returns=(float, int, torch.Tensor), what="a number")
        if error:
            return _fail(error)
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            return _fail(f"return one number, not a tensor of shape {tuple(got.shape)}")
        got, want = float(got), _named_ratio(weights, on)
        if abs(got - want) < 1e-5 * max(1.0, abs(want)):
            continue
        share, named = float(weights.sum()), float(weights[on].sum())
        if abs(got - named / (len(on) / len(weights))) < 1e-5 * max(1.0, abs(got)):
            return _fail(f"the even spread is the *image's* share ({share:.2f} here) spread over the patches, not "
                         "1 spread over them: part of the attention goes to the text")
        if abs(got - named) < 1e-6:
            return _fail("that is the named object's share; divide by what it would get if the image's share were "
                         "spread evenly over all patches")
        return _fail(f"for {len(on)} named patches of {len(weights)}: want {want:.3f}, got {got:.3f}")
    return _ok("1.0 means the object gets no more than its share; a model that found it scores several times that")
