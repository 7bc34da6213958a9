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

from PIL import Image
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------- scorers


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
                with Image.open(Path(image_folder) / q["image"]) as im:
                    images.append(im.convert("RGB"))
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


# ----------------------------------------------------------------------------- the toy world's held-out sets


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
            "examples": [{"image": q["image"], "question": q["text"], "answer": p, "reference": r}
                         for q, p, r in list(zip(questions, predictions, references))[:3]]}
    return results


def results_table(results: dict[str, dict]) -> str:
    """A markdown table of the per-task results, next to the majority-answer baseline."""
    rows = ["| task | n | main metric | value | majority baseline | short answers (<= 3 words) |",
            "|---|---|---|---|---|---|"]
    for task, r in results.items():
        metric = "F1 (yes)" if task == "pope" else "word F1" if task == "detail" else "accuracy"
        value = r.get("f1", r.get("word_f1", r.get("accuracy")))
        short = f"{r['short_share']:.0%}" if "short_share" in r else f"mean {r['mean_words']:.0f} words"
        base = f"{r['majority']:.0%}" if r.get("majority") is not None else "-"
        rows.append(f"| {task} | {r['n']} | {metric} | {value:.1%} | {base} | {short} |")
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


def write_report(results: dict[str, dict], out: str | Path, world: str | Path | None = None) -> str:
    """Write ``report.md`` (results table, loss curves, example answers) and ``results.json``; return the table.

    With ``world``, also ``examples.png``: example answers next to their images.
    """
    out = Path(out)
    table = results_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# minillava toy run", "", "Held-out evaluation (greedy decoding, vicuna_v1, padded images).", "",
             table, "", "## Loss curves", "", "![stage 1](stage1/loss.png) ![stage 2](stage2/loss.png)", "",
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
