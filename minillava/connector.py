"""The connector: vision features -> language-model embeddings.

The connector (the official code calls it the "mm_projector") maps each patch feature from the vision
tower's width D to the language model's width H, so the patches can sit in the LM's sequence as if they were
word embeddings:  (B, N, D) -> (B, N, H).

- ``linear``: one Linear(D -> H), the original LLaVA.
- ``mlp2x_gelu``: Linear(D -> H) -> GELU -> Linear(H -> H), LLaVA-1.5's default (paper: a better connector
  helps). ``mlpNx_gelu`` generalises it to N linear layers.
- ``identity``: no parameters, for when D == H (debugging, ablations).

The module is a plain ``nn.Sequential``, so its parameter names are ``0.weight``, ``0.bias``, ``2.weight``,
... exactly the official ``model.mm_projector.{0,2}.*`` keys minus the prefix: official checkpoints load as is.
"""

from __future__ import annotations

import re

from torch import nn


def build_connector(kind: str, vision_dim: int, llm_dim: int) -> nn.Sequential:
    """Build the connector named ``kind`` (``linear``, ``mlp2x_gelu``, ``mlp3x_gelu``, ..., ``identity``).

    >>> sum(p.numel() for p in build_connector("mlp2x_gelu", 1024, 4096).parameters())  # LLaVA-1.5-7B
    20979712
    """
    if kind == "linear":
        return nn.Sequential(nn.Linear(vision_dim, llm_dim))
    if kind == "identity":
        if vision_dim != llm_dim:
            raise ValueError(f"identity connector needs equal widths, got vision {vision_dim} and LLM {llm_dim}")
        return nn.Sequential(nn.Identity())
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown connector {kind!r}: use 'linear', 'mlpNx_gelu' (e.g. 'mlp2x_gelu') or 'identity'")
    layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(llm_dim, llm_dim)]  # exact (erf) GELU, as torch's default
    return nn.Sequential(*layers)


def official_projector_state_dict(state_dict: dict) -> dict:
    """Strip the official ``model.mm_projector.`` prefix so the keys load into ``build_connector``'s module.

    Accepts the keys of a stage-1 ``mm_projector.bin`` (``model.mm_projector.0.weight`` ...) or of a full
    official checkpoint (other keys are ignored).
    """
    prefix = "model.mm_projector."
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no '{prefix}*' keys found; got e.g. {sorted(state_dict)[:3]}")
    return out
