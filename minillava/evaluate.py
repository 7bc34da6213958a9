"""Evaluation: scorers as small functions, and a runner that answers a question file the LLaVA way.

Question files use the LLaVA JSONL layout (one object per line: ``question_id``, ``image``, ``text``, optional
``category``); answers are written as JSONL (``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``).
Decoding is greedy with the ``vicuna_v1`` template and ``pad`` images, as in every LLaVA-1.5 benchmark.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .data import IMAGE_ERRORS, open_image
from .prompts import MULTIPLE_CHOICE, SHORT_ANSWER, with_format_prompt

# ----------------------------------------------------------------------------- scorers


# The official VQA evaluation's answer normalisation (VQA's vqaEval.py, used by VQAv2, VizWiz and TextVQA).
_VQA_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                    "?", "!"]
_VQA_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a '.' not followed by a digit ("2.5" keeps its point)
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"}


def normalize_vqa(text: str) -> str:
    """The standard VQA answer normalisation: lower case, punctuation, number words -> digits, articles dropped,
    contractions restored ("Two dogs." -> "2 dogs", "a dog." -> "dog", "dont" -> "don't").

    This is the processing of the official VQA evaluation (and of LLaVA's answer processor for submissions):
    a punctuation mark is deleted when it touches a space or the text has a number like "1,000", else replaced
    by a space; a '.' is dropped unless a digit follows it.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in _VQA_PUNCTUATION:
        if p + " " in text or " " + p in text or _VQA_COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.split()]
    words = [_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one answer: min(1, #humans who gave it / 3), averaged over the leave-one-out subsets.

    With the usual 10 human answers, each subset leaves one human out, so an answer given by 3 humans scores
    (7 * 1 + 3 * 2/3) / 10 = 0.9, and one given by 4 or more scores 1.
    """
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = normalize_vqa(prediction)
    gold = [normalize_vqa(a) for a in human_answers]
    if len(gold) == 1:
        return float(pred == gold[0])
    scores = []
    for i in range(len(gold)):
        others = gold[:i] + gold[i + 1:]
        scores.append(min(1.0, sum(g == pred for g in others) / 3))
    return sum(scores) / len(scores)


def normalize_short(text: str) -> str:
    """GQA-style normalisation: strip, drop a final '.', lower-case."""
    return text.strip().rstrip(".").strip().lower()


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to the answer after ``normalize_short`` (GQA's metric)."""
    return sum(normalize_short(p) == normalize_short(a) for p, a in zip(predictions, answers)) / max(1, len(answers))


def pope_label(text: str) -> str:
    """The official POPE parsing: the text before the first '.', commas dropped; 'No'/'not'/'no' -> no."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 of "yes" (the positive class), and the share of "yes" answers."""
    pred = [pope_label(p) == "yes" for p in predictions]
    gold = [a.strip().lower() == "yes" for a in answers]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == g for p, g in zip(pred, gold)) / max(1, len(gold))
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(pred) / max(1, len(pred))}


def choice_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter of a multiple-choice answer: "B", "B. red", "The answer is B." -> "B"; else None."""
    text = text.strip()
    if len(text) == 1 and text in letters:
        return text
    match = re.match(rf"^([{letters}])[.):]\s", text + " ") or re.search(rf"[Tt]he answer is ([{letters}])\b", text)
    return match.group(1) if match else None


def multiple_choice_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    return sum(choice_letter(p) == a.strip() for p, a in zip(predictions, answers)) / max(1, len(answers))


def mme_label(text: str) -> str:
    """MME's answer parsing: "yes"/"no" as they are; else "yes" or "no" in the first 4 characters; else "other"."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(predictions: Sequence[str], answers: Sequence[str], images: Sequence[str],
               subtasks: Sequence[str]) -> dict[str, dict[str, float] | float]:
    """MME: per subtask, accuracy (per question) and accuracy+ (per image: both of its questions right), and
    the score 100 * (accuracy + accuracy+); ``total`` sums the subtask scores (max 200 per subtask)."""
    by_task: dict[str, dict[str, list[bool]]] = {}
    for p, a, image, task in zip(predictions, answers, images, subtasks):
        by_task.setdefault(task, {}).setdefault(image, []).append(mme_label(p) == a.strip().lower())
    out: dict[str, dict[str, float] | float] = {}
    for task, per_image in sorted(by_task.items()):
        right = [r for rs in per_image.values() for r in rs]
        accuracy = sum(right) / len(right)
        accuracy_plus = sum(all(rs) for rs in per_image.values()) / len(per_image)
        out[task] = {"accuracy": accuracy, "accuracy_plus": accuracy_plus,
                     "score": 100 * (accuracy + accuracy_plus)}
    out["total"] = sum(v["score"] for v in out.values())
    return out


