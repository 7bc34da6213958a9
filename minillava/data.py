"""The data pipeline: LLaVA JSON records -> validated examples -> padded batches, grouped by modality.

A record is ``{"id": ..., "image": "coco/train2017/000000033471.jpg" (optional, relative to an image folder),
"conversations": [{"from": "human", "value": "<image>\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}``
(see docs/data_format.md). The same loader reads the real LLaVA data and the toy world.

Training batches are padded on the right (labels -100 on padding); generation batches on the left, so that
every row's last prompt token sits at the same position and new tokens are appended in one column.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .encoder import to_rgb
from .prompts import IGNORE_INDEX, IMAGE, PromptError, SampleTooLong, check_turns, tokenize_conversation


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
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); LLaVA data files are UTF-8 JSON",
                          "encoding") from e
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})", "json") from e
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", "json") from e
    if not isinstance(records, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def record_id(record: dict, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


# Control tokens of Llama / Vicuna: written as text in a record, a tokenizer would read them as the control token
# itself (an answer holding "</s>" would teach the model to stop there). `data check` looks for these when it
# has no tokenizer; the dataset looks for its tokenizer's own.
LLAMA_CONTROL_TOKENS = ("<s>", "</s>", "<unk>")


def control_tokens(tokenizer) -> list[str]:
    """The special tokens of ``tokenizer`` that a record must not hold as text (all but ``<image>``)."""
    return [t for t in tokenizer.all_special_tokens if t != IMAGE]


def check_record(record: dict, index: int, image_folder: Path | None,
                 forbidden: Sequence[str] = LLAMA_CONTROL_TOKENS) -> None:
    """Checks that need no image decoding and no tokenizer; raises ``RecordError`` naming the record.

    ``forbidden``: control-token strings a turn must not contain as text (``control_tokens(tokenizer)``).
    """
    rid = record_id(record, index)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError(f"record {rid}: needs a 'conversations' list", "structure")
    if not isinstance(record.get("id", ""), (str, int)):
        raise RecordError(f"record {rid}: 'id' must be a string or a number, got {type(record['id']).__name__}",
                          "structure")
    turns = record["conversations"]
    if not turns:
        raise RecordError(f"record {rid}: empty conversation", "structure")
    try:
        check_turns(turns)  # roles alternate human, gpt, ...; it ends on an answer
    except PromptError as e:
        raise RecordError(f"record {rid}: {e}", "roles") from None
    for i, turn in enumerate(turns):
        if turn["from"] == "gpt" and not turn["value"].strip():
            raise RecordError(f"record {rid}: turn {i} is an empty answer (nothing to learn from)", "empty text")
        if bad := [t for t in forbidden if t in turn["value"]]:
            raise RecordError(f"record {rid}: turn {i} holds the control token {bad[0]!r} as text; the tokenizer "
                              "would read it as the token itself", "control token")
    n_markers = sum(t["value"].count(IMAGE) for t in turns)
    image = record.get("image")
    if image is None and n_markers:
        raise RecordError(f"record {rid}: text-only record (no 'image') has {n_markers} {IMAGE} marker(s)",
                          "image marker")
    if image is not None and n_markers != 1:
        raise RecordError(f"record {rid}: an image record needs exactly one {IMAGE} marker, found {n_markers}",
                          "image marker")
    if image is not None and not isinstance(image, (str, Image.Image)) and not hasattr(image, "load"):
        raise RecordError(f"record {rid}: 'image' must be a file path (a string), got {type(image).__name__} "
                          f"{str(image)[:40]!r}", "structure")
    if isinstance(image, str):
        if not image.strip():
            raise RecordError(f"record {rid}: 'image' is an empty path", "missing image")
        if image_folder is None:
            raise RecordError(f"record {rid}: image {image!r} is a path but no image folder was given", "missing image")
        if not (image_folder / image).is_file():
            raise RecordError(f"record {rid}: image file {image_folder / image} not found", "missing image")


def tokenize_record(record: dict, rid: str, tokenizer, image_token_id: int, image_token_counts: Sequence[int],
                    template: str, max_length: int | None) -> dict:
    """``tokenize_conversation`` of a record, its failures as ``RecordError`` naming the record (the dataset and
    ``data check`` share it, so the check finds what training would reject)."""
    try:
        return tokenize_conversation(record["conversations"], tokenizer, image_token_id, image_token_counts,
                                     template, max_length=max_length)
    except SampleTooLong as err:
        raise RecordError(f"record {rid}: {err}", "too long") from err
    except PromptError as err:
        raise RecordError(f"record {rid}: {err}", "prompt") from err
    except (UnicodeError, TypeError, ValueError) as err:  # text the tokenizer cannot encode (lone surrogates, ...)
        raise RecordError(f"record {rid}: the tokenizer rejects its text ({type(err).__name__}: {err})",
                          "text encoding") from err


def open_image(path: Path, decode: bool = True) -> Image.Image | None:
    """Open an image file as RGB (``to_rgb``), with PIL's decompression-bomb guard as an error rather than a
    warning; ``decode=False`` only checks headers and structure (``Image.verify``, fast) and returns None."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if not decode:
                im.verify()
                return None
            return to_rgb(im)


IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning,
                MemoryError)  # what PIL raises for broken files (UnidentifiedImageError is an OSError)


class LlavaDataset(Dataset):
    """LLaVA records -> training examples ``{"input_ids", "labels", "pixel_values" or None, "image_tokens"}``.

    Images are loaded lazily (``image`` is a path under ``image_folder``, a PIL image, or an object with a
    ``load()`` method, as the ``datasets`` adapter gives). ``prepare_image(image)`` turns an image into
    ``{"pixel_values", "image_size", "n_tokens"}`` (``MiniLlava.prepare_image``).

    Bad records: ``on_error="error"`` raises ``RecordError`` naming the record; ``"skip"`` drops it and counts
    the reason, never silently. Structural problems and missing files are found when the dataset is built
    (counted in ``self.skipped``, ``summary()``); corrupt images, text the tokenizer rejects and over-long
    samples when the example is read: ``__getitem__`` then returns a skip marker, which the collator leaves
    out of the batch and lists in ``batch["skipped"]``, and the trainer counts (docs/data_format.md).
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
        forbidden = control_tokens(tokenizer)
        for index, record in enumerate(records):
            try:
                check_record(record, index, self.image_folder, forbidden)
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
        """A one-line account of the records skipped when the dataset was built (empty when none were)."""
        return skip_summary(self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, image) -> Image.Image:
        """The record's image as RGB (``encoder.to_rgb``: the one conversion training, evaluation and ``answer``
        share). PIL's decompression-bomb guard stays on: an image over ``Image.MAX_IMAGE_PIXELS`` is an error."""
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if hasattr(image, "load") and not isinstance(image, (str, Path)):
            return to_rgb(image.load())
        return open_image(self.image_folder / image)

    def __getitem__(self, index: int) -> dict:
        """One training example, or (skip mode) ``{"skipped": reason, "id", "message"}`` for a record that
        cannot be used. The marker travels in the batch (``collate``), so the trainer counts skips made in
        DataLoader worker processes too."""
        record = self.records[index]
        rid = record_id(record, index)
        try:
            try:
                image, n_tokens = None, []
                if record.get("image") is not None:
                    image = self.prepare_image(self.load_image(record["image"]))
                    n_tokens = [image["n_tokens"]]
            except IMAGE_ERRORS as err:
                name = record["image"] if isinstance(record["image"], str) else type(record["image"]).__name__
                raise RecordError(f"record {rid}: cannot read image {name!r}: {type(err).__name__}: {err}",
                                  "corrupt image") from err
            sample = tokenize_record(record, rid, self.tokenizer, self.image_token_id, n_tokens, self.template,
                                     self.max_length)
        except RecordError as err:
            if self.on_error == "error":
                raise
            return {"skipped": err.reason, "id": rid, "message": str(err)}
        sample["pixel_values"] = image["pixel_values"] if image else None  # (k, 3, S, S): k = 1 or HD cells
        sample["image_size"] = image["image_size"] if image else None
        sample["id"] = rid
        return sample


