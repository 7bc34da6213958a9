"""The data pipeline: LLaVA JSON records -> validated examples -> padded batches, grouped by modality.

A record is ``{"id": ..., "image": "coco/train2017/000000033471.jpg" (optional, relative to an image folder),
"conversations": [{"from": "human", "value": "<image>\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}``
(see docs/data_format.md). The same loader reads the real LLaVA data and the toy world.

Training batches are padded on the right (labels -100 on padding); generation batches on the left, so that
every row's last prompt token sits at the same position and new tokens are appended in one column.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .prompts import IGNORE_INDEX, IMAGE, PromptError, SampleTooLong, tokenize_conversation


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


# ----------------------------------------------------------------------------- LLaVA records -> examples


class RecordError(ValueError):
    """A record that cannot be used; the message names the record id and, where relevant, the file.
    ``reason`` is a short category used to count skipped records."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


def load_records(path: str | Path) -> list[dict]:
    """Read LLaVA records from a JSON list (``llava_v1_5_mix665k.json``) or a JSON-lines file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    records = json.loads(text)
    if not isinstance(records, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def record_id(record: dict, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


def check_record(record: dict, index: int, image_folder: Path | None) -> None:
    """Structural checks that need no image decoding and no tokenizer; raises ``RecordError`` naming the record."""
    rid = record_id(record, index)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError(f"record {rid}: needs a 'conversations' list", "structure")
    turns = record["conversations"]
    if not turns:
        raise RecordError(f"record {rid}: empty conversation", "structure")
    for i, turn in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
            raise RecordError(f"record {rid}: turn {i} must be {{'from': '{want}', 'value': str}} (roles alternate "
                              f"human, gpt, ...), got {str(turn)[:80]}", "roles")
    if turns[-1]["from"] != "gpt":
        raise RecordError(f"record {rid}: the last turn must be an answer (from 'gpt')", "roles")
    n_markers = sum(t["value"].count(IMAGE) for t in turns)
    image = record.get("image")
    if image is None and n_markers:
        raise RecordError(f"record {rid}: text-only record (no 'image') has {n_markers} {IMAGE} marker(s)",
                          "image marker")
    if image is not None and n_markers != 1:
        raise RecordError(f"record {rid}: an image record needs exactly one {IMAGE} marker, found {n_markers}",
                          "image marker")
    if isinstance(image, str):
        if image_folder is None:
            raise RecordError(f"record {rid}: image {image!r} is a path but no image folder was given", "missing image")
        if not (image_folder / image).is_file():
            raise RecordError(f"record {rid}: image file {image_folder / image} not found", "missing image")


class LlavaDataset(Dataset):
    """LLaVA records -> training examples ``{"input_ids", "labels", "pixel_values" or None, "image_tokens"}``.

    Images are loaded lazily (``image`` is a path under ``image_folder``, a PIL image, or an object with a
    ``load()`` method, as the ``datasets`` adapter gives). ``prepare_image(image)`` turns an image into
    ``{"pixel_values", "image_size", "n_tokens"}`` (``MiniLlava.prepare_image``).

    Bad records: ``on_error="error"`` raises ``RecordError`` naming the record; ``"skip"`` drops it, counts the
    reason in ``self.skipped`` and never does so silently (``summary()``). Structural problems and missing files
    are found when the dataset is built; corrupt images and over-long samples when the example is read (the
    collator then leaves it out of its batch).
    """

    def __init__(self, records: Sequence[dict], tokenizer, image_token_id: int, prepare_image: Callable,
                 image_folder: str | Path | None = None, template: str = "vicuna_v1",
                 max_length: int | None = None, on_error: Literal["error", "skip"] = "error",
                 image_tokens_estimate: int = 576):
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        self.tokenizer, self.image_token_id, self.prepare_image = tokenizer, image_token_id, prepare_image
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.template, self.max_length, self.on_error = template, max_length, on_error
        self.skipped: Counter[str] = Counter()
        self.records = []
        for index, record in enumerate(records):
            try:
                check_record(record, index, self.image_folder)
                self.records.append(record)
            except RecordError as err:
                self._bad(err)
        # Modality-length estimates for the grouped sampler (as the official code: words, + image tokens;
        # negative for text-only records), computed without tokenizing the whole dataset.
        self.lengths = [self._estimate(r, image_tokens_estimate) for r in self.records]

    @staticmethod
    def _estimate(record: dict, image_tokens: int) -> int:
        words = sum(len(t["value"].split()) for t in record["conversations"])
        return words + image_tokens if record.get("image") is not None else -words

    def _bad(self, err: RecordError) -> None:
        if self.on_error == "error":
            raise err
        self.skipped[err.reason] += 1
        self.skipped["total"] += 1

    def summary(self) -> str:
        """A one-line account of what was skipped (empty when nothing was)."""
        if not self.skipped:
            return ""
        reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped.items() if k != "total")
        return f"skipped {self.skipped['total']} bad record(s) ({reasons})"

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if hasattr(image, "load") and not isinstance(image, (str, Path)):
            return image.load().convert("RGB")
        with Image.open(self.image_folder / image) as im:
            return im.convert("RGB")

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        rid = record_id(record, index)
        try:
            image, n_tokens = None, []
            if record.get("image") is not None:
                image = self.prepare_image(self.load_image(record["image"]))
                n_tokens = [image["n_tokens"]]
            sample = tokenize_conversation(record["conversations"], self.tokenizer, self.image_token_id, n_tokens,
                                           self.template, max_length=self.max_length)
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError too
            self._bad(RecordError(f"record {rid}: cannot read image {record['image']!r}: {err}", "corrupt image"))
            return None
        except SampleTooLong as err:
            self._bad(RecordError(f"record {rid}: {err}", "too long"))
            return None
        except PromptError as err:
            self._bad(RecordError(f"record {rid}: {err}", "prompt"))
            return None
        sample["pixel_values"] = image["pixel_values"] if image else None  # (k, 3, S, S): k = 1 or HD cells
        sample["image_size"] = image["image_size"] if image else None
        sample["id"] = rid
        return sample


def collate(samples: Sequence[dict | None], pad_token_id: int) -> dict | None:
    """Right-padded training batch. ``pixel_values`` concatenates the images' pixel tensors in row order
    (n_cells, 3, S, S) and ``image_sizes`` lists their (W, H); both None for a text-only batch.

    Samples the dataset dropped (None) are left out; a batch with nothing left is None.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch = pad_batch(samples, pad_token_id, padding_side="right")
    images = [s for s in samples if s["pixel_values"] is not None]
    batch["pixel_values"] = torch.cat([s["pixel_values"] for s in images]) if images else None
    batch["image_sizes"] = torch.tensor([s["image_size"] for s in images]) if images else None
    return batch