def format_compliance(predictions: Sequence[str], short: bool) -> float:
    """Short-answer prompts: share of answers of at most 3 words. Long prompts: mean length in words."""
    lengths = [len(p.split()) for p in predictions]
    if short:
        return sum(n <= 3 for n in lengths) / max(1, len(lengths))
    return sum(lengths) / max(1, len(lengths))


def word_f1(prediction: str, answer: str) -> float:
    """Bag-of-words F1 between a long answer and its reference (lower-cased, punctuation dropped)."""
    pred, gold = (re.findall(r"[a-z0-9]+", s.lower()) for s in (prediction, answer))
    common = sum(min(pred.count(w), gold.count(w)) for w in set(pred))
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


# ----------------------------------------------------------------------------- the runner


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def answer_questions(model, questions: Sequence[dict], image_folder: str | Path | None, batch_size: int = 32,
                     max_new_tokens: int = 128, template: str = "vicuna_v1", progress: bool = True,
                     model_id: str = "minillava") -> list[dict]:
    """Greedy answers to LLaVA-layout questions (the question text already holds its format prompt)."""
    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc="answering", disable=not progress):
        chunk = questions[start:start + batch_size]
        images = []
        for q in chunk:
            if q.get("image"):
                path = Path(image_folder or ".") / q["image"]
                try:
                    images.append(open_image(path))
                except IMAGE_ERRORS as e:  # the same conversion and the same guard as training
                    raise ValueError(f"question {q['question_id']}: cannot read image {path} "
                                     f"({type(e).__name__}: {e})") from e
            else:
                images.append(None)
        texts = model.answer(images, [q["text"] for q in chunk], template=template, max_new_tokens=max_new_tokens)
        answers += [{"question_id": q["question_id"], "prompt": q["text"], "text": t,
                     "answer_id": uuid.uuid4().hex, "model_id": model_id} for q, t in zip(chunk, texts)]
    return answers


