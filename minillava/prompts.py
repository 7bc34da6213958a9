"""The prompt formatter: LLaVA conversations -> the exact prompt strings, token ids and labels.

A LLaVA record holds a conversation, ``[{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value":
"A1"}, ...]``. Training needs three things from it, and they must agree token for token:

1. the prompt string of the conversation template, e.g. for ``vicuna_v1`` (note the single spaces and no
   newline between turns)::

       "{SYSTEM} USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"

2. ``input_ids``: the tokens, each ``<image>`` expanded into as many image-token ids as the image has features
   (576 for CLIP-L/336; a per-image count for the HD encoder);
3. ``labels``: -100 everywhere the model is *not* trained (BOS, system, every ``USER: ...`` turn, every
   ``ASSISTANT:`` header, every image position), the token id where it is (each answer and its ``</s>``).

The official code builds (2) and (3) separately and aligns them by re-tokenizing pieces and counting; any
disagreement silently masks the whole sample ("WARNING: tokenization mismatch"). Here one list of
*segments* drives everything: the prompt string is their concatenation, and ids and labels are built
together, segment by segment, so they cannot disagree. The generation prompt (ending ``ASSISTANT:``) comes from
the same segments, so at inference the model sees exactly the tokens it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = -100  # label of positions that get no loss (torch's cross_entropy default ignore_index)
IMAGE = "<image>"  # the image marker in LLaVA records and prompt strings

# Response-format prompts (paper section 3.2), appended to the question after a newline.
SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
SHORT_CAPTION = "Provide a one-sentence caption for the provided image."
REGION_TO_TEXT = "Provide a short description for this region."
TEXT_TO_REGION = "Provide the bounding box coordinate of the region this sentence describes."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"


@dataclass(frozen=True)
class Template:
    """A conversation template. ``style="two"``: system, USER/ASSISTANT turns, ``sep`` after a user turn and
    ``sep2`` after an answer. ``style="plain"``: ``<image>`` + caption + ``sep`` (stage 1; no roles)."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    style: Literal["two", "plain"] = "two"


