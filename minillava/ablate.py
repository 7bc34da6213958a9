"""The paper's ablations (LLaVA-1.5, Table 2 and Sec. 3) at toy scale, each variant trained on the same budget.

Every variant runs the toy recipe (stage 1, stage 2, held-out evaluation) from the same toy world and the
same pretrained toy backbones, over several seeds; only one thing changes per variant. Stage 1 (the connector
learns to make patches read like words, at one view) is the same for every variant with the same connector, so
each seed trains it once per connector and those variants start stage 2 from it: the HD variants too, as the paper
trains LLaVA-1.5-HD ("no extra pretraining at high resolution"; their row-end vector starts in stage 2).

- **connector**: ``linear`` (LLaVA) vs ``mlp2x_gelu`` (LLaVA-1.5);
- **format prompts**: stage-2 data with the response-format prompts vs the same data with them removed (the
  answers unchanged) - does one model then give short answers when asked and long ones otherwise?
- **resolution**: the base encoder (one 64-pixel view) vs the HD grid vs the HD grid + global context - can it
  read the tiny printed character, does it hallucinate less?
- **composition** (measured on every variant): "Where is the red circle?" with the short-answer prompt about an
  image, a pairing stage 2 never trains (its conversations ask it with long answers; only its text-only lookups,
  the LM's own pretraining, ask it short about a scene in words) - does the format transfer to images?

Whatever the numbers say is the result; ``claims_table`` compares each with the direction the paper reports.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .hd import HDConfig
from .model import MiniLlava
from .prompts import strip_format_prompts
from .toyreport import evaluate_toy


@dataclass(frozen=True)
class Variant:
    """One training setup; everything not named here is the toy recipe's default."""

    name: str
    connector: str = "mlp2x_gelu"
    format_prompts: bool = True
    hd: HDConfig | None = None

    def key(self) -> str:  # variants that train the same model share one run
        return json.dumps([self.connector, self.format_prompts, asdict(self.hd) if self.hd else None])


BASELINE = Variant("mlp2x_gelu, format prompts, base")
GROUPS = {
    "connector": [replace(BASELINE, name="linear", connector="linear"), replace(BASELINE, name="mlp2x_gelu")],
    "format": [replace(BASELINE, name="without format prompts", format_prompts=False),
               replace(BASELINE, name="with format prompts")],
    "resolution": [replace(BASELINE, name="base (1 view)"),
                   replace(BASELINE, name="HD grid", hd=HDConfig(max_cells=4, global_context=False)),
                   replace(BASELINE, name="HD grid + global", hd=HDConfig(max_cells=4))],
}


@dataclass
class Budget:
    """What each variant gets: the same for all of them."""

    train_images: int = 2000
    eval_images: int = 60
    stage1_steps: int = 600  # the toy run's; at 100 the models bind colours to shapes 35-48% (docs/findings.md)
    stage2_steps: int = 800  # at 400 the models on the v7 backbones read colours 31% (bench/README.md)
    stage2_batch_size: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def quick(cls) -> Budget:
        """One seed, few steps: checks the whole ablation end to end in minutes (tests, notebooks). Too small
        for its numbers to mean much."""
        return cls(train_images=300, eval_images=30, stage1_steps=20, stage2_steps=60, seeds=[0])

    @classmethod
    def tiny(cls) -> Budget:
        """A few steps of everything: only checks that the code runs (the test suite, ``MINILLAVA_FAST=1``)."""
        return cls(train_images=24, eval_images=3, stage1_steps=2, stage2_steps=3, stage2_batch_size=2, seeds=[0])


# the numbers the report compares (results[task][metric]); "overall" is the mean accuracy of the short tasks
SHORT_TASKS = ("colour", "shape", "count", "choice", "pope")


def summarise(results: dict[str, dict]) -> dict[str, float]:
    """The headline numbers of one evaluated run (fractions, except ``detail words``)."""
    main = {t: results[t].get("f1", results[t].get("accuracy")) for t in SHORT_TASKS}
    return {**{t: main[t] for t in SHORT_TASKS},
            "overall": sum(main.values()) / len(main),
            "text": results["text"]["accuracy"],
            "pope F1": results["pope"]["f1"],
            "short answers (short prompts)": statistics.mean(results[t]["short_share"]
                                                             for t in ("colour", "shape", "count", "pope")),
            "detail words": results["detail"]["mean_words"],
            "detail word F1": results["detail"]["word_f1"],
            "where+prompt short": results["where"]["short_share"],
            "where+prompt accuracy": results["where"]["accuracy"]}