def score_task(task: str, predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """The metrics of one toy task (``pope``: POPE scores; ``choice``: letter accuracy; ``detail``: word F1
    and mean length; others: exact match and the share of short answers)."""
    if task == "pope":
        return pope_scores(predictions, answers) | {"short_share": format_compliance(predictions, short=True)}
    if task == "choice":
        return {"accuracy": multiple_choice_accuracy(predictions, answers),
                "short_share": format_compliance(predictions, short=True)}
    if task == "detail":
        return {"word_f1": sum(map(word_f1, predictions, answers)) / max(1, len(answers)),
                "mean_words": format_compliance(predictions, short=False)}
    return {"accuracy": exact_match(predictions, answers), "short_share": format_compliance(predictions, short=True)}


# ----------------------------------------------------------------------------- real benchmarks

# benchmark -> (the response-format prompt its questions end with, what its annotations hold)
BENCHMARKS = {
    "vqa": (SHORT_ANSWER, "the human answers (VQAv2, VizWiz, TextVQA): VQA accuracy"),
    "gqa": (SHORT_ANSWER, "one answer: exact match"),
    "pope": (SHORT_ANSWER, "yes/no: accuracy, precision, recall, F1, yes-ratio (per category too)"),
    "mme": (SHORT_ANSWER, "yes/no, two questions per image: accuracy, accuracy+, score per category"),
    "choice": (MULTIPLE_CHOICE, "an option letter (ScienceQA, MMBench, SEED): accuracy"),
    "long": (None, "a reference text: word F1 and mean answer length"),
}


def load_annotations(path: str | Path) -> dict[str, object]:
    """Answers keyed by question id from a JSONL or JSON file.

    Rows hold ``question_id`` and one of ``answer``, ``answers`` (a list of strings, or of ``{"answer": …}`` as
    in the official VQAv2 files) or ``label`` (POPE). A JSON object with an ``annotations`` list (VQAv2) works too.
    """
    path = Path(path)
    text = path.read_text()
    try:
        rows = json.loads(text)
        if isinstance(rows, dict):  # the VQAv2 layout, or a JSONL file of one line
            rows = rows.get("annotations", [rows])
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    out: dict[str, object] = {}
    for i, row in enumerate(rows):
        key = next((k for k in ("answers", "answer", "label") if k in row), None)
        if "question_id" not in row or key is None:
            raise ValueError(f"{path}, row {i}: needs 'question_id' and one of 'answer', 'answers', 'label'")
        value = row[key]
        if key == "answers":
            value = [a["answer"] if isinstance(a, dict) else a for a in value]
        out[str(row["question_id"])] = value
    return out


def with_benchmark_prompt(text: str, benchmark: str) -> str:
    """The question with its benchmark's response-format prompt appended, unless it already ends with it."""
    prompt = BENCHMARKS[benchmark][0]
    return text if prompt is None or text.rstrip().endswith(prompt) else with_format_prompt(text, prompt)


def score_benchmark(benchmark: str, questions: Sequence[dict], answers: Sequence[dict],
                    annotations: dict[str, object]) -> dict:
    """Score answers (the runner's rows: ``question_id``, ``text``) against annotations with the benchmark's metric."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    predicted = {str(a["question_id"]): a["text"] for a in answers}
    missing = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in annotations]
    if missing:
        raise ValueError(f"{len(missing)} questions have no annotation, e.g. question_id {missing[0]!r}")
    ids = [str(q["question_id"]) for q in questions]
    preds, golds = [predicted[i] for i in ids], [annotations[i] for i in ids]
    if benchmark == "vqa":
        golds = [g if isinstance(g, list) else [g] for g in golds]
        return {"accuracy": sum(map(vqa_accuracy, preds, golds)) / max(1, len(ids)), "n": len(ids)}
    golds = [g[0] if isinstance(g, list) else str(g) for g in golds]
    if benchmark == "gqa":
        return {"accuracy": exact_match(preds, golds), "n": len(ids)}
    if benchmark == "choice":
        return {"accuracy": multiple_choice_accuracy(preds, golds), "n": len(ids)}
    if benchmark == "long":
        return {"word_f1": sum(map(word_f1, preds, golds)) / max(1, len(ids)),
                "mean_words": format_compliance(preds, short=False), "n": len(ids)}
    categories = [q.get("category", "all") for q in questions]
    if benchmark == "mme":
        return mme_scores(preds, golds, [q["image"] for q in questions], categories)
    out = pope_scores(preds, golds) | {"n": len(ids)}
    for category in sorted(set(categories) - {"all"}):
        keep = [i for i, c in enumerate(categories) if c == category]
        out[category] = pope_scores([preds[i] for i in keep], [golds[i] for i in keep])
    return out


def run_benchmark(model, benchmark: str, questions_file: str | Path, image_folder: str | Path | None,
                  answers_file: str | Path, annotations_file: str | Path | None = None, batch_size: int = 16,
                  max_new_tokens: int = 128, model_id: str = "minillava", progress: bool = True) -> dict | None:
    """Answer a LLaVA-layout question file (greedy, ``vicuna_v1``, padded images), write the answers JSONL and,
    given annotations, return the benchmark's scores (also written next to the answers as ``*.scores.json``)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    questions = read_jsonl(questions_file)
    for i, q in enumerate(questions):
        if "question_id" not in q or "text" not in q:
            raise ValueError(f"{questions_file}, line {i + 1}: a question needs 'question_id' and 'text'")
    annotations = load_annotations(annotations_file) if annotations_file else None
    prompted = [q | {"text": with_benchmark_prompt(q["text"], benchmark)} for q in questions]
    answers = answer_questions(model, prompted, image_folder, batch_size, max_new_tokens, progress=progress,
                               model_id=model_id)
    answers_file = Path(answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    with open(answers_file, "w") as f:
        f.writelines(json.dumps(a) + "\n" for a in answers)
    if annotations is None:
        return None
    scores = score_benchmark(benchmark, questions, answers, annotations)
    answers_file.with_suffix(".scores.json").write_text(json.dumps(scores, indent=2))
    return scores


# ----------------------------------------------------------------------------- the toy world's held-out sets


def beats_majority(result: dict) -> bool | None:
    """Is a task's accuracy clearly above always giving its most frequent answer: by more than two standard
    errors of that baseline (binomial, ``n`` questions)? ``None`` for tasks without a baseline (``detail``)."""
    if result.get("majority") is None:
        return None
    m, n = result["majority"], result["n"]
    return result["accuracy"] > m + 2 * math.sqrt(m * (1 - m) / max(1, n))


def probe_vision_features(encoder, n_scenes: int = 400, seed: int = 0, steps: int = 300) -> dict[str, float]:
    """How well an object's colour, shape and size can be read off the vision features a toy model receives.

    For ``n_scenes`` fresh toy scenes (padded, as in stage 2), each object's feature is the mean of the patch
    features (the encoder's output, before the connector) whose centres lie on the object; a linear classifier
    (logistic regression) is fitted on 80% of the objects and scored on the rest. Held-out accuracy per
    attribute; chance is 1/4 for colour, 1/3 for shape, 1/2 for size. A task that needs an attribute the
    features do not hold cannot be answered, however well the LM learns (the report shows this next to the
    results).
    """
    import torch

    from .toyworld import ATTRIBUTES, draw_scene, make_scene, padded_view, patches_on

    features, labels = [], {"colour": [], "shape": [], "size": []}
    grid = int(encoder.num_patches ** 0.5)
    scenes = [make_scene(7_000_000 + seed * 100_003 + i) for i in range(n_scenes)]
    with torch.no_grad():  # encode 64 scenes per call, not one
        encoded = [encoder(encoder.preprocess([draw_scene(s) for s in scenes[i:i + 64]], "pad")).float().cpu()
                   for i in range(0, n_scenes, 64)]  # the probe trains on the CPU, wherever the encoder is
    for scene, patches in zip(scenes, torch.cat(encoded)):  # patches: (N, D)
        left, top, side = padded_view(scene)
        cell = side / grid
        for t in scene.things:
            on = patches_on(t, scene, grid)
            on = on or [int((t.y - top) // cell) * grid + int((t.x - left) // cell)]  # a small object: its centre
            features.append(patches[on].mean(0))
            for attribute, value in (("colour", t.colour), ("shape", t.shape), ("size", t.size)):
                labels[attribute].append(ATTRIBUTES[attribute].index(value))
    x = torch.stack(features)  # (objects, D)
    return {attribute: linear_probe(x, torch.tensor(y), seed, steps) for attribute, y in labels.items()}


def probe_character(encoder, n_scenes: int = 300, seed: int = 0, steps: int = 300) -> float:
    """How well the printed character can be read off one patch feature of a full-resolution close-up.

    For ``n_scenes`` fresh toy scenes that hold a character, a crop of the encoder's input size at full
    resolution (what one HD grid cell shows) is taken around it, and the feature of the patch holding the
    glyph's centre (``toyworld.patch_labels``) is classified by a linear probe (held-out accuracy; chance 1/23).
    """
    import torch

    from .toyworld import ATTRIBUTES, character_crop, draw_scene, make_scene, patch_labels

    size, grid = encoder.image_size, int(encoder.num_patches ** 0.5)
    rng = random.Random(seed)
    crops, where, labels = [], [], []
    i = 0
    while len(crops) < n_scenes:
        scene = make_scene(8_000_000 + seed * 100_003 + i)
        i += 1
        if not scene.character:
            continue
        x, y = character_crop(scene, size, rng)
        view = (x, y, size)
        marked = [(j, row[3]) for j, row in enumerate(patch_labels(scene, grid, view=view, character=True))
                  if row[3] >= 0]
        if not marked:
            continue
        crops.append(draw_scene(scene).crop((x, y, x + size, y + size)))
        where.append(marked[0][0])
        labels.append(marked[0][1])
    with torch.no_grad():
        patches = torch.cat([encoder(encoder.preprocess(crops[j:j + 64], "pad")).float().cpu()
                             for j in range(0, len(crops), 64)])  # (S, N, D)
    x = patches[torch.arange(len(crops)), torch.tensor(where)]  # (S, D)
    return linear_probe(x, torch.tensor(labels), seed, steps, classes=len(ATTRIBUTES["character"]))


def linear_probe(x, y, seed: int = 0, steps: int = 300, classes: int | None = None) -> float:
    """Held-out accuracy of a linear classifier (softmax regression, Adam) fitted on the first 80% of the rows
    of ``x`` ``(S, D)`` to the class indices ``y`` ``(S,)``, scored on the rest. Features are standardised with
    the training rows' statistics."""
    import torch

    split = int(0.8 * len(x))
    x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes or int(y.max()) + 1)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(probe(x[:split]), y[:split])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (probe(x[split:]).argmax(1) == y[split:]).float().mean().item()


def probe_patches(encoder, n_scenes: int = 400, seed: int = 0) -> dict[str, float]:
    """Everything the toy tower's patches should say: an object's colour, shape and size from its own patches
    (``probe_vision_features``) and the printed character from a close-up's patch (``probe_character``)."""
    return {**probe_vision_features(encoder, n_scenes, seed),
            "character": probe_character(encoder, max(20, 3 * n_scenes // 4), seed)}


def answer_attention(model, n_scenes: int = 100, seed: int = 0, batch_size: int = 50) -> dict[str, list[float]]:
    """Where a toy model's LM looks when it answers a question that names one object.

    For ``n_scenes`` fresh toy scenes, one short question each about a random object ("What colour is the
    square?" or "What shape is the red object?", alternating, as in the evaluation), the attention *from the last
    prompt position* (the one that predicts the answer's first token) is summed over the named object's image
    patches, the other objects' patches, and the whole image, then averaged over heads and questions. Returns
    one value per LM layer for each of ``"named object"``, ``"other objects"``, ``"whole image"`` and
    ``"even spread"``: what the named object would get if the image's share were spread evenly over its patches.
    A model that found the named object puts far more on it than the even spread; one that looks at the image
    as a whole does not. Base encoder only (the HD grid has no single patch layout).
    """
    import torch

    from .toyworld import draw_scene, make_scene, patches_on, short_qa

    if model.hd is not None:
        raise ValueError("answer_attention needs the base encoder: the HD grid has no single patch layout")
    grid = int(model.encoder.num_patches ** 0.5)
    rng = random.Random(seed)
    scenes = [make_scene(9_000_000 + seed * 100_003 + i) for i in range(n_scenes)]
    named = [rng.choice(s.things) for s in scenes]
    questions = [short_qa(s, rng, ("colour", "shape")[i % 2], t)[0] for i, (s, t) in enumerate(zip(scenes, named))]
    previous = model.lm.config._attn_implementation
    model.lm.set_attn_implementation("eager")  # the fused kernels do not return attention weights
    sums = None
    try:
        for start in range(0, n_scenes, batch_size):
            chunk = range(start, min(start + batch_size, n_scenes))
            batch = model.prompt_batch([draw_scene(scenes[i]) for i in chunk], [questions[i] for i in chunk],
                                       format_prompt=SHORT_ANSWER)  # as the evaluation asks them
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                out = model.lm(inputs_embeds=model.embed(ids, batch["pixel_values"]), attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_attentions=True)
            for row, i in enumerate(chunk):
                on = patches_on(named[i], scenes[i], grid)
                others = [j for t in scenes[i].things if t is not named[i] for j in patches_on(t, scenes[i], grid)]
                first = int((ids[row] == model.image_token_id).nonzero()[0])  # the image block's first position
                image_share = [a[row, :, -1, first:first + grid * grid].float().mean(0) for a in out.attentions]
                values = torch.tensor([[w[on].sum(), w[others].sum(), w.sum(), w.sum() * len(on) / grid ** 2]
                                       for w in image_share])  # (layers, 4)
                sums = values if sums is None else sums + values
    finally:
        model.lm.set_attn_implementation(previous)
    means = sums / n_scenes
    return {name: means[:, k].tolist() for k, name in enumerate(["named object", "other objects", "whole image",
                                                                  "even spread"])}


def majority_baseline(answers: Sequence[str]) -> float:
    """Accuracy of always giving the most frequent answer: the floor a model must beat to use the image."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[normalize_short(a)] = counts.get(normalize_short(a), 0) + 1
    return max(counts.values()) / max(1, len(answers))


def evaluate_toy(model, world: str | Path, out: str | Path, batch_size: int = 64,
                 progress: bool = True) -> dict[str, dict]:
    """Answer and score every held-out task of a toy world; answers go to ``out/eval/<task>_answers.jsonl``."""
    from .toyworld import EVAL_TASKS

    world, out = Path(world), Path(out)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    results = {}
    for task in EVAL_TASKS:
        questions = read_jsonl(world / "eval" / f"{task}.jsonl")
        gold = {a["question_id"]: a["answer"] for a in read_jsonl(world / "eval" / f"{task}_answers.jsonl")}
        answers = answer_questions(model, questions, world / "images", batch_size,
                                   max_new_tokens=96 if task == "detail" else 8, progress=progress)
        with open(out / "eval" / f"{task}_answers.jsonl", "w") as f:
            f.writelines(json.dumps(a) + "\n" for a in answers)
        predictions = [a["text"] for a in answers]
        references = [gold[q["question_id"]] for q in questions]
        results[task] = score_task(task, predictions, references) | {
            "n": len(questions), "majority": majority_baseline(references) if task != "detail" else None,
            "by_objects": by_objects(task, questions, predictions, references),
            "examples": [{"image": q["image"], "question": q["text"], "answer": p, "reference": r}
                         for q, p, r in list(zip(questions, predictions, references))[:3]]}
    return results


def by_objects(task: str, questions: Sequence[dict], predictions: Sequence[str],
               references: Sequence[str]) -> dict[int, float] | None:
    """Accuracy split by how many shapes the question's scene holds ({1: 0.9, 2: 0.4, 3: 0.45}); None for
    ``detail`` (no accuracy), ``text`` (about the character, not the shapes) and ``where`` (a format probe).
    With one shape there is nothing to look up: a model that reads colours but
    cannot find *the named* shape among several scores high at 1 and near chance at 2 and 3."""
    from .toyworld import objects_in

    if task in ("detail", "text", "where"):
        return None
    groups: dict[int, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(objects_in(q["question_id"]), []).append(i)
    return {n: score_task(task, [predictions[i] for i in idx], [references[i] for i in idx])["accuracy"]
            for n, idx in sorted(groups.items())}


def main_metric(result: dict) -> float:
    """A task's headline number: F1 for POPE, word F1 for descriptions, accuracy for the rest."""
    return result.get("f1", result.get("word_f1", result.get("accuracy")))


def results_table(results: dict[str, dict]) -> str:
    """A markdown table of the per-task results, next to the majority-answer baseline ("above it?" compares
    accuracy with it, POPE's too, by ``beats_majority``)."""
    rows = ["| task | n | main metric | value | majority baseline | above it? | short answers (<= 3 words) |",
            "|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        metric = "F1 (yes)" if task == "pope" else "word F1" if task == "detail" else "accuracy"
        value = main_metric(r)
        short = f"{r['short_share']:.0%}" if "short_share" in r else f"mean {r['mean_words']:.0f} words"
        base = f"{r['majority']:.0%}" if r.get("majority") is not None else "-"
        above = {True: "yes", False: "**no**", None: "-"}[beats_majority(r)]
        rows.append(f"| {task} | {r['n']} | {metric} | {value:.1%} | {base} | {above} | {short} |")
    return "\n".join(rows)


def plot_examples(results: dict[str, dict], images: Path, path: Path) -> None:
    """One example per task: the image, the question, the model's answer and the reference (a PNG)."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    tasks = [t for t in results if results[t]["examples"]]
    fig = Figure(figsize=(2.6 * len(tasks), 3.6))
    for i, (ax, task) in enumerate(zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks)):
        examples = results[task]["examples"]
        ex = examples[i % len(examples)]  # vary the images across tasks
        with Image.open(images / ex["image"]) as im:
            ax.imshow(im.convert("RGB"))
        question = ex["question"].split("\n")[0]
        ax.set_title(f"{task}: {question[:28]}", fontsize=8)
        ax.set_xlabel(f"model: {ex['answer'][:30]}\nreference: {ex['reference'][:30]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Held-out examples: one question per task, the model's answer and the reference")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def failure_notes(results: dict[str, dict], probe: dict[str, float] | None = None,
                  attention: dict[str, list[float]] | None = None) -> list[str]:
    """Markdown lines saying which tasks a toy model does not pass, what each needs, what its vision features
    hold (``probe``: ``probe_vision_features``) and where its LM looks when it answers (``attention``:
    ``answer_attention``)."""
    from .toyworld import TASK_NEEDS

    failed = [task for task, r in results.items() if beats_majority(r) is False]
    lines = ["## What it gets wrong, and why", ""]
    if not failed:
        lines.append("Every task is clearly above its majority baseline (by two standard errors).")
    else:
        lines.append("Not clearly above the majority answer (by two standard errors): " + ", ".join(failed) + ".")
        lines.append("")
        for task in failed:
            r = results[task]
            by_n = r.get("by_objects")
            split = "; by number of shapes in the scene: " + ", ".join(
                f"{n}: {a:.0%}" for n, a in by_n.items()) if by_n else ""
            lines.append(f"- **{task}** ({r['accuracy']:.0%} vs {r['majority']:.0%}{split}): it needs to "
                         f"{TASK_NEEDS.get(task, '(no note for this task)')}.")
        splits = [results[t]["by_objects"] for t in failed if results[t].get("by_objects")]
        if any(1 in sp and len(sp) > 1 and sp[1] - max(a for n, a in sp.items() if n > 1) > 0.2 for sp in splits):
            lines += ["", "High with one shape and low with several: the model reads an attribute but does not find "
                      "*the named* shape among several (binding). docs/findings.md measures what it takes: an LM "
                      "that already looks things up in text (the toy backbones' manifest.json shows its text "
                      "lookups), and a learning rate small enough for the lookup to form."]
    if probe:
        lines += ["", "What the vision features hold (a linear probe of each object's patch features on fresh "
                  "scenes; chance: colour 25%, shape 33%, size 50%): "
                  + ", ".join(f"{k} {v:.0%}" for k, v in probe.items()) + ". A task that needs an attribute the "
                  "features hold poorly is capped by it, however long the LM trains."]
    if attention:
        # the layer whose answer position looks hardest at the named object (where a lookup would show)
        layer = max(range(len(attention["named object"])), key=lambda i: attention["named object"][i])
        named, others, image, even = (attention[k][layer] for k in ("named object", "other objects", "whole image",
                                                                     "even spread"))
        lines += ["", "Where the LM looks when it answers a question that names one object (the attention of the "
                  f"position that predicts the answer, layer {layer + 1} of {len(attention['named object'])}, the "
                  f"one that looks hardest at it): {named:.1%} on the named object's patches, {others:.1%} on the "
                  f"other objects', {image:.0%} on the image in all. Spread evenly over the image, the named object "
                  f"would get {even:.1%}."
                  + (" No layer looks at the named object more than at an even spread of the image: the lookup "
                     "that binding needs has not formed." if named < 2 * even else "")]
    return lines + [""]


def write_report(results: dict[str, dict], out: str | Path, world: str | Path | None = None,
                 probe: dict[str, float] | None = None, attention: dict[str, list[float]] | None = None) -> str:
    """Write ``report.md`` (results table, what fails and why, loss curves, example answers) and
    ``results.json``; return the table.

    With ``world``, also ``examples.png``: example answers next to their images. ``probe``: what the vision
    features hold (``probe_vision_features``), quoted in the report and saved in ``vision_probe.json``.
    ``attention``: where the LM looks when it answers (``answer_attention``), quoted and saved in
    ``answer_attention.json``.
    """
    out = Path(out)
    table = results_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if probe:
        (out / "vision_probe.json").write_text(json.dumps(probe, indent=2))
    if attention:
        (out / "answer_attention.json").write_text(json.dumps(attention, indent=2))
    lines = ["# minillava toy run", "", "Held-out evaluation (greedy decoding, vicuna_v1, padded images).", "",
             table, "", *failure_notes(results, probe, attention),
             "## Loss curves", "", "![stage 1](stage1/loss.png) ![stage 2](stage2/loss.png)", "",
             "## Example answers", ""]
    if world is not None:
        plot_examples(results, Path(world) / "images", out / "examples.png")
        lines += ["![examples](examples.png)", ""]
    for task, r in results.items():
        for ex in r["examples"][:2]:
            question = ex["question"].replace("\n", " / ")
            lines.append(f"- **{task}** `{ex['image']}`: {question} -> **{ex['answer']}** "
                         f"(reference: {ex['reference']})")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return table
