"""The ``minillava`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .model import MiniLlava
from .trainer import Recipe, load_connector, train


def run_toy(args: argparse.Namespace) -> None:
    """The main job: toy world -> backbones -> stage 1 -> stage 2 -> evaluation -> report."""
    from .backbones import toy_setup
    from .toy import toy_recipes, train_toy
    from .toyreport import (
        answer_attention,
        evaluate_toy,
        failure_notes,
        probe_scene,
        probe_vision_features,
        write_report,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world, vision_dir, llm_dir = toy_setup(args.train_images, args.eval_images, args.seed, fast=args.fast,
                                           backbones=args.backbones)
    print(f"backbones: {vision_dir.parent}")
    torch.manual_seed(args.seed)  # the connector's initialisation
    model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir), connector=args.connector)
    train_toy(model, *toy_recipes(world, args.fast), out)
    results = evaluate_toy(model, world, out, batch_size=64)
    probe = {**probe_vision_features(model.encoder, n_scenes=40 if args.fast else 400, seed=args.seed),
             **probe_scene(model.encoder, n_scenes=40 if args.fast else 400, seed=args.seed)}
    attention = answer_attention(model, n_scenes=10 if args.fast else 100, seed=args.seed)
    print(write_report(results, out, world, probe, attention))
    print("\n".join(failure_notes(results, probe, attention)[2:]).strip())


def train_command(args: argparse.Namespace) -> None:
    """One training stage from a recipe YAML, with any vision tower and LM (hub names or local folders)."""
    import yaml
    from accelerate.utils import set_seed

    from .checkpoint import find_checkpoint
    from .hd import HDConfig

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    recipe = Recipe.from_yaml(args.recipe, **overrides)
    resumable = args.resume and find_checkpoint(Path(args.out) / "checkpoint") is not None
    if recipe.stage == 2 and not args.stage1 and not resumable:
        raise SystemExit("stage 2 starts from the stage-1 connector: pass --stage1 <stage-1 output folder>"
                         + (f" (--resume found no checkpoint in {args.out})" if args.resume else ""))
    set_seed(recipe.seed)  # the connector's initialisation: the same seed gives the same run
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    model = MiniLlava.from_backbones(args.vision, args.llm, connector=args.connector,
                                     hd=HDConfig() if args.hd else None, dtype=dtype,
                                     attn_implementation=args.attn_implementation)
    if args.stage1:
        load_connector(model, args.stage1)
    train(recipe, model, args.out, resume=args.resume)


def data_check(args: argparse.Namespace) -> None:
    """Report invalid records and missing/corrupt images of a LLaVA data file; exit 1 if there are any."""
    from .data import check_data

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    report = check_data(args.data, args.images, decode=args.decode, tokenizer=tokenizer, template=args.template,
                        max_length=args.max_length, image_tokens=args.image_tokens)
    print(f"{args.data}: {report['records']} records ({report['image_records']} with an image, "
          f"{report['text_only']} text-only)")
    if not report["problems"]:
        print("no problems found")
        return
    for reason, count in sorted(report["problems"].items()):
        print(f"{count} x {reason}, e.g.:")
        for message in report["examples"][reason]:
            print(f"    {message}")
    print("fix them, or train with `--set on_bad_record=skip` to skip (and count) such records")
    raise SystemExit(1)


def plan_command(args: argparse.Namespace) -> None:
    """Parameters, memory per GPU and time of one stage (no weights loaded)."""
    from .plan import format_plan, plan

    recipe = Recipe.from_yaml(args.recipe)
    p = plan(recipe, args.llm, args.vision, args.connector, args.gpus, args.gpu_memory, args.strategy,
             gpu_flops=args.gpu_tflops * 1e12, mfu=args.mfu)
    print(format_plan(p, recipe, args.gpus, args.gpu_memory, args.strategy, args.mfu))


def merge_lora_command(args: argparse.Namespace) -> None:
    from .trainer import merge_lora

    merge_lora(args.run, args.out)
    print(f"merged model: {args.out}")


def chat(args: argparse.Namespace) -> None:
    """Talk with a trained model about one image, as the official ``llava.serve.cli``: type a question, watch
    the answer appear token by token, ask a follow-up (the conversation so far is the context); an empty line
    or Ctrl-D ends it. ``--question`` answers one question and exits."""
    from transformers import TextStreamer

    from .convert import load_any
    from .data import IMAGE_ERRORS, open_image

    image = None
    if args.image:  # read the image first: a wrong path should not wait for the model to load
        if not Path(args.image).is_file():
            raise SystemExit(f"--image {args.image}: no such file")
        try:
            image = open_image(Path(args.image))
        except IMAGE_ERRORS as e:
            raise SystemExit(f"--image {args.image}: not a readable image ({type(e).__name__}: {e})") from None
    model = load_any(args.model).eval()
    streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    conversation: list[dict] = []
    interactive = args.question is None
    if interactive:
        print(f"minillava chat: {args.model}" + (f", image {args.image}" if image else ", no image")
              + ". An empty line or Ctrl-D ends the conversation.")
    while True:
        question = args.question
        if interactive:
            try:
                question = input("USER: ").strip()
            except EOFError:
                print()
                break
            if not question:
                break
            print("ASSISTANT: ", end="", flush=True)
        conversation.append({"from": "human", "value": question})
        reply = model.chat(image, conversation, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           streamer=streamer)  # the streamer prints the reply as it comes, then a new line
        conversation.append({"from": "gpt", "value": reply})
        if not interactive:
            break


def evaluate(args: argparse.Namespace) -> None:
    """Answer a benchmark's question file and, given annotations, print its scores."""
    import json

    from .convert import load_any
    from .evaluate import run_benchmark

    model = load_any(args.model).eval()
    answers = args.answers or str(Path(args.questions).with_suffix("")) + "_answers.jsonl"
    scores = run_benchmark(model, args.benchmark, args.questions, args.image_folder, answers, args.annotations,
                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           model_id=Path(args.model).name)
    print(f"answers: {answers}")
    if scores is not None:
        print(json.dumps(scores, indent=2))