_SYSTEM = ("A chat between a curious {who} and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the {who}'s questions.")
TEMPLATES: dict[str, Template] = {
    "vicuna_v1": Template("vicuna_v1", _SYSTEM.format(who="user"), ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_v1": Template("llava_v1", _SYSTEM.format(who="human"), ("USER", "ASSISTANT"), " ", "</s>"),
    "plain": Template("plain", "", ("", ""), "\n", "\n", style="plain"),
}


class PromptError(ValueError):
    """A conversation that cannot be formatted (bad roles, image markers that do not match the images...)."""


class SampleTooLong(PromptError):
    """A sample longer than ``max_length`` that cannot be truncated safely; the data pipeline drops and counts it."""


@dataclass(frozen=True)
class Segment:
    """A piece of the prompt string: ``kind`` is "context" (masked), "answer" (supervised) or "image"."""

    text: str
    kind: Literal["context", "answer", "image"]


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise PromptError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def with_format_prompt(question: str, format_prompt: str) -> str:
    """Append a response-format prompt: ``"What colour?" -> "What colour?\\nAnswer the question using ..."``."""
    return f"{question}\n{format_prompt}"


# The prompts that only ask for a form of answer (the paper's "response format prompts"); the region prompts are
# left out: without them a bare box would not say what is asked.
FORMAT_PROMPTS = (SHORT_ANSWER, MULTIPLE_CHOICE, SHORT_CAPTION, UNANSWERABLE, MULTIPLE_CHOICE_CN)


def strip_format_prompts(text: str) -> str:
    """Remove every response-format prompt line from a question (the ablation "without format prompts")."""
    return "\n".join(line for line in text.split("\n") if line.strip() not in FORMAT_PROMPTS)


def check_turns(conversation: Sequence[dict], for_generation: bool = False) -> None:
    """Roles must alternate human, gpt, human, ...; training ends on an answer, generation on a question.
    Raises ``PromptError`` saying which turn is wrong (the data pipeline reports it naming the record)."""
    if not conversation:
        raise PromptError("empty conversation")
    for i, turn in enumerate(conversation):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise PromptError(f"turn {i} must be a dict with 'from' and 'value', got {turn!r:.80}")
        if turn["from"] != want:
            raise PromptError(f"turn {i} is from {turn['from']!r}, expected {want!r} (roles must alternate "
                              "human, gpt, human, ... starting with human)")
        if not isinstance(turn["value"], str):
            raise PromptError(f"turn {i} value must be a string, got {type(turn['value']).__name__}")
        if want == "gpt" and IMAGE in turn["value"]:
            raise PromptError(f"turn {i}: an answer (gpt turn) contains the image marker {IMAGE!r}")
    last = conversation[-1]["from"]
    if for_generation and last != "human":
        raise PromptError("a generation prompt must end with a human turn (the question to answer)")
    if not for_generation and last != "gpt":
        raise PromptError("a training conversation must end with a gpt turn (the answer to learn)")


def _move_image_to_front(text: str) -> str:
    """``"Q?\\n<image>"`` -> ``"<image>\\nQ?"`` (the official preprocessing of a single-image turn)."""
    if text.count(IMAGE) != 1 or text.startswith(IMAGE + "\n"):
        return text
    return IMAGE + "\n" + text.replace(IMAGE, "").strip()


def _split_images(text: str, kind: str) -> list[Segment]:
    """Cut a text at its image markers: "a<image>b" -> [a, <image>, b] (empty pieces dropped)."""
    out: list[Segment] = []
    for i, piece in enumerate(text.split(IMAGE)):
        if i > 0:
            out.append(Segment(IMAGE, "image"))
        if piece:
            out.append(Segment(piece, kind))
    return out


def build_segments(conversation: Sequence[dict], template: str | Template = "vicuna_v1",
                   for_generation: bool = False) -> list[Segment]:
    """The conversation as a list of segments whose texts concatenate to the template's prompt string.

    A single ``<image>`` marker is moved to the front of its turn (``"<image>\\n" + question``); several
    markers (multi-image) stay where they are. ``for_generation=True`` stops after the last ``ASSISTANT:``.
    """
    template = get_template(template)
    check_turns(conversation, for_generation)
    n_images = sum(turn["value"].count(IMAGE) for turn in conversation)
    turns = [dict(t, value=_move_image_to_front(t["value"])) if n_images == 1 else t for t in conversation]

    if template.style == "plain":
        # Stage 1: "<image>" + caption + "\n". The human instruction is discarded (as in the official code).
        if len(turns) > 2 or IMAGE not in turns[0]["value"]:
            raise PromptError("the plain template takes one human turn holding the <image> marker "
                              "and (for training) one gpt turn: the caption")
        images = [Segment(IMAGE, "image")] * turns[0]["value"].count(IMAGE)
        if for_generation:
            return images
        return images + [Segment(turns[1]["value"] + template.sep, "answer")]

    user, assistant = template.roles
    segments: list[Segment] = []
    context = template.system + template.sep  # masked text accumulated up to the next answer
    for turn in turns:
        if turn["from"] == "human":
            context += f"{user}: {turn['value']}{template.sep}{assistant}:"
        else:
            segments += _split_images(context, "context")
            # The space after "ASSISTANT:" starts the answer: tokenizers fold it into the answer's first token,
            # and at inference the model generates it.
            segments.append(Segment(" " + turn["value"] + template.sep2, "answer"))
            context = ""
    if context:
        segments += _split_images(context, "context")
    return segments


def render(conversation: Sequence[dict], template: str | Template = "vicuna_v1",
           for_generation: bool = False) -> str:
    """The prompt string of a conversation, exactly as LLaVA-1.5 writes it."""
    return "".join(s.text for s in build_segments(conversation, template, for_generation))


# ----------------------------------------------------------------------------- tokenization


def prepare_tokenizer(tokenizer) -> int:
    """Make sure ``tokenizer`` knows ``<image>`` as a special token and has a pad token; return the image id.

    Adding tokens grows the vocabulary: resize the LM's embeddings afterwards (``MiniLlava`` does).
    Official LLaVA pads with ``<unk>``; a tokenizer with neither pad nor unk gets a new ``<pad>``.
    """
    if IMAGE not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE], special_tokens=True)
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer.convert_tokens_to_ids(IMAGE)