def collate(samples: Sequence[dict], pad_token_id: int) -> dict:
    """Right-padded training batch. ``pixel_values`` concatenates the images' pixel tensors in row order
    (n_cells, 3, S, S) and ``image_sizes`` lists their (W, H); both None for a text-only batch.

    Samples the dataset skipped (``{"skipped": reason, ...}``) are left out and their reasons listed in
    ``batch["skipped"]``; when nothing is left, the batch is only ``{"skipped": [...]}`` (``input_ids`` None).
    """
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        return {"input_ids": None, "skipped": skipped}
    batch = pad_batch(samples, pad_token_id, padding_side="right")
    images = [s for s in samples if s["pixel_values"] is not None]
    batch["pixel_values"] = torch.cat([s["pixel_values"] for s in images]) if images else None
    batch["image_sizes"] = torch.tensor([s["image_size"] for s in images]) if images else None
    batch["skipped"] = skipped
    return batch


def skip_summary(skipped: Counter) -> str:
    """``"skipped 3 bad record(s) (corrupt image: 2, too long: 1)"``, or "" when nothing was skipped."""
    reasons = {k: v for k, v in skipped.items() if k != "total" and v}
    if not reasons:
        return ""
    return f"skipped {sum(reasons.values())} bad record(s) ({', '.join(f'{k}: {v}' for k, v in reasons.items())})"


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


def check_data(data: str | Path, image_folder: str | Path | None, decode: bool = False, progress: bool = True,
               tokenizer=None, template: str = "vicuna_v1", max_length: int | None = None,
               image_tokens: int = 576) -> dict:
    """Validate every record of a LLaVA data file before a long run starts (``minillava data check``).

    Runs ``check_record`` on each record (structure, roles, fields, control tokens, image markers, missing
    images) and opens every image: ``Image.verify()`` (fast: headers and structure), or with ``decode=True`` a
    full decode through ``to_rgb`` (slow, also finds truncated files). With a ``tokenizer`` it also tokenizes
    each record as training would (``image_tokens`` per image, cut at ``max_length``), finding over-long samples
    and text the tokenizer rejects. Returns counts and, per problem, the first few messages naming the records.
    """
    from tqdm.auto import tqdm

    from .prompts import prepare_tokenizer

    records = load_records(data)
    folder = Path(image_folder) if image_folder is not None else None
    forbidden = control_tokens(tokenizer) if tokenizer is not None else LLAMA_CONTROL_TOKENS
    image_token_id = prepare_tokenizer(tokenizer) if tokenizer is not None else None
    problems: Counter = Counter()
    examples: dict[str, list[str]] = {}
    n_image = 0
    for i, record in enumerate(tqdm(records, desc=f"checking {Path(data).name}", disable=not progress)):
        rid = record_id(record, i)
        try:
            check_record(record, i, folder, forbidden)
            if isinstance(record.get("image"), str):
                n_image += 1
                path = folder / record["image"]
                try:
                    open_image(path, decode)
                except IMAGE_ERRORS as e:
                    raise RecordError(f"record {rid}: image file {path} cannot be read "
                                      f"({type(e).__name__}: {e})", "corrupt image") from e
            if tokenizer is not None:
                counts = [image_tokens] if record.get("image") is not None else []
                tokenize_record(record, rid, tokenizer, image_token_id, counts, template, max_length)
        except RecordError as e:
            problems[e.reason] += 1
            examples.setdefault(e.reason, [])
            if len(examples[e.reason]) < 5:
                examples[e.reason].append(str(e))
    return {"records": len(records), "image_records": n_image,
            "text_only": sum(isinstance(r, dict) and "image" not in r for r in records),
            "problems": dict(problems), "examples": examples}