# ----------------------------------------------------------------------------- the grouped sampler


def modality_length_groups(lengths: Sequence[int], group_size: int, generator: torch.Generator,
                           mega_batches: int = 50) -> list[list[int]]:
    """Indices in groups of ``group_size`` (one optimizer step's samples), each all-image or all-text.

    As in LLaVA-1.5's "group by modality length": image samples (length > 0) and text-only samples (length < 0)
    are shuffled separately; each modality is cut into mega-batches of ``mega_batches`` groups, sorted by length
    (longest first) and cut into groups, so the samples of a group have similar lengths and little padding; the
    full groups are shuffled; the two leftover partial groups go last, together (the only group that may mix
    modalities). LLaVA sorts within one global batch only (``mega_batches=1``), which removes little padding at
    small batch sizes; 50 is the mega-batch of transformers' ``LengthGroupedSampler`` (bench/padding.py).
    """
    full, leftover = [], []
    for indices in ([i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]):
        order = [indices[j] for j in torch.randperm(len(indices), generator=generator).tolist()]
        mega = group_size * mega_batches
        by_length = lambda i: -abs(lengths[i])
        order = [i for k in range(0, len(order), mega) for i in sorted(order[k:k + mega], key=by_length)]
        groups = [order[k:k + group_size] for k in range(0, len(order), group_size)]
        if groups and len(groups[-1]) < group_size:
            leftover += groups.pop()
        full += [sorted(g, key=lambda i: -abs(lengths[i])) for g in groups]
    full = [full[j] for j in torch.randperm(len(full), generator=generator).tolist()]
    return full + ([sorted(leftover, key=lambda i: -abs(lengths[i]))] if leftover else [])


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Padding positions / all positions when every batch is padded to its longest sample (``lengths`` as
    ``LlavaDataset.lengths``: the sign marks the modality)."""
    padded = sum(len(b) * max(abs(lengths[i]) for i in b) for b in batches)
    return 1 - sum(abs(lengths[i]) for b in batches for i in b) / padded


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields dataset indices so that each run of ``group_size`` indices is one modality (see above).

    Deterministic for a (seed, epoch) pair: resuming at the same epoch and skipping the batches already done
    gives back the same order. Call ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0):
        self.lengths, self.group_size, self.seed, self.epoch = list(lengths), group_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        for group in modality_length_groups(self.lengths, self.group_size, generator):
            yield from group


# ----------------------------------------------------------------------------- Hugging Face datasets


class HFImage:
    """A lazy reference to the image of row ``index`` of a ``datasets.Dataset`` (decoded on ``load()``)."""

    def __init__(self, dataset, column: str, index: int):
        self.dataset, self.column, self.index = dataset, column, index

    def load(self) -> Image.Image:
        return self.dataset[self.index][self.column]


def records_from_hf_dataset(dataset, image_column: str = "image", conversations_column: str = "conversations",
                            id_column: str | None = "id") -> list[dict]:
    """LLaVA records from a ``datasets.Dataset`` with an image column (``Image()`` feature, may be None) and a
    conversations column (list of ``{"from", "value"}``). Images stay in the dataset until a record is read."""
    columns = [c for c in (conversations_column, id_column) if c]
    text = dataset.select_columns(columns)  # reading text only: no image is decoded here
    has_image = [v is not None for v in dataset.select_columns([image_column]).with_format("arrow")[image_column]
                 .to_pylist()] if image_column in dataset.column_names else [False] * len(dataset)
    records = []
    for index, row in enumerate(text):
        record = {"id": row[id_column] if id_column else str(index), "conversations": row[conversations_column]}
        if has_image[index]:
            record["image"] = HFImage(dataset, image_column, index)
        records.append(record)
    return records


def check_data(data: str | Path, image_folder: str | Path | None, decode: bool = False,
               progress: bool = True) -> dict:
    """Validate every record of a LLaVA data file before a long run starts (``minillava data check``).

    Runs ``check_record`` on each record (structure, roles, image markers, missing images) and opens every image:
    ``Image.verify()`` (fast: headers and structure), or with ``decode=True`` a full decode (slow, also finds
    truncated files). Returns counts and, per problem, the first few messages naming the records.
    """
    from tqdm.auto import tqdm

    records = load_records(data)
    folder = Path(image_folder) if image_folder is not None else None
    problems: Counter = Counter()
    examples: dict[str, list[str]] = {}
    n_image = 0
    for i, record in enumerate(tqdm(records, desc=f"checking {Path(data).name}", disable=not progress)):
        try:
            check_record(record, i, folder)
            if isinstance(record.get("image"), str):
                n_image += 1
                path = folder / record["image"]
                try:
                    with Image.open(path) as im:
                        im.load() if decode else im.verify()
                except Exception as e:  # PIL raises many kinds for broken files
                    raise RecordError(f"record {record_id(record, i)}: image file {path} cannot be read "
                                      f"({type(e).__name__}: {e})", "corrupt image") from e
        except RecordError as e:
            problems[e.reason] += 1
            examples.setdefault(e.reason, [])
            if len(examples[e.reason]) < 5:
                examples[e.reason].append(str(e))
    return {"records": len(records), "image_records": n_image,
            "text_only": sum(isinstance(r, dict) and "image" not in r for r in records),
            "problems": dict(problems), "examples": examples}