def backbones_build(args: argparse.Namespace) -> None:
    """Build the toy tokenizer, vision tower and LM from a seed, probe them and save them with a manifest."""
    import json
    import shlex

    from .backbones import BackboneSpec, build_backbones

    spec = BackboneSpec(seed=args.seed)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in spec.__dataclass_fields__:
            raise SystemExit(f"--set expects FIELD=VALUE with a BackboneSpec field "
                             f"({', '.join(spec.__dataclass_fields__)}), got {item!r}")
        kind = type(getattr(spec, key))
        try:
            setattr(spec, key, kind(float(value)) if kind is int else kind(value))
        except ValueError:
            raise SystemExit(f"--set {key}: expected a {kind.__name__}, got {value!r}") from None
    if args.tiny:  # the same code at a tiny budget: checks the build end to end in seconds
        spec.corpus_scenes, spec.tower_scenes, spec.vision_steps, spec.probe_scenes = 200, 50, 3, 10
        spec.lm_steps, spec.lm_caption_steps, spec.lm_hop_steps, spec.lm_position_steps = 3, 2, 2, 2
        spec.lm_character_steps = 2
    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise SystemExit(f"{out} already holds built backbones; pass --force to replace them")
    command = " ".join(["minillava backbones build --out", shlex.quote(str(out)), f"--seed {args.seed}",
                        *(f"--set {shlex.quote(item)}" for item in args.set or []), *(["--tiny"] if args.tiny else [])])
    build_backbones(out, spec, command=command, replace=args.force)
    print(json.dumps(json.loads((out / "manifest.json").read_text())["probes"], indent=1))
    print(f"backbones: {out}")


def backbones_show(args: argparse.Namespace) -> None:
    """Print a backbones folder's manifest (default: the shipped build)."""
    import json

    from .backbones import SHIPPED, read_manifest

    print(json.dumps(read_manifest(args.folder or SHIPPED), indent=1))


def ablate(args: argparse.Namespace) -> None:
    """The paper's ablations at toy scale (see ablate.py)."""
    from .ablate import Budget, ablate, claims_table

    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget.seeds = list(range(args.seeds))
    results = ablate(args.out, budget, args.groups.split(",") if args.groups else None, jobs=args.jobs,
                     resume=args.resume)
    print(claims_table(results))
    print(f"report: {Path(args.out) / 'ablation.md'}")