def _recipes(world: Path, budget: Budget, seed: int):
    """The toy recipe's two stages (``toy.toy_recipes``) shrunk to ``budget``, with ``seed``."""
    from .toy import toy_recipes

    stage1, stage2 = toy_recipes(world)
    stage1.max_steps, stage1.seed = budget.stage1_steps, seed
    stage2.max_steps, stage2.seed, stage2.per_device_batch_size = budget.stage2_steps, seed, budget.stage2_batch_size
    return stage1, stage2


def run_stage1(connector: str, world: Path, vision_dir: Path, llm_dir: Path, seed: int, budget: Budget,
               out: Path) -> Path:
    """Train the stage 1 that every variant with ``connector`` starts from (one view), with one seed; returns
    ``out`` (its ``connector.safetensors``)."""
    from .trainer import train

    torch.manual_seed(seed)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir), connector=connector)
    train(_recipes(world, budget, seed)[0], model, out, progress=False)
    return out


def run_variant(variant: Variant, world: Path, vision_dir: Path, llm_dir: Path, seed: int, budget: Budget,
                out: Path, stage1: Path) -> dict[str, float]:
    """Train one variant's stage 2 from ``stage1`` (``run_stage1``'s folder for its connector and seed) and
    evaluate it; returns ``summarise`` of it (``ablate`` writes it into ``out/run.json``, with what the run was)."""
    from .trainer import load_connector, train

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir), connector=variant.connector, hd=variant.hd)
    load_connector(model, stage1)  # an HD model's row-end vector keeps its initialisation: stage 2 trains it
    stage2 = _recipes(world, budget, seed)[1]
    if not variant.format_prompts:  # same records, same answers; the questions lose their format prompts
        records = json.loads(Path(stage2.data).read_text())
        for record in records:
            for turn in record["conversations"]:
                if turn["from"] == "human":
                    turn["value"] = strip_format_prompts(turn["value"])
        stage2.data = str(out / "stage2_without_format_prompts.json")
        Path(stage2.data).write_text(json.dumps(records))
    train(stage2, model, out / "stage2", progress=False)
    return summarise(evaluate_toy(model.eval(), world, out, progress=False))


def ablation_world(budget: Budget) -> Path:
    """The toy world the ablation at ``budget`` trains and evaluates on (generated once into the cache)."""
    from .backbones import cache_dir

    return cache_dir() / f"world-{budget.train_images}-{budget.eval_images}-0"


def _cost(variant: Variant) -> int:
    """Encoder views per image (base 1, HD grid up to 4 cells, + 1 global view): how long its runs take, roughly."""
    return 1 if variant.hd is None else 4 + int(variant.hd.global_context)


def _start_worker(threads: int) -> None:
    """Set up one worker process: its torch threads, and no loading bars (the ablation's own bar counts runs)."""
    from transformers.utils import logging

    torch.set_num_threads(threads)
    logging.disable_progress_bar()


def _run_all(calls: list[tuple[str, Callable, tuple]], jobs: int) -> Iterator[tuple[int, Any]]:
    """Run ``calls`` (``(name, function, args)`` each), ``jobs`` at a time, each in its own worker process (or in
    this one for ``jobs=1``); yield ``(index of the call, its result)`` as each finishes. The first failure stops
    the rest and names its run."""
    if jobs == 1:
        for i, (_, function, args) in enumerate(calls):
            yield i, function(*args)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(threads,))
    with pool:
        futures = {pool.submit(function, *args): i for i, (_, function, args) in enumerate(calls)}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as err:
                pool.shutdown(cancel_futures=True)  # the other runs still going finish; none start
                raise RuntimeError(f"ablation run {calls[futures[future]][0]} failed: {err}") from err
            yield futures[future], result


