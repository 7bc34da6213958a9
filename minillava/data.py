"""The data pipeline: tokenized samples -> padded batches.

Training batches are padded on the right (labels -100 on padding); generation batches on the left, so that
every row's last prompt token sits at the same position and new tokens are appended in one column.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from .prompts import IGNORE_INDEX


def pad_batch(samples: Sequence[dict], pad_token_id: int,
              padding_side: Literal["right", "left"] = "right") -> dict[str, torch.Tensor]:
    """Stack ``{"input_ids", ["labels"]}`` samples into tensors (B, T) with an ``attention_mask``.

    Padding positions get ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in ``labels``.
    """
    if not samples:
        raise ValueError("pad_batch got no samples")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    length = max(len(s["input_ids"]) for s in samples)
    has_labels = "labels" in samples[0]
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        attention_mask[row, span] = 1
        if has_labels:
            labels[row, span] = torch.as_tensor(sample["labels"], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if has_labels:
        batch["labels"] = labels
    return batch
