"""Shared fixtures: tiny backbones built in the test session and saved to a temp folder, then loaded back
through the same ``from_pretrained`` paths that real checkpoints use. Nothing is downloaded."""

import os

import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from minillava.backbones import save_backbone, tiny_language_model, tiny_vision_tower, train_tokenizer
from minillava.model import MiniLlava
from minillava.prompts import TEMPLATES

# The suite also executes every notebook (nbmake, testpaths in pyproject.toml) with the small budgets: the same
# cells, fewer steps. Set here, before any notebook kernel starts; `MINILLAVA_FAST=1 pytest notebooks` alone.
os.environ.setdefault("MINILLAVA_FAST", "1")

# Under pytest-xdist (`pytest -n 2`, the README's command) the workers share the cores: each worker, and the
# notebook kernels and bench scripts it starts, use their share of them instead of all (oversubscribed torch
# threads are slower than fewer).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(_threads)

CORPUS = [TEMPLATES["vicuna_v1"].system, TEMPLATES["llava_v1"].system,
          "USER: What colour is the circle? ASSISTANT: The circle is red.</s>",
          "Answer the question using a single word or phrase.", "a red circle and a blue square",
          "The quick brown fox jumps over the lazy dog. 0123456789 ,.:;?!'\n"] * 20


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """One cache folder (``MINILLAVA_CACHE``) for the tests that build tiny toy worlds and backbones: built once,
    reused by the rest, as a user's cache is."""
    return tmp_path_factory.mktemp("toy_cache")


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    tower, processor = tiny_vision_tower(image_size=32, patch_size=8, hidden_size=32, num_layers=3)
    return save_backbone(tmp_path_factory.mktemp("clip"), tower, processor)


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=32, patch_size=8)
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return save_backbone(tmp_path_factory.mktemp("siglip"), SiglipVisionModel(config), processor)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    lm = tiny_language_model(tokenizer, hidden_size=48, num_layers=2, num_heads=4)
    return save_backbone(tmp_path_factory.mktemp("llm"), lm, tokenizer)


@pytest.fixture
def model(clip_dir, llm_dir):
    torch.manual_seed(0)
    return MiniLlava.from_backbones(str(clip_dir), str(llm_dir)).eval()


def make_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A random RGB image of size (w, h)."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