def connector_kind(kind: str) -> str:
    """``--connector``: a name ``connector.build_connector`` knows, checked before any work starts."""
    from .connector import build_connector

    try:
        build_connector(kind, 2, 2)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="minillava", description="A small, exact, teachable LLaVA-1.5.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("run", help="run a whole recipe end to end (the embedded default: `run toy`)")
    p.add_argument("recipe", choices=["toy"], help="the recipe to run (toy: the embedded default)")
    p.add_argument("--out", default="runs/toy", help="run folder (report, loss curves, model)")
    p.add_argument("--connector", type=connector_kind, default="mlp2x_gelu",
                   help="linear, mlp2x_gelu (LLaVA-1.5's two-layer MLP), mlp3x_gelu, ...")
    p.add_argument("--train-images", type=int, default=5000, help="toy-world training images (both stages)")
    p.add_argument("--eval-images", type=int, default=200, help="held-out images: one question per task each")
    p.add_argument("--seed", type=int, default=0,
                   help="the toy world and the connector's initialisation (another seed is another world)")
    p.add_argument("--fast", action="store_true", help="tiny budgets: checks the pipeline in seconds")
    p.add_argument("--backbones", help="a folder from `minillava backbones build` (default: the shipped ones)")
    p.set_defaults(func=run_toy)

    p = commands.add_parser("train", help="run one training stage from a recipe (configs/recipes/*.yaml)",
                            description="Stage 1 saves the connector (connector.safetensors); stage 2 starts from "
                            "it (--stage1) and saves the whole model (OUT/model). Multi-GPU: run it under "
                            "`accelerate launch --config_file ... -m minillava.cli train ...`.")
    p.add_argument("recipe", help="a recipe YAML, e.g. configs/recipes/llava15-7b-stage1.yaml")
    p.add_argument("--vision", required=True,
                   help="vision tower: hub name or folder (openai/clip-vit-large-patch14-336)")
    p.add_argument("--llm", required=True, help="language model: hub name or folder (lmsys/vicuna-7b-v1.5)")
    p.add_argument("--connector", type=connector_kind, default="mlp2x_gelu",
                   help="linear, mlp2x_gelu (LLaVA-1.5's), mlp3x_gelu, ...")
    p.add_argument("--hd", action="store_true", help="LLaVA-1.5-HD: the grid encoder with the global view")
    p.add_argument("--stage1", help="stage 2: the stage-1 output folder whose connector to start from")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, loss curve, result)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="weights' dtype when loading (mixed precision is the recipe's mixed_precision)")
    p.add_argument("--attn-implementation", default=None, help="sdpa (default), eager or flash_attention_2")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    p.set_defaults(func=train_command)

    p = commands.add_parser("data", help="data tools: `minillava data check DATA.json --images DIR`")
    data_commands = p.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("check", help="find invalid records and missing or corrupt images before training")
    p.add_argument("data", help="LLaVA JSON (list of records) or JSONL")
    p.add_argument("--images", help="the image folder the records' paths are relative to")
    p.add_argument("--decode", action="store_true", help="fully decode every image (slow; finds truncated files)")
    p.add_argument("--tokenizer", help="the LM (hub name or folder) whose tokenizer training will use: also tokenize "
                                       "every record, as training does (finds over-long samples, rejected text)")
    p.add_argument("--template", default="vicuna_v1", help="with --tokenizer: the recipe's template")
    p.add_argument("--max-length", type=int, default=2048, help="with --tokenizer: the recipe's max_length")
    p.add_argument("--image-tokens", type=int, default=576, help="with --tokenizer: tokens per image (576: "
                                                                  "CLIP ViT-L/14 at 336 px)")
    p.set_defaults(func=data_check)

    from .plan import LLMS, STRATEGIES, VISION

    p = commands.add_parser("plan", help="parameters, memory per GPU and time of a recipe, before a long run")
    p.add_argument("--recipe", required=True, help="e.g. configs/recipes/llava15-7b-stage2.yaml")
    p.add_argument("--llm", default="lmsys/vicuna-7b-v1.5", choices=sorted(LLMS), help="the language model")
    p.add_argument("--vision", default="openai/clip-vit-large-patch14-336", choices=sorted(VISION),
                   help="the vision tower")
    p.add_argument("--connector", type=connector_kind, default="mlp2x_gelu",
                   help="linear, mlp2x_gelu (LLaVA-1.5's), mlp3x_gelu, ...")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the run is spread over")
    p.add_argument("--gpu-memory", type=float, default=80, help="GB per GPU")
    p.add_argument("--gpu-tflops", type=float, default=312, help="dense bf16 peak per GPU (A100: 312)")
    p.add_argument("--strategy", choices=STRATEGIES, default="zero3",
                   help="how weights, gradients and optimizer states are spread over the GPUs (LLaVA-1.5: zero3)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    p.set_defaults(func=plan_command)

    p = commands.add_parser("merge-lora", help="fold a LoRA stage-2 run into a plain model folder")
    p.add_argument("run", help="the stage-2 output folder (adapter/, connector.safetensors)")
    p.add_argument("--out", required=True, help="the merged model folder (MiniLlava.from_pretrained reads it)")
    p.set_defaults(func=merge_lora_command)

    p = commands.add_parser("chat", help="talk with a model about an image (or ask one --question)")
    p.add_argument("--model", required=True, help="a run folder or a MiniLlava model folder")
    p.add_argument("--image", help="an image file (omit for a text-only conversation)")
    p.add_argument("--question", help="answer this one question and exit (default: an interactive conversation)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding (as the paper evaluates)")
    p.set_defaults(func=chat)

    from .evaluate import BENCHMARKS

    p = commands.add_parser("eval", help="answer a benchmark question file (LLaVA JSONL layout) and score it",
                            description="Greedy answers with vicuna_v1 and padded images, as LLaVA-1.5's "
                            "evaluation; the benchmark's response-format prompt is appended if missing.")
    p.add_argument("--model", required=True, help="a run folder, MiniLlava folder, llava-hf or official checkpoint")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    p.add_argument("--questions", required=True, help="JSONL: question_id, image, text[, category]")
    p.add_argument("--image-folder", help="folder the questions' image paths are relative to")
    p.add_argument("--annotations", help="JSON/JSONL with question_id and answer/answers/label (omit: answer only)")
    p.add_argument("--answers", help="where to write the answers JSONL (default: next to the questions)")
    p.add_argument("--batch-size", type=int, default=16, help="questions answered at once")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens")
    p.set_defaults(func=evaluate)

    p = commands.add_parser("backbones", help="the toy backbones: `minillava backbones build --out DIR`, `show`")
    backbone_commands = p.add_subparsers(dest="backbones_command", required=True)
    p = backbone_commands.add_parser("build", help="build the toy tokenizer, vision tower and LM from a seed",
                                     description="Pretrains the toy backbones (about 75 min on 2 CPU cores at the "
                                     "default spec), probes them, and writes OUT/vision, OUT/llm and "
                                     "OUT/manifest.json. The shipped build is minillava/toy_backbones.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="the seed every part is built from")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a BackboneSpec field")
    p.add_argument("--tiny", action="store_true", help="a few steps of each part: checks the build in seconds")
    p.add_argument("--force", action="store_true", help="replace backbones already in OUT")
    p.set_defaults(func=backbones_build)
    p = backbone_commands.add_parser("show", help="print a backbones folder's manifest (default: the shipped one)")
    p.add_argument("folder", nargs="?", help="a backbones folder (default: the shipped one)")
    p.set_defaults(func=backbones_show)

    p = commands.add_parser("ablate", help="the paper's ablations at toy scale (connector, format prompts, HD)")
    p.add_argument("--out", default="runs/ablate", help="its runs and the report (ablation.md)")
    p.add_argument("--quick", action="store_true", help="one seed, a few steps (minutes)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3, --quick 1)")
    p.add_argument("--groups", help="comma-separated subset of: connector,format,resolution")
    p.add_argument("--jobs", type=int, help="runs trained at once, one process each (default: one per CPU core)")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished runs of an interrupted ablation into the same --out; train the rest")
    p.set_defaults(func=ablate)

    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for tiny local models are noise; ours stay
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