def _bos_ids(tokenizer) -> list[int]:
    """[BOS] if this tokenizer starts sequences with BOS (Llama/Vicuna do), else []. Never EOS: ``sep2`` adds it."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _encode_text(tokenizer, text: str, image_token_id: int, first: bool) -> list[int]:
    """Token ids of one text segment, as they would be inside the whole prompt.

    The first segment is tokenized as the start of a text (SentencePiece adds its prefix space there). Any
    later segment follows other text, so it is tokenized right after an ``<image>`` token, which the
    tokenizer splits off before anything else: ``" A1"`` then gives the same ``"▁A1"`` / ``"ĠA1"`` token it
    gets inside the prompt, instead of a standalone string's extra prefix space. The anchor id is dropped.
    """
    if first:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(IMAGE + text, add_special_tokens=False)["input_ids"]
    if ids[:1] != [image_token_id]:
        raise PromptError(f"the tokenizer does not split {IMAGE!r} off as a special token; call prepare_tokenizer")
    return ids[1:]


def tokenize_conversation(conversation: Sequence[dict], tokenizer, image_token_id: int,
                          image_token_counts: int | Sequence[int] = 0,
                          template: str | Template = "vicuna_v1", max_length: int | None = None,
                          for_generation: bool = False) -> dict[str, list[int]]:
    """Build ``input_ids`` and ``labels`` together, segment by segment.

    Args:
        image_token_counts: the number of features of each image, in order of the ``<image>`` markers (an int
            applies to every image). Each marker becomes that many ``image_token_id``s.
        max_length: cut longer samples to this many tokens. A cut through (or before the end of) an image's
            block, or one that leaves no supervised token, raises ``SampleTooLong`` instead: the data pipeline
            drops and counts the sample.
        for_generation: build the generation prompt (ends with ``ASSISTANT:``); labels are then all -100.

    Returns ``{"input_ids": [...], "labels": [...]}`` (equal lengths, lists of ints).
    """
    template = get_template(template)
    segments = build_segments(conversation, template, for_generation)
    n_images = sum(s.kind == "image" for s in segments)
    counts = [image_token_counts] * n_images if isinstance(image_token_counts, int) else list(image_token_counts)
    if len(counts) != n_images:
        raise PromptError(f"the conversation has {n_images} {IMAGE} marker(s) but {len(counts)} image(s) "
                          "were given")
    if n_images and min(counts) <= 0:
        raise PromptError(f"each image needs a positive number of image tokens, got {counts}")
    if template.style == "two" and not for_generation:
        sep2_ids = tokenizer(template.sep2, add_special_tokens=False)["input_ids"]
        if sep2_ids != [tokenizer.eos_token_id]:
            raise PromptError(f"template {template.name!r} ends answers with {template.sep2!r}, which this "
                              f"tokenizer does not encode as its EOS token ({tokenizer.eos_token!r})")

    input_ids = _bos_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    image_ends: list[int] = []  # position just after each image block, for safe truncation
    images = iter(counts)
    for i, seg in enumerate(segments):
        if seg.kind == "image":
            ids = [image_token_id] * next(images)
        else:
            ids = _encode_text(tokenizer, seg.text, image_token_id, first=(i == 0))
            if image_token_id in ids:
                raise PromptError(f"text {seg.text!r:.60} encodes to the image token id {image_token_id}")
        input_ids += ids
        labels += ids if seg.kind == "answer" else [IGNORE_INDEX] * len(ids)
        if seg.kind == "image":
            image_ends.append(len(input_ids))

    if max_length is not None and len(input_ids) > max_length:
        if for_generation:
            raise SampleTooLong(f"generation prompt of {len(input_ids)} tokens > max_length {max_length}")
        if image_ends and image_ends[-1] > max_length:
            raise SampleTooLong(f"{len(input_ids)} tokens > max_length {max_length}, and truncating would cut "
                                f"an image block (ends at {image_ends[-1]})")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(lab == IGNORE_INDEX for lab in labels):
            raise SampleTooLong(f"no supervised token left after truncating to max_length {max_length}")
    return {"input_ids": input_ids, "labels": labels}
