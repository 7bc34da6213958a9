"""Resumable checkpoints that a kill cannot tear, and that load without unpickling anything.

A multi-day run is killed sooner or later: by a preemption, an out-of-memory, a user's Ctrl-C. If the kill falls
while a checkpoint is being written, the folder on disk holds the new weights and the old optimizer, or half a
file, and a resume from it trains on from a state no uninterrupted run ever had. So a checkpoint is

1. written aside, into ``checkpoint.partial/``, by ``accelerate`` (the model in safetensors, the optimizer and the
   random states as tensors: ``torch.load(weights_only=True)`` reads them back, never arbitrary pickles);
2. listed: ``trainer_state.json`` (step, position in the data, losses so far, the learning-rate schedule's state,
   skipped-sample counts, the recipe) is written *last*, with the name and size of every file, so its presence
   says the rest is complete;
3. swapped into place with two renames: the old ``checkpoint/`` to ``checkpoint.old/``, then the new one in.

``find_checkpoint`` reads that back: wherever a kill fell, one of the three folders is complete; a damaged
``checkpoint/`` (a file missing or cut short) is refused, naming a complete one if there is one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

STATE_FILE = "trainer_state.json"

# Called with the name of each phase of a save ("begin", "written", "listed", "moved aside", "moved in"): lets the
# tests kill a training process inside each phase. None in normal use.
phase_hook: Callable[[str], None] | None = None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


def _phase(name: str) -> None:
    if phase_hook is not None:
        phase_hook(name)


def _aside(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def save_checkpoint(accelerator, folder: str | Path, state: dict) -> None:
    """Save the prepared model and optimizer (``accelerator.save_state``) and ``state`` (JSON) as ``folder``,
    atomically (see the module docstring). Every process must call it."""
    folder = Path(folder)
    partial, old = _aside(folder, ".partial"), _aside(folder, ".old")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by an earlier kill: never complete, never used
    accelerator.wait_for_everyone()
    _phase("begin")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    _phase("written")
    if accelerator.is_main_process:
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*"))
                 if p.is_file()}
        listing = partial / (STATE_FILE + ".tmp")
        listing.write_text(json.dumps(state | {"files": files}))
        listing.rename(partial / STATE_FILE)  # a rename is atomic: the state file is whole or absent
        _phase("listed")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        _phase("moved aside")
        partial.rename(folder)
        _phase("moved in")
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def verify_checkpoint(folder: str | Path) -> dict:
    """The state of a complete checkpoint, or ``CheckpointError`` saying what is missing or cut short."""
    folder = Path(folder)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{folder} has no {STATE_FILE}: it was never finished (the run stopped while "
                              "writing it)")
    try:
        state = json.loads(state_file.read_text())
        files = state["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{state_file} is not a complete trainer state ({e})") from e
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder} lacks {name}, which its {STATE_FILE} lists")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path} has {path.stat().st_size} bytes where {size} were written: it was "
                                  "cut short or changed since")
    return state


def find_checkpoint(folder: str | Path) -> tuple[Path, dict] | None:
    """The checkpoint a resume should continue from, with its state: ``folder`` if it is complete; if a kill
    fell between the two renames of a save, the complete copy beside it. None when there is nothing to resume.

    Raises ``CheckpointError`` when ``folder`` exists but is damaged, naming a complete one to use instead.
    """
    folder = Path(folder)
    others = [_aside(folder, ".partial"), _aside(folder, ".old")]  # the newer first

    def complete(path: Path) -> dict | None:
        try:
            return verify_checkpoint(path) if path.exists() else None
        except CheckpointError:
            return None

    if folder.exists():
        try:
            return folder, verify_checkpoint(folder)
        except CheckpointError as e:
            usable = [(p, s) for p in others if (s := complete(p)) is not None]
            hint = (f"{usable[0][0]} is complete (step {usable[0][1]['step']}): move it to {folder} to resume "
                    "from there" if usable else "no complete checkpoint is left: start again without --resume")
            raise CheckpointError(f"cannot resume: {e}. {hint}") from e
    for path in others:
        if (state := complete(path)) is not None:
            return path, state
    return None
