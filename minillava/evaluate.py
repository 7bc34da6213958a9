"""Evaluation: scorers as small functions, and a runner that answers a question file the LLaVA way.

Question files use the LLaVA JSONL layout (one object per line: ``question_id``, ``image``, ``text``, optional
``category``); answers are written as JSONL (``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``).
Decoding is greedy with the ``vicuna_v1`` template and ``pad`` images, as in every LLaVA-1.5 benchmark.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

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
