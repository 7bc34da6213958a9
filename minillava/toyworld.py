"""The toy world: procedurally generated scenes and LLaVA-format data about them (the embedded default).

Each scene is a light canvas with 1-3 coloured shapes (circle, square, triangle; small or large) and, in half of
the scenes, one tiny printed character that is legible at full resolution but not after downscaling to the
encoder's input size (the point of LLaVA-1.5-HD). Everything is drawn from a seed, so the same seed gives the
same images and records, byte for byte.

From the scenes come records shaped like the real LLaVA data (``{"id", "image", "conversations"}``, image paths
relative to an image folder), mirroring the real mix:

- stage 1 (``stage1.json``, like LCS-558K): brief captions for the ``plain`` template;
- stage 2 (``stage2.json``, like llava_v1_5_mix665k): detailed descriptions and multi-turn conversations (long
  answers, no format prompt); short-answer VQA (colour, shape, counting) with the short-answer prompt; multiple
  choice with the letter prompt; POPE-style yes/no existence questions (one about a present and one about an
  absent object); reading the tiny character; region description and bounding boxes (normalised on the padded
  square, 2 decimals); and a share of text-only conversations;
- held-out evaluation sets (``eval/<task>.jsonl`` questions in the LLaVA layout, ``question_id``, ``image``,
  ``text``, ``category``; answers in ``eval/<task>_answers.jsonl``).
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .prompts import IMAGE, MULTIPLE_CHOICE, REGION_TO_TEXT, SHORT_ANSWER, TEXT_TO_REGION, with_format_prompt

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 215), "yellow": (225, 195, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 13, "large": 22}  # half-width in pixels on a 128-pixel canvas
CHARACTERS = "ABCDEFHKLMNPRTXZ2345679"  # glyphs that stay distinct in a tiny font
CANVAS_SIZES = ((128, 128), (160, 128), (128, 160))  # (width, height): square, landscape, portrait
NUMBER_WORDS = ["zero", "one", "two", "three"]
PAD_COLOUR = (122, 116, 104)  # what the encoders pad with: CLIP's mean colour (encoder.mean_colour)
WORLD_VERSION = 6  # bump when the generator changes, so cached worlds (and backbones built on them) are rebuilt


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    x: int  # centre, pixels
    y: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    things: tuple[Thing, ...]
    character: str | None  # the tiny printed character, if any
    char_xy: tuple[int, int] | None
    seed: int


def where(thing: Thing, scene: Scene) -> str:
    """"top left", "center", ... from the thing's centre in thirds of the canvas."""
    col = ("left", "center", "right")[min(2, thing.x * 3 // scene.width)]
    row = ("top", "middle", "bottom")[min(2, thing.y * 3 // scene.height)]
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}".replace("middle center", "center")


POSITIONS = ["top left", "top center", "top right", "middle left", "center", "middle right", "bottom left",
             "bottom center", "bottom right"]  # every answer of ``where``


def make_scene(seed: int, n_things: int | None = None) -> Scene:
    """A random scene with ``n_things`` shapes (default: 1 to 3); the same seed gives the same scene."""
    rng = random.Random(seed)
    width, height = rng.choice(CANVAS_SIZES)
    # distinct shapes and distinct colours, so "the circle" and "the red object" are unambiguous
    n = n_things or rng.randint(1, 3)
    kinds = list(zip(rng.sample(SHAPES, k=n), rng.sample(list(COLOURS), k=n)))
    things: list[Thing] = []
    for shape, colour in kinds:
        size = rng.choice(list(SIZES))
        r = SIZES[size]
        for _ in range(100):  # rejection sampling: no overlaps, inside the canvas
            x, y = rng.randint(r + 2, width - r - 2), rng.randint(r + 2, height - r - 16)
            if all(abs(x - t.x) > r + SIZES[t.size] + 4 or abs(y - t.y) > r + SIZES[t.size] + 4 for t in things):
                things.append(Thing(shape, colour, size, x, y))
                break
    character = rng.choice(CHARACTERS) if rng.random() < 0.5 else None
    char_xy = (rng.randint(2, width - 10), height - 12) if character else None
    return Scene(width, height, tuple(things), character, char_xy, seed)


def draw_scene(scene: Scene) -> Image.Image:
    """Render a scene to an RGB image (with light clutter: a few faint dots)."""
    rng = random.Random(scene.seed + 1)
    image = Image.new("RGB", (scene.width, scene.height), (238, 236, 230))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(scene.width), rng.randrange(scene.height)
        draw.point((x, y), fill=(200, 198, 190))
    for t in scene.things:
        r, fill = SIZES[t.size], COLOURS[t.colour]
        box = (t.x - r, t.y - r, t.x + r, t.y + r)
        if t.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif t.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(t.x, t.y - r), (t.x - r, t.y + r), (t.x + r, t.y + r)], fill=fill)
    if scene.character:
        draw.text(scene.char_xy, scene.character, fill=(20, 20, 20), font=ImageFont.load_default(size=9))
    return image


def box_on_padded_square(thing: Thing, scene: Scene) -> str:
    """The thing's box as ``[x1, y1, x2, y2]`` normalised to [0, 1] on the image padded to a square (LLaVA-1.5)."""
    side = max(scene.width, scene.height)
    dx, dy = (side - scene.width) // 2, (side - scene.height) // 2
    r = SIZES[thing.size]
    coords = (thing.x - r + dx, thing.y - r + dy, thing.x + r + dx, thing.y + r + dy)
    return "[" + ", ".join(f"{c / side:.2f}" for c in coords) + "]"


# ----------------------------------------------------------------------------- language about a scene


def caption(scene: Scene, positions: bool = False, character: bool = False) -> str:
    """A brief caption: "A small red circle and a large blue square." (``positions``: "... circle at the top
    left and ...", as stage 1 captions the world's images; ``character``: "... The character Q is printed near
    the bottom.", as TextCaps' captions name the text in an image)."""
    names = [f"a {t.size} {t.name}" + (f" at the {where(t, scene)}" if positions else "") for t in scene.things]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    text = text[0].upper() + text[1:] + "."
    if character and scene.character:
        text += f" The character {scene.character} is printed near the bottom."
    return text


def description(scene: Scene) -> str:
    n = len(scene.things)
    parts = [f"The image shows {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''} on a light background."]
    parts += [f"A {t.size} {t.name} is at the {where(t, scene)}." for t in scene.things]
    parts.append(f"The character {scene.character} is printed near the bottom." if scene.character
                 else "There is no text in the image.")
    return " ".join(parts)


def absent_thing(scene: Scene, rng: random.Random) -> str:
    present = {t.name for t in scene.things}
    return rng.choice([f"{c} {s}" for s in SHAPES for c in COLOURS if f"{c} {s}" not in present])


def short_qa(scene: Scene, rng: random.Random, kind: str, thing: Thing | None = None) -> tuple[str, str]:
    """(question, answer) of one short-answer question of ``kind`` (colour, shape or count) about ``thing``
    (by default one drawn with ``rng``)."""
    t = thing or rng.choice(scene.things)
    if kind == "colour":
        return f"What colour is the {t.shape}?", t.colour
    if kind == "shape":
        return f"What shape is the {t.colour} object?", t.shape
    return "How many shapes are there?", str(len(scene.things))


def pope_qa(scene: Scene, rng: random.Random, present: bool | None = None) -> tuple[str, str]:
    """A POPE-style existence question about an object that is in the scene or not (by default: a coin flip)."""
    present = rng.random() < 0.5 if present is None else present
    name = rng.choice(scene.things).name if present else absent_thing(scene, rng)
    return f"Is there a {name} in the image?", "yes" if present else "no"


def colour_options(colour: str, rng: random.Random) -> tuple[str, str]:
    """Four option lines ("A. red" ...) of colours drawn with ``rng``, one of them ``colour``, and its letter."""
    options = rng.sample(list(COLOURS), k=4)
    return "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(options)), "ABCD"[options.index(colour)]


def choice_qa(scene: Scene, rng: random.Random) -> tuple[str, str]:
    t = rng.choice(scene.things)
    lines, letter = colour_options(t.colour, rng)
    return f"What colour is the {t.shape}?\n{lines}", letter


TEXT_ONLY = [("Which shape has three corners?", "A triangle has three corners."),
             ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
             ("How many sides does a square have?", "A square has four equal sides."),
             ("Is a circle round?", "Yes, a circle is perfectly round."),
             ("Name a warm colour.", "Red is a warm colour."),
             ("What is bigger, a large circle or a small circle?", "A large circle is bigger than a small one.")]


STAGE2_KINDS = ("detail", "conversation", "short", "choice", "pope", "text", "region")


def task_pairs(kind: str, scene: Scene, rng: random.Random, character: bool = True) -> list[tuple[str, str]]:
    """The (question, answer) pairs of one task kind about ``scene``, with the kind's response-format prompt
    (``character``: the conversation's caption names the printed character)."""
    if kind == "detail":
        return [("Describe the image in detail.", description(scene))]
    if kind == "conversation":
        t = rng.choice(scene.things)
        return [("What can you see in this picture?", caption(scene, character=character)),
                (f"Where is the {t.name}?", f"The {t.name} is at the {where(t, scene)} of the image.")]
    if kind == "short":  # like VQAv2/GQA
        kinds = rng.sample(["colour", "shape", "count"], k=rng.randint(1, 3))
        return [(with_format_prompt(q, SHORT_ANSWER), a) for q, a in (short_qa(scene, rng, k) for k in kinds)]
    if kind == "choice":
        q, a = choice_qa(scene, rng)
        return [(with_format_prompt(q, MULTIPLE_CHOICE), a)]
    if kind == "pope":
        pairs = [pope_qa(scene, rng, present=True), pope_qa(scene, rng, present=False)]  # one of each, as POPE
        rng.shuffle(pairs)
        return [(with_format_prompt(q, SHORT_ANSWER), a) for q, a in pairs]
    if kind == "text":
        return [(with_format_prompt("What character is printed in the image?", SHORT_ANSWER),
                 scene.character or "none")]
    t = rng.choice(scene.things)  # region
    box = box_on_padded_square(t, scene)
    return [(with_format_prompt(box, REGION_TO_TEXT), f"A {t.size} {t.name}."),
            (with_format_prompt(f"The {t.name}.", TEXT_TO_REGION), box)]


def stage2_record(scene: Scene, image: str, rng: random.Random, kinds_per_image: int = 2,
                  character: bool = True) -> dict:
    """One instruction-tuning record about ``scene``: the QA pairs of a few task kinds merged into one
    multi-turn conversation, as LLaVA-1.5's mix merges the QA pairs of one image."""
    kinds = rng.sample(STAGE2_KINDS, k=kinds_per_image)
    pairs = [pair for kind in kinds for pair in task_pairs(kind, scene, rng, character)]
    conv = []
    for i, (q, a) in enumerate(pairs):
        conv += [{"from": "human", "value": (IMAGE + "\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"scene{scene.seed}-{'+'.join(kinds)}", "image": image, "conversations": conv}


# ----------------------------------------------------------------------------- text-only scenes (the LM's pretraining)

# A few ways to name one object. The colour stays right before its shape: the toy tokenizer names each coloured
# shape with one token (" red circle"), as one image patch holds a coloured shape in one vector, and a lookup
# in text is then what a lookup in an image is: find the position that holds "circle", read out its colour.
_OBJECT_WORDINGS = ("a {size} {colour} {shape}", "a {colour} {shape}", "one {colour} {shape}")
_SCENE_OPENERS = ("There is {objects}.", "I see {objects}.", "The picture shows {objects}.", "{Objects}.",
                  "Here we have {objects}.")
TEXT_LOOKUP_KINDS = ("colour", "shape", "count", "pope", "choice", "where", "colour_long", "shape_long", "option",
                     "text")
# The kinds a record's questions are drawn from: the two that need binding (find the named object, read out its
# other attribute) twice as often as the rest.
TEXT_LOOKUP_MIX = ("colour", "shape") * 2 + ("count", "pope", "choice", "where", "colour_long", "shape_long")
# The LM's last pretraining phase adds multiple choice's second hop on its own ("option": which option line names
# this colour?) and asks the full multiple-choice question more often. From the first step, these kinds kept the
# "is there" lookup from forming; added once it has formed, they leave it standing (docs/findings.md).
TEXT_LOOKUP_HOP_MIX = TEXT_LOOKUP_MIX + ("choice", "option") * 2
# The last phase tells where the objects are in most scenes, each object with its place in one token (below),
# and asks "where" more often.
TEXT_LOOKUP_POSITION_MIX = TEXT_LOOKUP_HOP_MIX + ("where",) * 2
# The fifth phase tells the printed character after the scene ("... and a blue square. Q") and asks for it, so
# that the LM reads a character before any image shows it one, as Vicuna reads text before LLaVA's OCR data.
TEXT_LOOKUP_CHARACTER_MIX = TEXT_LOOKUP_POSITION_MIX + ("text",) * 2


LOOKUP_SEEDS = 3 * 10**9  # scenes of the LM's text lookups; the probes' held-out scenes start at 4 * 10**9


def object_phrases(positions: bool = False) -> list[str]:
    """The phrases the toy tokenizer keeps as one token each: every coloured shape ("red circle"), and with
    ``positions`` every coloured shape at every place ("red circle at the top left"). One image patch holds
    what an object is *and* where it lies in one vector (the tower's position embeddings put it there), so the
    text form of a patch is one token that holds both: a lookup in text then has the shape of one in an image."""
    objects = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    return [f"{o} at the {p}" for o in objects for p in POSITIONS] if positions else objects


def text_scene(scene: Scene, rng: random.Random, positions: bool = False, character: bool = False) -> str:
    """The scene told in words: its objects in random order, each in one of a few wordings (``positions``: with
    where each one is; ``character``: then the printed character, if any). What the toy LM reads where a real LLM
    reads a paragraph, before it ever sees an image."""
    things = rng.sample(scene.things, k=len(scene.things))
    names = []
    for t in things:
        name = rng.choice(_OBJECT_WORDINGS).format(size=t.size, colour=t.colour, shape=t.shape).rstrip(",")
        names.append(f"{name} at the {where(t, scene)}" if positions else name)
    objects = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    opener = rng.choice(_SCENE_OPENERS)
    text = opener.format(objects=objects, Objects=objects[0].upper() + objects[1:])
    return text + f" {scene.character}" if character and scene.character else text


def text_lookup_qa(scene: Scene, rng: random.Random, kind: str) -> tuple[str, str]:
    """One question about a scene and its answer, worded as the image tasks word it (``short_qa``, ``pope_qa``,
    ``choice_qa``, the conversation's "Where is"), with the response-format prompt the image tasks use; the
    ``*_long`` kinds ask without a format prompt and answer in a sentence; ``option`` gives the colour and asks
    only for its option letter (multiple choice's second hop)."""
    t = rng.choice(scene.things)
    if kind in ("colour", "shape", "count"):
        q, a = short_qa(scene, rng, kind, t)
        return with_format_prompt(q, SHORT_ANSWER), a
    if kind == "pope":
        q, a = pope_qa(scene, rng)
        return with_format_prompt(q, SHORT_ANSWER), a
    if kind == "choice":
        q, a = choice_qa(scene, rng)
        return with_format_prompt(q, MULTIPLE_CHOICE), a
    if kind == "where":
        return with_format_prompt(f"Where is the {t.name}?", SHORT_ANSWER), where(t, scene)
    if kind == "text":  # the image task's question; the character is told after the scene (``text_scene``)
        return with_format_prompt("What character is printed in the image?", SHORT_ANSWER), scene.character or "none"
    if kind == "option":  # multiple choice's second hop alone: the colour is given, find its option line
        lines, letter = colour_options(t.colour, rng)
        return with_format_prompt(f"Which option is {t.colour}?\n{lines}", MULTIPLE_CHOICE), letter
    if kind == "colour_long":
        return f"What colour is the {t.shape}?", f"The {t.shape} is {t.colour}."
    return f"What shape is the {t.colour} object?", f"The {t.colour} object is a {t.shape}."  # shape_long


def text_lookup_record(scene: Scene, rng: random.Random, kinds: Sequence[str] | None = None,
                       questions: tuple[int, int] = (1, 3), mix: Sequence[str] = TEXT_LOOKUP_MIX,
                       positions: float = 0.0, character: bool = False) -> dict:
    """A text-only conversation: the scene in words, then questions answered from those words (``kinds``, or
    between ``questions[0]`` and ``questions[1]`` of them drawn from ``mix``; ``character``: the words end with
    the printed character).

    Shaped like a stage-2 record with the text where the ``<image>`` marker would be, so the LM learns in text
    the skill the image tasks need: find the object the question names, and read out its other attribute.
    Several questions about one scene give several lookups for one read of it (LLaVA's multi-turn records).
    The scene tells where its objects are when a question asks it, and otherwise with probability ``positions``.
    """
    kinds = list(kinds or [rng.choice(mix) for _ in range(rng.randint(*questions))])
    pairs = [text_lookup_qa(scene, rng, kind) for kind in kinds]
    told = "where" in kinds or (positions > 0 and rng.random() < positions)  # no draw at 0: records as before
    context = text_scene(scene, rng, positions=told, character=character)
    conv = []
    for i, (q, a) in enumerate(pairs):
        conv += [{"from": "human", "value": (context + "\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"text-scene{scene.seed}-{'+'.join(kinds)}", "conversations": conv}


def language_corpus(n_scenes: int, seed: int = 0, lookup_share: float = 0.5, character: bool = False) -> list[str]:
    """Plain text of the toy world, without drawing an image: the captions and stage-2 turns of ``n_scenes``
    scenes, the text-only conversations, and text-lookup records (each record one text: scene, questions and
    answers). What the toy tokenizer is trained on and the toy LM reads as its "web text" (``character``: the
    conversations' captions name the printed character and the scenes in words end with it, as the LM's fifth
    phase reads them)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n_scenes):
        scene = make_scene(2 * 10**9 + seed * 7919 + i)
        texts.append(caption(scene))
        texts += [turn["value"].replace(IMAGE, "").strip()
                  for turn in stage2_record(scene, "", rng, character=character)["conversations"]]
        if rng.random() < lookup_share:
            texts.append(" ".join(turn["value"] for turn in text_lookup_record(scene, rng, character=character)[
                "conversations"]))
    return texts + [f"{q} {a}" for q, a in TEXT_ONLY]


# ----------------------------------------------------------------------------- writing a world to disk

# "where" asks the conversation question "Where is the red circle?" with the short-answer prompt, a pairing
# stage 2 never trains on an image (only the LM's text-only lookups ask it so, about a scene in words): does the
# format instruction transfer to a new kind of question about an image? (paper, Sec. 3.2)
EVAL_TASKS = ("colour", "shape", "count", "choice", "pope", "text", "detail", "where")

# What each held-out task asks of the model (the report quotes it for the tasks a model does not pass).
TASK_NEEDS = {
    "colour": "find the named shape, then read its colour: the tower's features must tell shapes apart",
    "shape": "find the object of the named colour, then read its shape: the features must tell shapes apart",
    "count": "count 1-3 objects on the canvas",
    "choice": "find the named shape, read its colour, then match that colour to an option letter (three steps)",
    "pope": "decide whether one object has both the named colour and the named shape (binding the two)",
    "text": "read a character about 7 pixels tall: after downscaling to the encoder's input it is a few pixels, "
            "illegible by design; reading it is what the HD grid encoder is for (`minillava ablate`)",
    "detail": "describe every object with its size, colour, shape and position",
    "where": "answer a question form never trained with the short-answer prompt (the composition probe); "
             "the content also needs each object's position",
}


def eval_questions(scene: Scene, image: str, rng: random.Random) -> list[dict]:
    """Held-out questions about one scene: one per task, with answers."""
    out = [(kind, *short_qa(scene, rng, kind)) for kind in ("colour", "shape", "count")]
    out = [(kind, q, SHORT_ANSWER, a) for kind, q, a in out]
    q, a = choice_qa(scene, rng)
    out.append(("choice", q, MULTIPLE_CHOICE, a))
    q, a = pope_qa(scene, rng)
    out.append(("pope", q, SHORT_ANSWER, a))
    out.append(("text", "What character is printed in the image?", SHORT_ANSWER, scene.character or "none"))
    out.append(("detail", "Describe the image in detail.", None, description(scene)))
    t = rng.choice(scene.things)
    out.append(("where", f"Where is the {t.name}?", SHORT_ANSWER, where(t, scene)))
    return [{"question_id": f"scene{scene.seed}-{task}", "image": image, "category": task,
             "text": with_format_prompt(q, fmt) if fmt else q, "answer": a} for task, q, fmt, a in out]


def padded_view(scene: Scene) -> tuple[float, float, float]:
    """``(left, top, side)`` in canvas pixels of what the image padded to a square shows (LLaVA-1.5's ``pad``)."""
    side = max(scene.width, scene.height)
    return (scene.width - side) / 2, (scene.height - side) / 2, side


def patches_on(thing: Thing, scene: Scene, grid: int, view: tuple[float, float, float] | None = None) -> list[int]:
    """Indices (row-major) of the ``grid`` x ``grid`` patches whose centres lie on ``thing``.

    ``view`` is the square of the canvas the image shows, ``(left, top, side)`` in canvas pixels: by default the
    image padded to a square, as stage 2 and the evaluation see it; a crop for a close-up. May be empty for a small
    object on a coarse grid.
    """
    left, top, side = view or padded_view(scene)
    cell, r = side / grid, SIZES[thing.size]
    return [gy * grid + gx for gy in range(grid) for gx in range(grid)
            if abs(left + (gx + 0.5) * cell - thing.x) < r and abs(top + (gy + 0.5) * cell - thing.y) < r]


def canvas_patches(scene: Scene, grid: int) -> list[bool]:
    """For each of the ``grid`` x ``grid`` patches of the image padded to a square (row-major): does its centre
    show the canvas (True) or the padding (False)?"""
    left, top, side = padded_view(scene)
    return [0 <= left + (gx + 0.5) * side / grid < scene.width and 0 <= top + (gy + 0.5) * side / grid < scene.height
            for gy in range(grid) for gx in range(grid)]


def grid_layout(scene: Scene, size: int, max_cells: int = 4) -> tuple[tuple[int, int], float]:
    """How the HD grid encoder lays the scene out (``hd.split_into_cells`` with the grids of at most ``max_cells``
    cells): its ``(columns, rows)`` of ``size``-pixel cells and the scale the canvas is resized by (0.8 for this
    world's 160 x 128 and 128 x 160 canvases, 1.0 for the square one; ``hd.fitted_size`` rounds the sides)."""
    from .hd import HDConfig, choose_grid

    grid = choose_grid(scene.width, scene.height, size, HDConfig(max_cells=max_cells).grid_list())
    return grid, min(grid[0] * size / scene.width, grid[1] * size / scene.height)


def glyph_centre(scene: Scene) -> tuple[int, int]:
    """The centre of the scene's printed character on its canvas (the 9-pixel font draws the glyph about 3 px
    right of and 6 px below the point it is drawn at)."""
    return scene.char_xy[0] + 3, scene.char_xy[1] + 6


def close_up(scene: Scene, size: int, rng: random.Random, around_character: bool = False,
             fill: tuple[int, int, int] = (0, 0, 0),
             max_cells: int = 4) -> tuple[Image.Image, tuple[float, float, float]]:
    """A ``size`` x ``size`` close-up of the scene as an HD grid cell shows it, and its view ``(left, top,
    side)`` in canvas pixels (for ``patch_labels``).

    The scene is laid out as the grid encoder lays it out (``hd.split_into_cells`` with the grids of at most
    ``max_cells`` cells, the ablation's HD grid): resized into the grid (0.8 for this world's 160 x 128 and
    128 x 160 canvases, 1.0 for the square one), top-left, the rest padded with ``fill``; then cropped at a
    random place. ``around_character``: a place where the scene's printed character lies anywhere inside the
    crop (the grid's own cells are some of these places), so that the tower learns to read a glyph wherever it
    falls across its patches.
    """
    from .hd import fitted_size

    grid, scale = grid_layout(scene, size, max_cells)
    canvas = Image.new("RGB", (grid[0] * size, grid[1] * size), fill)
    canvas.paste(draw_scene(scene).resize(fitted_size(scene.width, scene.height, grid, size), Image.BICUBIC))
    if around_character and scene.character:
        cx, cy = (c * scale for c in glyph_centre(scene))  # resized as the scene is
        x = int(min(max(0, cx - rng.uniform(4, size - 4)), canvas.width - size))
        y = int(min(max(0, cy - rng.uniform(4, size - 4)), canvas.height - size))
    else:
        x, y = rng.randint(0, canvas.width - size), rng.randint(0, canvas.height - size)
    return canvas.crop((x, y, x + size, y + size)), (x / scale, y / scale, size / scale)


def glyph_patches(scene: Scene, grid: int, view: tuple[float, float, float]) -> tuple[int | None, list[int]]:
    """The patch holding the centre of the scene's printed character and every patch its glyph covers, in a
    ``grid`` x ``grid`` image of ``view`` (row-major indices; ``None`` and ``[]`` where it is not in view)."""
    if not scene.character:
        return None, []
    left, top, side = view
    x, y = scene.char_xy
    cell = side / grid

    def inside(gx: float, gy: float) -> bool:
        return 0 <= gx < grid and 0 <= gy < grid

    # the glyph of the 9-pixel font spans about (x + 1, y + 3) to (x + 6, y + 9) from the point it is drawn at
    cx, cy = (glyph_centre(scene)[0] - left) / cell, (glyph_centre(scene)[1] - top) / cell
    centre = int(cy) * grid + int(cx) if inside(cx, cy) else None
    covered = [gy * grid + gx for gy in range(int((y + 3 - top) // cell), int((y + 9 - top) // cell) + 1)
               for gx in range(int((x + 1 - left) // cell), int((x + 6 - left) // cell) + 1) if inside(gx, gy)]
    return centre, covered


def character_cell(scene: Scene, size: int, grid: int, fill: tuple[int, int, int],
                   max_cells: int = 4) -> tuple[Image.Image, int | None]:
    """The HD grid cell that shows the scene's printed character (``hd.split_into_cells`` with at most
    ``max_cells`` cells, no global view: the ablation's HD grid) and the patch of its ``grid`` x ``grid``
    holding the glyph's centre."""
    from .hd import HDConfig, split_into_cells

    config = HDConfig(max_cells=max_cells, global_context=False)
    (cols, rows), scale = grid_layout(scene, size, max_cells)
    col = min(cols - 1, int(glyph_centre(scene)[0] * scale) // size)
    row = min(rows - 1, int(glyph_centre(scene)[1] * scale) // size)
    cell = split_into_cells(draw_scene(scene), config, size, fill)[row * cols + col]
    return cell, glyph_patches(scene, grid, (col * size / scale, row * size / scale, size / scale))[0]


# What the toy tower learns to say (``patch_labels``): what lies under a patch (the first five), and what the
# whole scene holds (the last two: how many shapes, whether a character is printed), as CLIP's image-level
# captions teach it "two dogs" and "a sign"
ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "character": list(CHARACTERS),
              "position": POSITIONS, "count": ["1", "2", "3"], "printed": ["no", "yes"]}


def patch_labels(scene: Scene, grid: int, view: tuple[float, float, float] | None = None,
                 character: bool = False) -> list[list[int]]:
    """What lies under each patch: ``grid * grid`` rows of ``[colour, shape, size, character, position, count,
    printed]`` indices into ``ATTRIBUTES``, -100 where there is nothing to say (background; the character unless
    ``character``).

    The vision tower learns from these (``backbones.pretrain_vision_tower``). The character is labelled on every
    patch its glyph covers, and only when asked: in a close-up, where it is legible. An object's
    position (``where``: thirds of the canvas) is labelled on all of its patches, as its colour is (on its centre
    patch alone, one large object's patches read as two objects to the LM's counting: docs/findings.md), and
    only in the whole view: a close-up does not show where it lies. (Labelling every canvas patch with where the *patch*
    lies was tried: docs/findings.md, 2026-12-03.)

    How many shapes the scene holds and whether a character is printed are labelled on *every* patch of the whole
    view (a close-up shows part of the scene: nothing to say there). The LM then reads them off any image token,
    as it reads a colour off an object's: counted object by object, the LM's count followed how many patches
    each object covers (two small shapes read as one, two large ones as three), and from the glyph's own two or
    three patches it could not tell that anything was printed (docs/findings.md, 2026-12-05).
    """
    labels = [[-100] * len(ATTRIBUTES) for _ in range(grid * grid)]
    for t in scene.things:
        # where it lies (only in the whole view), on every one of its patches: they must still read as one object
        place = POSITIONS.index(where(t, scene)) if view is None else -100
        for i in patches_on(t, scene, grid, view):
            labels[i][:3] = [ATTRIBUTES[a].index(v) for a, v in (("colour", t.colour), ("shape", t.shape),
                                                                  ("size", t.size))]
            labels[i][4] = place

    if view is None:  # what the whole scene holds, on every patch of the whole view
        for row in labels:
            row[5], row[6] = len(scene.things) - 1, int(scene.character is not None)
    if character and scene.character:  # on every patch its glyph covers, as an object's colour is
        for i in glyph_patches(scene, grid, view or padded_view(scene))[1]:
            labels[i][3] = ATTRIBUTES["character"].index(scene.character)
    return labels


def objects_in(question_id: str) -> int:
    """How many shapes the scene of a held-out question holds (question ids are ``scene<seed>-<task>``)."""
    return len(make_scene(int(question_id.split("-")[0].removeprefix("scene"))).things)


def world_scene(seed: int, i: int) -> Scene:
    """The scene of image ``i`` of the world generated with ``seed`` (training images first, then held-out)."""
    return make_scene(seed * 1_000_003 + i)


def write_world(folder: str | Path, n_train: int = 2000, n_eval: int = 100, seed: int = 0,
                text_only_share: float = 0.08, text_lookup_share: float = 0.08, close_up_share: float = 0.15,
                progress: bool = True) -> Path:
    """Generate images + LLaVA-format JSON under ``folder`` (skipped if already complete for these arguments).

    Stage 2's mix holds, beside one record per training image, text-only conversations as LLaVA-1.5's holds
    ShareGPT's: a few trivia pairs (``text_only_share`` of the images) and the LM's own pretraining lookups
    (``text_lookup_share``: a scene in words, then questions about it), so that the LM keeps what it brought
    while it learns to see. Without them stage 2 wore away the short answer to "where" and part of multiple
    choice (docs/findings.md, 2026-12-05). They come from a random stream of their own: the image records are
    the same whatever their share.

    Text in images, as LLaVA-1.5's mix holds OCR-VQA and TextCaps (about 15% of it): captions and the
    conversation's caption name the printed character, and ``close_up_share`` of the images add a close-up of
    another scene as an HD cell shows it (``close_up``, around its character) asking which character is
    printed. An HD model learns to read from them what its cells show; a base model cannot read the glyph at
    its resolution (docs/findings.md, 2026-12-05).

    Layout: ``images/*.png``, ``stage1.json``, ``stage2.json``, ``eval/<task>.jsonl``,
    ``eval/<task>_answers.jsonl`` and ``world.json`` (the arguments, so a different world is never reused).
    """
    final = Path(folder)
    spec = {"version": WORLD_VERSION, "n_train": n_train, "n_eval": n_eval, "seed": seed,
            "text_only_share": text_only_share, "text_lookup_share": text_lookup_share,
            "close_up_share": close_up_share}

    def complete(f: Path) -> bool:
        return (f / "world.json").exists() and json.loads((f / "world.json").read_text()) == spec

    if complete(final):
        return final
    folder = building_folder(final)  # built aside, moved into place when complete
    (folder / "images").mkdir()
    (folder / "eval").mkdir(exist_ok=True)
    rng, lookup_rng = random.Random(seed), random.Random(f"{seed}-text-lookups")
    close_up_rng = random.Random(seed + 77)  # a stream of its own too
    stage1, stage2, questions = [], [], {task: [] for task in EVAL_TASKS}
    for i in tqdm(range(n_train + n_eval), desc="toy world", disable=not progress):
        scene = world_scene(seed, i)
        image = f"{i:06d}.png"
        draw_scene(scene).save(folder / "images" / image)
        if i >= n_train:
            for q in eval_questions(scene, image, rng):
                questions[q["category"]].append(q)
            continue
        stage1.append({"id": f"scene{scene.seed}-caption", "image": image, "conversations": [
            {"from": "human", "value": f"{IMAGE}\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": caption(scene, positions=True, character=True)}]})
        stage2.append(stage2_record(scene, image, rng))
        if rng.random() < text_only_share:
            q, a = rng.choice(TEXT_ONLY)
            stage2.append({"id": f"text{i}", "conversations": [{"from": "human", "value": q},
                                                                 {"from": "gpt", "value": a}]})
        if lookup_rng.random() < text_lookup_share:  # as the LM's last pretraining phase asks them
            stage2.append(text_lookup_record(make_scene(LOOKUP_SEEDS + seed * 7919 + i), lookup_rng,
                                             mix=TEXT_LOOKUP_POSITION_MIX, positions=0.75, character=True))
        if close_up_rng.random() < close_up_share:
            other = world_scene(seed, 10_000_000 + i)  # a scene none of the world's images shows
            view, _ = close_up(other, 64, close_up_rng, around_character=True, fill=PAD_COLOUR)  # one toy HD cell
            view.save(folder / "images" / f"closeup{i:06d}.png")
            (q, a), = task_pairs("text", other, close_up_rng)
            stage2.append({"id": f"closeup{other.seed}-text", "image": f"closeup{i:06d}.png", "conversations": [
                {"from": "human", "value": f"{IMAGE}\n{q}"}, {"from": "gpt", "value": a}]})
    (folder / "stage1.json").write_text(json.dumps(stage1, indent=1))
    (folder / "stage2.json").write_text(json.dumps(stage2, indent=1))
    for task, qs in questions.items():
        with open(folder / "eval" / f"{task}.jsonl", "w") as f_q, \
                open(folder / "eval" / f"{task}_answers.jsonl", "w") as f_a:
            for q in qs:
                f_q.write(json.dumps({k: q[k] for k in ("question_id", "image", "text", "category")}) + "\n")
                f_a.write(json.dumps({"question_id": q["question_id"], "answer": q["answer"]}) + "\n")
    (folder / "world.json").write_text(json.dumps(spec))
    move_into_place(folder, final, complete)
    return final


def building_folder(folder: Path) -> Path:
    """A new, empty folder next to ``folder``, unique to this caller, to build ``folder``'s contents in."""
    building = folder.with_name(f"{folder.name}.building-{uuid.uuid4().hex[:12]}")
    building.mkdir(parents=True)  # like any folder the user makes (umask), unlike tempfile's private 0700 ones
    return building


def move_into_place(built: Path, folder: Path, complete: Callable[[Path], bool]) -> None:
    """Rename the freshly ``built`` folder (from ``building_folder``) to ``folder``.

    Cached worlds and backbones are built aside and renamed at the end (one atomic step), so a crash never
    leaves a half-written folder that looks finished, and two processes building the same thing at once (two
    notebooks, parallel tests) never read each other's half-written files. If ``folder`` is already there and
    ``complete``, another process finished first: theirs is kept and ours deleted. Anything else there (an
    interrupted build of an older version) is replaced.
    """
    try:
        built.rename(folder)  # replaces an empty folder; fails if a non-empty one is there
    except OSError:
        if complete(folder):
            shutil.rmtree(built)
            return
        shutil.rmtree(folder)
        built.rename(folder)
