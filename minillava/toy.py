"""The toy recipe: LLaVA-1.5's two training stages at toy scale, on the toy world and the shipped toy backbones.

``minillava run toy``, ``minillava ablate`` and the notebooks all train through ``train_toy``, with the recipes
of ``minillava/recipes/toy-stage{1,2}.yaml`` (the same files ``minillava train`` reads, so the toy run is the
real recipe at a smaller size, not a separate code path):

    stage 1  connector only, captions, ``plain`` template     (feature alignment)
    stage 2  connector + LM, the instruction mix, ``vicuna_v1`` (visual instruction tuning)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .model import MiniLlava
from .trainer import Recipe, load_connector, train

RECIPES = Path(__file__).parent / "recipes"  # package data: a non-editable install has them too


def toy_recipes(world: str | Path, fast: bool = False) -> tuple[Recipe, Recipe]:
    """The two toy recipes (``minillava/recipes/toy-stage{1,2}.yaml``) pointed at a toy world folder.

    ``fast``: a handful of steps of each stage, to check the pipeline end to end (not for results).
    """
    world = Path(world)
    stage1, stage2 = (Recipe.from_yaml(RECIPES / f"toy-stage{stage}.yaml", data=str(world / f"stage{stage}.json"),
                                       image_folder=str(world / "images")) for stage in (1, 2))
    if fast:
        stage1.max_steps, stage2.max_steps, stage2.epochs = 4, 6, 1
    return stage1, stage2


def toy_fingerprint(backbones: str | Path) -> str:
    """What a toy model trained by ``train_toy`` is made of, in 12 hex digits: the backbones' ``manifest.json``
    (folder ``backbones``) and the two toy recipes. Cached and resumed toy runs are named after it, so that rebuilt
    backbones or a changed recipe never meet a model trained before."""
    made_of = [Path(backbones) / "manifest.json", *(RECIPES / f"toy-stage{stage}.yaml" for stage in (1, 2))]
    return hashlib.sha256(b"".join(path.read_bytes() for path in made_of)).hexdigest()[:12]


def train_toy(model: MiniLlava, stage1: Recipe, stage2: Recipe, out: str | Path,
              progress: bool = True) -> MiniLlava:
    """Stage 1, then stage 2 from the stage-1 connector: ``out/stage1`` and ``out/stage2`` (LLaVA-1.5's order).

    Returns ``model``, trained in place (stage 2's weights).
    """
    out = Path(out)
    train(stage1, model, out / "stage1", progress=progress)
    load_connector(model, out / "stage1")  # what stage 1 saved: what stage 2 starts from, as in LLaVA
    train(stage2, model, out / "stage2", progress=progress)
    return model


def toy_llava(fast: bool = False, progress: bool = True) -> tuple[MiniLlava, Path, Path]:
    """A trained toy LLaVA (the toy recipe on the default world and the shipped backbones), trained once and
    then loaded from the cache (``backbones.cache_dir``).

    Returns ``(model, world, run_folder)``; the notebooks use it so that each can start from a trained model.
    """
    from .backbones import cache_dir, toy_setup
    from .toyworld import building_folder, move_into_place

    world, vision_dir, llm_dir = toy_setup(fast=fast, progress=progress)
    run = cache_dir() / f"toy-llava-{toy_fingerprint(vision_dir.parent)}{'-fast' if fast else ''}"

    def complete(folder: Path) -> bool:
        return (folder / "stage2" / "model" / "model.safetensors").exists()

    if not complete(run):
        built = building_folder(run)  # trained aside, moved into place when done (toyworld.move_into_place)
        torch.manual_seed(0)  # the connector's initialisation
        model = MiniLlava.from_backbones(str(vision_dir), str(llm_dir))
        train_toy(model, *toy_recipes(world, fast), built, progress=progress)
        move_into_place(built, run, complete)
    return MiniLlava.from_pretrained(run / "stage2" / "model").eval(), world, run
