"""Run by test_trainer.py under `accelerate launch` (2 CPU processes): train a few steps, write each rank's
parameters and the metrics so the test can compare replicas and losses."""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from minillava.model import MiniLlava
from minillava.trainer import Recipe, train

clip_dir, llm_dir, world, out, per_device = sys.argv[1:6]
data = sys.argv[6] if len(sys.argv) > 6 else f"{world}/stage2.json"  # a file of its own: no modality grouping
torch.manual_seed(0)
model = MiniLlava.from_backbones(clip_dir, llm_dir)
recipe = Recipe(stage=2, data=data, image_folder=f"{world}/images", max_steps=3, per_device_batch_size=int(per_device),
                learning_rate=1e-3, log_every=1, max_length=512, group_by_modality_length=len(sys.argv) <= 6)
train(recipe, model, out, progress=False)
rank = PartialState().process_index
torch.save({k: v.detach().clone() for k, v in model.lm.state_dict().items()}, Path(out) / f"rank{rank}.pt")
