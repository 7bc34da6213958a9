"""The toy run's report: held-out tasks scored and split by how many shapes a scene holds, what the vision
features hold (linear probes), where the LM looks when it answers (attention), and ``report.md``.

``evaluate.py`` holds the paper's scorers and the benchmark runner; this module applies them to the toy world's
held-out sets and adds the diagnostics only a procedural world allows (the true object under every patch).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .evaluate import answer_questions, normalize_short, read_jsonl, score_task
from .prompts import SHORT_ANSWER


def beats_majority(result: dict) -> bool | None:
    """Is a task's accuracy clearly above always giving its most frequent answer: by more than two standard
    errors of that baseline (binomial, ``n`` questions)? ``None`` for tasks without a baseline (``detail``)."""
    if result.get("majority") is None:
        return None
    m, n = result["majority"], result["n"]
    return result["accuracy"] > m + 2 * math.sqrt(m * (1 - m) / max(1, n))


def probe_vision_features(encoder, n_scenes: int = 400, seed: int = 0, steps: int = 300) -> dict[str, float]:
    """How well an object's colour, shape, size and position can be read off the vision features a toy model
    receives.

    For ``n_scenes`` fresh toy scenes (padded, as in stage 2), each object's feature is the mean of the patch
    features (the encoder's output, before the connector) whose centres lie on the object; a linear classifier
    (logistic regression) is fitted on 80% of the objects and scored on the rest. Held-out accuracy per
    attribute; chance is 1/4 for colour, 1/3 for shape, 1/2 for size, about 1/9 for position (where the object's
    centre lies, in thirds of the canvas). A task that needs an attribute the
    features do not hold cannot be answered, however well the LM learns (the report shows this next to the
    results).
    """
    import torch

    from .toyworld import ATTRIBUTES, draw_scene, make_scene, padded_view, patches_on, where

    features, labels = [], {"colour": [], "shape": [], "size": [], "position": []}
    grid = int(encoder.num_patches ** 0.5)
    scenes = [make_scene(7_000_000 + seed * 100_003 + i) for i in range(n_scenes)]
    for scene, patches in zip(scenes, patch_features(encoder, [draw_scene(s) for s in scenes])):  # patches: (N, D)
        left, top, side = padded_view(scene)
        cell = side / grid
        for t in scene.things:
            on = patches_on(t, scene, grid)
            on = on or [int((t.y - top) // cell) * grid + int((t.x - left) // cell)]  # a small object: its centre
            features.append(patches[on].mean(0))
            for attribute, value in (("colour", t.colour), ("shape", t.shape), ("size", t.size),
                                     ("position", where(t, scene))):
                labels[attribute].append(ATTRIBUTES[attribute].index(value))
    x = torch.stack(features)  # (objects, D)
    return {attribute: linear_probe(x, torch.tensor(y), seed, steps, classes=len(ATTRIBUTES[attribute]))
            for attribute, y in labels.items()}


def probe_character(encoder, n_scenes: int = 300, seed: int = 0, steps: int = 300) -> float:
    """How well the printed character can be read off one patch feature of the HD grid cell that shows it.

    For ``n_scenes`` fresh toy scenes that hold a character, the cell that shows it when the scene is split as
    the ablation's HD grid splits it (``toyworld.character_cell``: full resolution or 0.8), and the feature of
    the patch holding the glyph's centre is classified by a linear probe (held-out accuracy; chance 1/23).
    """
    import torch

    from .toyworld import ATTRIBUTES, character_cell, make_scene

    size, grid = encoder.image_size, int(encoder.num_patches ** 0.5)
    crops, where, labels = [], [], []
    i = 0
    while len(crops) < n_scenes:
        scene = make_scene(8_000_000 + seed * 100_003 + i)
        i += 1
        if not scene.character:
            continue
        cell, centre = character_cell(scene, size, grid, encoder.pad_colour)
        if centre is None:
            continue
        crops.append(cell)
        where.append(centre)
        labels.append(ATTRIBUTES["character"].index(scene.character))
    patches = patch_features(encoder, crops)  # (S, N, D)
    x = patches[torch.arange(len(crops)), torch.tensor(where)]  # (S, D)
    return linear_probe(x, torch.tensor(labels), seed, steps, classes=len(ATTRIBUTES["character"]))


def probe_scene(encoder, n_scenes: int = 400, seed: int = 0, steps: int = 300) -> dict[str, float]:
    """How well what the whole scene holds can be read off *one* image token: for ``n_scenes`` fresh toy scenes
    (padded, as in stage 2), the feature of one patch drawn at random is classified by a linear probe for how
    many shapes the scene holds ("count", chance about 1/3) and whether a character is printed ("printed",
    chance about 1/2). Held-out accuracy of each."""
    import torch

    from .toyworld import draw_scene, make_scene

    scenes = [make_scene(9_000_000 + seed * 100_003 + i) for i in range(n_scenes)]
    patches = patch_features(encoder, [draw_scene(s) for s in scenes])  # (S, N, D)
    rng = random.Random(seed)
    x = patches[torch.arange(n_scenes), torch.tensor([rng.randrange(patches.shape[1]) for _ in scenes])]  # (S, D)
    count = torch.tensor([len(s.things) - 1 for s in scenes])
    printed = torch.tensor([int(s.character is not None) for s in scenes])
    return {"count": linear_probe(x, count, seed, steps, classes=3),
            "printed": linear_probe(x, printed, seed, steps, classes=2)}


def patch_features(encoder, images: Sequence[Image.Image]):
    """``(S, N, D)``: the encoder's patch features of ``images``, padded to squares as in stage 2, 64 images per
    call; on the CPU, where the probes train, wherever the encoder is."""
    import torch

    with torch.no_grad():
        return torch.cat([encoder(encoder.preprocess(images[i:i + 64], "pad")).float().cpu()
                          for i in range(0, len(images), 64)])


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
    (``probe_vision_features``), the printed character from a close-up's patch (``probe_character``), and how
    many shapes the scene holds and whether anything is printed from any one patch (``probe_scene``)."""
    return {**probe_vision_features(encoder, n_scenes, seed),
            "character": probe_character(encoder, max(20, 3 * n_scenes // 4), seed),
            **probe_scene(encoder, n_scenes, seed)}


def image_attention(model, images: Sequence[Image.Image], questions: Sequence[str]):
    """``(B, layers, N)``: for each image and its question, the attention that the position predicting the
    answer's first token (the prompt's last) puts on each of the image's ``N`` patches, per LM layer, averaged
    over heads. Questions are asked with the short-answer prompt, as the evaluation asks them. Base encoder only
    (the HD grid has no single patch layout)."""
    import torch

    if model.hd is not None:
        raise ValueError("answer attention needs the base encoder: the HD grid has no single patch layout")
    n = model.encoder.num_features
    previous = model.lm.config._attn_implementation
    model.lm.set_attn_implementation("eager")  # the fused kernels do not return attention weights
    try:
        batch = model.prompt_batch(list(images), list(questions), format_prompt=SHORT_ANSWER)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            out = model.lm(inputs_embeds=model.embed(ids, batch["pixel_values"]), attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_attentions=True)
    finally:
        model.lm.set_attn_implementation(previous)
    first = (ids == model.image_token_id).int().argmax(1)  # (B,) each row's first image position (left padding)
    return torch.stack([torch.stack([a[row, :, -1, first[row]:first[row] + n].float().mean(0)
                                     for a in out.attentions]) for row in range(len(ids))])  # (B, layers, N)


def answer_attention(model, n_scenes: int = 100, seed: int = 0, batch_size: int = 50) -> dict[str, list[float]]:
    """Where a toy model's LM looks when it answers a question that names one object.

    For ``n_scenes`` fresh toy scenes, one short question each about a random object ("What colour is the
    square?" or "What shape is the red object?", alternating, as in the evaluation), the attention *from the last
    prompt position* (the one that predicts the answer's first token; ``image_attention``) is summed over the
    named object's image patches, the other objects' patches, and the whole image, then averaged over heads and
    questions. Returns one value per LM layer for each of ``"named object"``, ``"other objects"``,
    ``"whole image"`` and ``"even spread"``: what the named object would get if the image's share were spread
    evenly over its patches. A model that found the named object puts far more on it than the even spread; one
    that looks at the image as a whole does not. Base encoder only.
    """
    import torch

    from .toyworld import draw_scene, make_scene, patches_on, short_qa

    grid = int(model.encoder.num_patches ** 0.5)
    rng = random.Random(seed)
    scenes = [make_scene(9_000_000 + seed * 100_003 + i) for i in range(n_scenes)]
    named = [rng.choice(s.things) for s in scenes]
    questions = [short_qa(s, rng, ("colour", "shape")[i % 2], t)[0] for i, (s, t) in enumerate(zip(scenes, named))]
    sums = None
    for start in range(0, n_scenes, batch_size):
        chunk = range(start, min(start + batch_size, n_scenes))
        maps = image_attention(model, [draw_scene(scenes[i]) for i in chunk], [questions[i] for i in chunk])
        for w, i in zip(maps, chunk):  # w: (layers, N)
            on = patches_on(named[i], scenes[i], grid)
            others = [j for t in scenes[i].things if t is not named[i] for j in patches_on(t, scenes[i], grid)]
            values = torch.stack([w[:, on].sum(1), w[:, others].sum(1), w.sum(1), w.sum(1) * len(on) / grid ** 2],
                                 dim=1)  # (layers, 4)
            sums = values if sums is None else sums + values
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
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the labels under wide images fall outside the axes


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
                      "*the named* shape among several (binding)."]
    if probe:
        lines += ["", "What the vision features hold (a linear probe of each object's patch features on fresh "
                  "scenes, and for what the whole scene holds, of one patch drawn at random; chance: colour 25%, "
                  "shape 33%, size 50%, position about 11%, count about 33%, printed 50%): "
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