def ablate(out: str | Path, budget: Budget | None = None, groups: list[str] | None = None,
           progress: bool = True, jobs: int | None = None,
           resume: bool = False) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Run every variant of ``groups`` (default: all) for every seed; write ``ablation.md``, ``ablation.json``
    and ``ablation.png`` under ``out``; return ``{group: {variant name: [summary per seed]}}``.

    First each seed's stage 1 per connector (``out/runs/stage1-<connector>-seed<seed>``, with ``stage1.json``),
    then every variant's stage 2 from it. Each finished run leaves ``out/runs/<run>/run.json``: what it was
    (variant, seed, budget, toy world, backbones and recipes: ``toy.toy_fingerprint``) and its summary.
    ``resume=True`` keeps the finished runs (and stage 1s) of an earlier, interrupted ablation into the same
    ``out`` whose ``run.json`` (``stage1.json``) says they are the same runs, and trains only the others.

    ``jobs``: runs trained at once, each in its own process (default: one per CPU core, at most one per run).
    The runs of each phase are independent, and these tiny models keep one core busier than two cores share one run
    (on 2 cores the whole ablation takes 28 min instead of 33, with the same results; bench/README.md). Each
    process gets ``torch.get_num_threads() // jobs`` threads (at least one); ``jobs=1`` trains every run in this
    process, as it is set up.
    """
    from tqdm.auto import tqdm

    from .backbones import toy_backbones
    from .toy import toy_fingerprint
    from .toyworld import write_world

    budget, out = budget or Budget(), Path(out)
    groups = groups or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown ablation group(s) {unknown}; choose from {sorted(GROUPS)}")
    world = write_world(ablation_world(budget), budget.train_images,
                        budget.eval_images, 0, progress=progress)
    vision_dir, llm_dir = toy_backbones()  # the shipped toy backbones
    todo = {v.key(): v for g in groups for v in GROUPS[g]}  # the baseline appears in every group: trained once
    tasks = [(key, variant, seed, out / "runs" / f"variant{i}-seed{seed}")
             for i, (key, variant) in enumerate(todo.items()) for seed in budget.seeds]
    runs: dict[str, dict[int, dict[str, float]]] = {key: {} for key in todo}  # variant key -> seed -> summary
    made_of = {"budget": {k: v for k, v in asdict(budget).items() if k != "seeds"},
               "world": json.loads((world / "world.json").read_text()),
               "backbones and recipes": toy_fingerprint(vision_dir.parent)}

    def stage1_folder(variant: Variant, seed: int) -> Path:  # variants with the same connector share it, per seed
        return out / "runs" / f"stage1-{variant.connector}-seed{seed}"

    def stage1_record(connector: str, seed: int) -> dict:  # what a stage-1 run was (its stage1.json)
        return {"stage1": connector, "seed": seed, **made_of}

    def finished(key: str, variant: Variant, seed: int, folder: Path, summary: dict[str, float]) -> None:
        runs[key][seed] = summary
        (folder / "run.json").write_text(json.dumps({"variant": variant.key(), "seed": seed, **made_of,
                                                     "summary": summary}, indent=2))

    if resume:
        for key, variant, seed, folder in tasks:
            done = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
            if done.get("summary") and done == {"variant": variant.key(), "seed": seed, **made_of,
                                                  "summary": done["summary"]}:
                runs[key][seed] = done["summary"]
        tasks = [task for task in tasks if task[2] not in runs[task[0]]]
    stage1s = {}  # the stage-1 runs the variants left to train start from: (connector, seed) -> folder
    for _, variant, seed, _ in tasks:
        folder = stage1_folder(variant, seed)
        if not (resume and (folder / "stage1.json").exists()
                and json.loads((folder / "stage1.json").read_text()) == stage1_record(variant.connector, seed)):
            stage1s[variant.connector, seed] = folder
    jobs = max(1, min(len(tasks), jobs or os.cpu_count() or 1))
    with tqdm(total=len(stage1s) + len(tasks), desc="ablation runs", disable=not progress) as bar:
        stage1_todo = list(stage1s.items())
        stage1_calls = [(f"stage 1 of '{connector}', seed {seed}", run_stage1,
                         (connector, world, vision_dir, llm_dir, seed, budget, folder))
                        for (connector, seed), folder in stage1_todo]
        for i, _ in _run_all(stage1_calls, jobs):
            (connector, seed), folder = stage1_todo[i]
            (folder / "stage1.json").write_text(json.dumps(stage1_record(connector, seed), indent=2))
            bar.update()
        tasks.sort(key=lambda task: -_cost(task[1]))  # the longest first: no process is left with one at the end
        calls = [(f"'{variant.name}', seed {seed}", run_variant,
                  (variant, world, vision_dir, llm_dir, seed, budget, folder, stage1_folder(variant, seed)))
                 for _, variant, seed, folder in tasks]
        for i, summary in _run_all(calls, jobs):
            finished(*tasks[i], summary)
            bar.update()
    results = {g: {v.name: [runs[v.key()][s] for s in budget.seeds] for v in GROUPS[g]} for g in groups}
    (out / "ablation.json").write_text(json.dumps({"budget": asdict(budget), "results": results}, indent=2))
    (out / "ablation.md").write_text(report(results, budget))
    plot_ablation(results, out / "ablation.png")
    return results


# ----------------------------------------------------------------------------- reporting

COLUMNS = {  # group -> the metrics its table shows
    "connector": ["overall", "colour", "shape", "count", "choice", "pope F1", "detail word F1"],
    "format": ["overall", "short answers (short prompts)", "detail words", "where+prompt short",
               "where+prompt accuracy"],
    "resolution": ["text", "pope F1", "overall"],
}

# (group, better variant, worse variant, metric, what the paper reports)
CLAIMS = [
    ("connector", "mlp2x_gelu", "linear", "overall",
     "MLP connector > linear (Table 2: +MLP, MME 1323.8 -> 1355.2, GQA 46.8 -> 47.3)"),
    ("format", "with format prompts", "without format prompts", "short answers (short prompts)",
     "format prompts make short prompts get short answers (Sec. 3.2)"),
    ("format", "with format prompts", "without format prompts", "detail words",
     "...while long questions keep long answers (one model does both)"),
    ("format", "with format prompts", "without format prompts", "where+prompt short",
     "the format instruction transfers to a question kind never trained with it on an image (Sec. 3.2)"),
    ("resolution", "HD grid", "base (1 view)", "text", "higher resolution reads small detail (TextVQA, Table 2/4)"),
    ("resolution", "HD grid", "base (1 view)", "pope F1", "higher resolution hallucinates less (POPE, Sec. 3.4)"),
    ("resolution", "HD grid + global", "HD grid", "overall", "global context helps the HD grid (App. A.1)"),
]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(metric: str, values: list[float]) -> str:
    mean, std = _mean_std(values)
    if metric == "detail words":
        return f"{mean:.1f} ± {std:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def claims_table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """Each paper claim next to what the toy runs say: reproduced if the difference of the means is larger than
    its standard error, contradicted if it is that large the other way, else unclear. With one seed there is no
    standard error, so no verdict: only the sign of the difference (a quick run shows the experiment, not its
    result)."""
    rows = ["| claim (paper) | metric | better | worse | toy result |", "|---|---|---|---|---|"]
    for group, good, bad, metric, text in CLAIMS:
        if group not in results:
            continue
        a = [r[metric] for r in results[group][good]]
        b = [r[metric] for r in results[group][bad]]
        diff = statistics.mean(a) - statistics.mean(b)
        noise = ((_mean_std(a)[1] ** 2 / len(a) + _mean_std(b)[1] ** 2 / len(b)) ** 0.5) if len(a) > 1 else 0.0
        verdict = "reproduced" if diff > noise else "contradicted" if diff < -noise else "unclear"
        if len(a) == 1 or len(b) == 1:
            verdict = f"no verdict (1 seed: {'higher' if diff > 0 else 'lower' if diff < 0 else 'equal'})"
        rows.append(f"| {text} | {metric} | {good}: {_fmt(metric, a)} | {bad}: {_fmt(metric, b)} | {verdict} |")
    return "\n".join(rows)


def report(results: dict[str, dict[str, list[dict[str, float]]]], budget: Budget) -> str:
    """The markdown report: one table per group (mean ± std over seeds, in %), then the claims."""
    lines = ["# minillava ablations (toy scale)", "",
             f"Stage 1: {budget.stage1_steps} steps at one view, one per connector and seed, which every variant "
             f"with that connector starts from (the HD ones too, as the paper trains LLaVA-1.5-HD). Each variant: "
             f"stage 2 {budget.stage2_steps} steps of {budget.stage2_batch_size}, {budget.train_images} training "
             f"images, {budget.eval_images} held-out images, seeds {budget.seeds}. Mean ± std over seeds; "
             "percentages except 'detail words'.", ""]
    for group, variants in results.items():
        columns = COLUMNS[group]
        lines += [f"## {group}", "", "| variant | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for name, runs in variants.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(c, [r[c] for r in runs]) for c in columns) + " |")
        lines.append("")
    lines += ["## The paper's claims at toy scale", "", claims_table(results), "", "![ablation](ablation.png)", ""]
    return "\n".join(lines)


def plot_ablation(results: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> None:
    """One bar chart per group: each variant's headline metrics, mean with std error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(results), 4))
    for ax, (group, variants) in zip(fig.subplots(1, len(results), squeeze=False)[0], results.items()):
        metrics = [c for c in COLUMNS[group] if c != "detail words"][:4]
        width = 0.8 / len(variants)
        for i, (name, runs) in enumerate(variants.items()):
            stats = [_mean_std([100 * r[m] for r in runs]) for m in metrics]
            ax.bar([j + i * width for j in range(len(metrics))], [s[0] for s in stats], width,
                   yerr=[s[1] for s in stats], label=name, capsize=2)
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(metrics))])
        ax.set_xticklabels([m.replace(" (short prompts)", "").replace("+prompt ", "+prompt\n") for m in metrics],
                           fontsize=7)
        ax.set_xlabel("metric")
        ax.set_ylabel("% (mean ± std over seeds)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Ablation: {group}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
