"""The two-stage training loop, on accelerate.

LLaVA-1.5 trains in two stages with the same loop and a different recipe:

| | stage 1: feature alignment | stage 2: visual instruction tuning |
|---|---|---|
| trains | the connector only | the connector and the whole LM |
| data, template | captions, ``plain`` | the instruction mix, ``vicuna_v1`` |
| learning rate | 1e-3 | 2e-5 |

The vision tower is frozen in both. One ``Recipe`` (a dataclass, loadable from YAML under ``configs/recipes``)
says which; ``train(recipe, model)`` runs it. The same code runs the toy recipe on a laptop CPU and the full
recipe on 8 GPUs: ``accelerate launch --config_file <config> -m minillava.cli train ...``.

Global batch = per-device batch x gradient accumulation x processes (the paper: 256 in stage 1, 128 in stage 2).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .checkpoint import CheckpointError, find_checkpoint, save_checkpoint
from .data import LlavaDataset, ModalityLengthGroupedSampler, RecordError, collate, load_records, skip_summary
from .hd import HDConfig
from .model import CONFIG_NAME, MiniLlava, MiniLlavaConfig

CONNECTOR_FILE = "connector.safetensors"  # what stage 1 saves; stage 2 starts from it


@dataclass
class Recipe:
    """Everything one training stage needs. Field names follow the official LLaVA scripts where they exist."""

    stage: int = 2  # 1: train the connector only; 2: the connector and the LM
    data: str = ""  # LLaVA JSON (list of records)
    image_folder: str = ""
    template: str = "vicuna_v1"  # stage 1: "plain"
    preprocess: str = "pad"  # stage 1: "crop" (official), stage 2 and inference: "pad"
    max_length: int = 2048  # tokens, counted with the image tokens
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    connector_learning_rate: float = 0.0  # > 0: a separate learning rate for the connector (LoRA recipes)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "bf16" on GPUs that have it
    gradient_checkpointing: bool = False
    torch_compile: str = ""  # a torch.compile backend for the LM ("inductor" on GPUs); "": eager PyTorch
    group_by_modality_length: bool = True
    on_bad_record: str = "error"  # or "skip" (counted and reported)
    seed: int = 0
    save_every: int = 0  # optimizer steps between resumable checkpoints; 0: only at the end
    log_every: int = 10
    num_workers: int = 0
    peak_flops: float = 0.0  # one device's peak FLOP/s for the MFU column; 0: measure a matmul at the start
    lora_r: int = 0  # > 0 (stage 2): LoRA of this rank on every linear layer of the LM instead of full tuning
    lora_alpha: int = 256
    lora_dropout: float = 0.05

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Recipe:
        """Load a recipe; unknown keys are an error (a typo must not silently fall back to a default)."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown recipe field(s) {unknown}; known: {sorted(known)}")
        return cls(**{key: _typed(key, value, known[key], path) for key, value in values.items()})


def _typed(key: str, value, kind: str, source) -> object:
    """A recipe value as its field's type. YAML 1.1 reads ``1e6`` as a string and a bare ``no`` as False: a
    learning rate must reach the optimizer as a number, and ``mixed_precision: no`` means "no"."""
    if kind == "str":
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        number = float(value) if not isinstance(value, bool) else None
        if number is None or not math.isfinite(number):
            raise ValueError
        if kind == "int":
            if number != int(number):
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError):
        raise ValueError(f"{source}: recipe field {key!r} must be {kind}, got {value!r}") from None


def projector_modules(model: MiniLlava) -> dict[str, torch.nn.Module]:
    """What stage 1 trains and saves: the connector and, for HD, the row-end vector (``hd``)."""
    return {name: m for name, m in (("connector", model.connector), ("hd", model.hd)) if m is not None}


def set_trainable(model: MiniLlava, stage: int) -> list[torch.nn.Parameter]:
    """Freeze what the stage does not train; returns the trainable parameters. With LoRA adapters on the LM
    (``apply_lora``), stage 2 trains the adapters instead of the LM's own weights."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    model.requires_grad_(False)
    for module in projector_modules(model).values():
        module.requires_grad_(True)
    if stage == 2:
        for name, p in model.lm.named_parameters():
            p.requires_grad_(not is_lora(model) or "lora_" in name)
    return [p for p in model.parameters() if p.requires_grad]


def is_lora(model: MiniLlava) -> bool:
    return hasattr(model.lm, "peft_config")


def apply_lora(model: MiniLlava, r: int, alpha: int, dropout: float) -> None:
    """Wrap the LM with LoRA adapters (``peft``) on all its linear layers but the LM head, as LLaVA-1.5's LoRA
    recipe does (r 128, alpha 256, dropout 0.05). ``pip install 'minillava[lora]'``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("LoRA needs peft: pip install 'minillava[lora]' (or pip install peft)") from e
    if not is_lora(model):
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                            task_type="CAUSAL_LM")
        model.lm = get_peft_model(model.lm, config)


def projector_state_dict(model: MiniLlava) -> dict[str, torch.Tensor]:
    """The stage-1 weights keyed ``connector.*`` and ``hd.*`` (what ``connector.safetensors`` holds)."""
    return {f"{name}.{k}": v.detach().contiguous() for name, module in projector_modules(model).items()
            for k, v in module.state_dict().items()}


def load_connector(model: MiniLlava, path: str | Path) -> None:
    """Start from a stage-1 connector: a run folder, its ``connector.safetensors``, or an official .bin.

    An HD model may start from a one-view stage 1 (no ``hd.*`` weights), as the paper trains LLaVA-1.5-HD: "no
    extra pretraining at high resolution". Its row-end vector then keeps its initialisation; stage 2 trains it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONNECTOR_FILE
    if path.suffix == ".safetensors":
        state = load_file(str(path))
        for name, module in projector_modules(model).items():
            prefix = f"{name}."
            weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if name == "hd" and not weights:
                continue  # a one-view stage 1: the row-end vector starts in stage 2
            module.load_state_dict(weights)
    else:
        from .convert import load_official_projector

        model.connector.load_state_dict(load_official_projector(path), strict=True)


def merge_lora(run: str | Path, folder: str | Path, dtype: torch.dtype | None = None) -> MiniLlava:
    """Fold a LoRA stage-2 run (``adapter/`` + ``connector.safetensors`` + ``minillava_config.json``) into its base
    LM and write a plain MiniLlava folder that ``from_pretrained`` loads without peft."""
    from peft import PeftModel

    run = Path(run)
    if not (run / "adapter").is_dir():
        raise FileNotFoundError(f"{run}: no adapter/ folder; is this the output folder of a LoRA stage 2?")
    config = MiniLlavaConfig(**json.loads((run / CONFIG_NAME).read_text()))
    model = MiniLlava.from_backbones(config.sources["vision"], config.sources["llm"], connector=config.connector,
                                     feature_layer=config.feature_layer, select=config.select,
                                     hd=HDConfig(**config.hd) if config.hd else None, dtype=dtype)
    load_connector(model, run)
    model.lm = PeftModel.from_pretrained(model.lm, run / "adapter").merge_and_unload()
    model.config.sources = dict(config.sources, lora=str(run))
    model.save_pretrained(folder)
    return model


def check_finite(losses: list[torch.Tensor], grad_norm, step: int) -> None:
    """Stop at the first optimizer step whose loss or gradient norm is NaN or infinite: its update would
    poison the weights, and the next checkpoint with them."""
    bad = [name for name, value in (("loss", torch.stack(losses) if losses else None), ("gradient norm", grad_norm))
           if value is not None and not bool(torch.isfinite(torch.as_tensor(value)).all())]
    if bad:
        raise FloatingPointError(f"the {' and the '.join(bad)} became non-finite at step {step}; nothing of this "
                                 "step was applied or saved. Lower the learning rate, or use bf16 rather than fp16")


def plot_losses(metrics: list[dict], path: Path, title: str) -> None:
    """Loss (and learning rate) against optimizer step, saved as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    logged = [m for m in metrics if m["loss"] is not None]  # None: every sample of that window was skipped
    ax.plot([m["step"] for m in logged], [m["loss"] for m in logged], label="training loss")
    ax.set(title=title, xlabel="optimizer step", ylabel="cross-entropy loss")
    lr_ax = ax.twinx()
    lr_ax.plot([m["step"] for m in metrics], [m["lr"] for m in metrics], color="tab:orange", alpha=0.5)
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- model FLOPs utilisation (MFU)


def matmul_weights(module: torch.nn.Module) -> int:
    """Weights that multiply activations (Linear and the patch-embedding Conv2d): each costs 2 FLOPs per token."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))


def model_flops(stage: int, tokens: int, length: int, lm_weights: int, lm_layers: int, lm_width: int,
                image_tokens: int, connector_weights: int, views: int = 0, view_tokens: int = 0,
                tower_weights: int = 0, tower_layers: int = 0, tower_width: int = 0) -> float:
    """Model FLOPs of one training step, forward + backward: the numerator of the trainer's MFU and what
    ``plan`` turns into hours.

    ``tokens`` real LM positions (image tokens included) in rows of ``length``; ``*_weights`` count the weights
    that multiply activations (``matmul_weights``); ``views`` images (or HD cells) of ``view_tokens`` patches each.
    Per token, a weight costs 2 FLOPs forward; backward costs 2 more for the input gradient (whenever something
    before it trains) and 2 more for its own gradient (when it trains). So: 6 N for what trains, 4 N for frozen
    layers the gradient passes through (the LM in stage 1), 2 N for the frozen vision tower. Attention adds
    4 d T per token and layer forward (scores and weighted sum over T positions, as in PaLM's MFU), with the
    same multiplier. Embedding lookups are free.
    """
    lm = (6 if stage == 2 else 4) * tokens * (lm_weights + 4 * lm_layers * lm_width * length)
    connector = 6 * image_tokens * connector_weights
    vision = 2 * views * view_tokens * (tower_weights + 4 * tower_layers * tower_width * view_tokens)
    return float(lm + connector + vision)


def step_flops(model: MiniLlava, batch: dict, stage: int) -> float:
    """``model_flops`` of one training step of ``model`` on ``batch``, counted on the real (unpadded) tokens."""
    lm_cfg, tower_cfg = model.lm.config, model.encoder.tower.config
    views = batch["pixel_values"].shape[0] if batch.get("pixel_values") is not None else 0  # images (or HD cells)
    return model_flops(stage, tokens=int(batch["attention_mask"].sum()), length=batch["input_ids"].shape[1],
                       lm_weights=matmul_weights(model.lm), lm_layers=lm_cfg.num_hidden_layers,
                       lm_width=lm_cfg.hidden_size,
                       image_tokens=int((batch["input_ids"] == model.image_token_id).sum()),
                       connector_weights=matmul_weights(model.connector), views=views,
                       view_tokens=model.encoder.num_patches + int(model.encoder.has_cls),
                       tower_weights=matmul_weights(model.encoder.tower), tower_layers=tower_cfg.num_hidden_layers,
                       tower_width=tower_cfg.hidden_size)


_PEAK: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The best FLOP/s of a square matmul on ``device``: the denominator of MFU (measured once per process).

    The matrix grows (256, 512, ...) until one product takes 50 ms (or reaches 2048 on a CPU, 8192 on a GPU),
    so a dtype the processor has no fast path for (bf16 on many CPUs: ~1 GFLOP/s) costs no more than a fast one.
    """
    key = (str(device), dtype)
    if key not in _PEAK:

        def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        n, largest = 256, 2048 if device.type == "cpu" else 8192
        while True:
            a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
            seconds(a, b)  # warm-up: a device's first product also pays for setting up its math library
            if seconds(a, b) > 0.05 or n >= largest:
                break
            n *= 2
        _PEAK[key] = 2 * n**3 / min(seconds(a, b) for _ in range(5))
    return _PEAK[key]


def _accelerator(recipe: Recipe) -> tuple[Accelerator, AbstractContextManager]:
    """The run's ``Accelerator`` and the autocast its forward passes run under.

    accelerate keeps one mixed precision per process and refuses a second. A notebook that trains stage 1 in
    fp32 and then stage 2 in bf16 keeps accelerate's fp32 and autocasts stage 2's forward to bf16 itself (bf16
    needs no loss scaler); other changes of precision need a new process.
    """
    held = AcceleratorState().mixed_precision if is_initialized() else None
    if held in (None, recipe.mixed_precision):
        return Accelerator(gradient_accumulation_steps=recipe.gradient_accumulation_steps,
                           mixed_precision=recipe.mixed_precision), nullcontext()
    if (held, recipe.mixed_precision) == ("no", "bf16"):
        accelerator = Accelerator(gradient_accumulation_steps=recipe.gradient_accumulation_steps)
        return accelerator, torch.autocast(accelerator.device.type, dtype=torch.bfloat16)
    raise RuntimeError(f"this process already trained with mixed_precision={held!r}, and accelerate keeps one "
                       f"precision per process: run the recipe with mixed_precision={recipe.mixed_precision!r} in a "
                       "new process (`minillava train ...`, or restart the notebook's kernel)")


def enable_checkpointing(lm: torch.nn.Module) -> None:
    """Gradient checkpointing on the LM's layers (each layer's input kept, its inside recomputed in the backward):
    ``activation_checkpointing_enable`` in recent transformers, ``gradient_checkpointing_enable`` (its deprecated
    name, to be removed in v6) in the first 5.x releases."""
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable()


def train(recipe: Recipe, model: MiniLlava, output_dir: str | Path, resume: bool = False,
          progress: bool = True, stop_after: int | None = None) -> list[dict]:
    """Run one stage of ``recipe`` on ``model`` and write its outputs to ``output_dir``.

    Writes ``metrics.jsonl`` (one line per logged step), ``loss.png``, and at the end either
    ``connector.safetensors`` (stage 1) or ``model/`` (stage 2, a full ``MiniLlava.save_pretrained`` folder).
    With ``save_every``, ``checkpoint/`` holds a resumable state (``minillava.checkpoint``: written aside and
    swapped in, so a kill never leaves a torn one); ``resume=True`` continues from it and gives the same losses
    as an uninterrupted run, refuses a damaged checkpoint, and says so when there is none.
    ``stop_after`` ends the run after that many optimizer steps (for tests of resuming). Returns the metrics.

    Raises ``FloatingPointError`` at the first optimizer step whose loss or gradient is not finite (before
    anything of that step is saved), and ``RecordError`` when the data holds no usable record.
    """
    output_dir = Path(output_dir)
    accelerator, autocast = _accelerator(recipe)
    set_seed(recipe.seed)
    if recipe.lora_r:
        if recipe.stage != 2:
            raise ValueError("lora_r is for stage 2 (stage 1 trains only the connector)")
        apply_lora(model, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout)
    trainable = set_trainable(model, recipe.stage)
    if recipe.gradient_checkpointing:
        enable_checkpointing(model.lm)
    if recipe.torch_compile:
        model.lm.compile(backend=recipe.torch_compile)  # in place: state-dict keys (and saving) stay the same

    prepare_image, pad_id = model.prepare_image, model.tokenizer.pad_token_id  # before accelerate wraps the model
    dataset = LlavaDataset(load_records(recipe.data), model.tokenizer, model.image_token_id,
                           lambda image: prepare_image(image, recipe.preprocess),
                           image_folder=recipe.image_folder or None, template=recipe.template,
                           max_length=recipe.max_length, on_error=recipe.on_bad_record,
                           image_tokens_estimate=model.encoder.num_features)
    if len(dataset) == 0:
        raise RecordError(f"{recipe.data}: no usable record to train on" + (f" ({dataset.summary()})"
                                                                             if dataset.summary() else ""))
    global_batch = recipe.per_device_batch_size * recipe.gradient_accumulation_steps * accelerator.num_processes
    sampler = ModalityLengthGroupedSampler(dataset.lengths, global_batch, recipe.seed) \
        if recipe.group_by_modality_length else None
    loader = DataLoader(dataset, batch_size=recipe.per_device_batch_size, sampler=sampler,
                        shuffle=sampler is None, num_workers=recipe.num_workers,
                        collate_fn=partial(collate, pad_token_id=pad_id))

    connector_ids = {id(p) for m in projector_modules(model).values() for p in m.parameters()}
    groups = [{"params": [p for p in trainable if id(p) in connector_ids],
               "lr": recipe.connector_learning_rate or recipe.learning_rate},
              {"params": [p for p in trainable if id(p) not in connector_ids], "lr": recipe.learning_rate}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=recipe.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // recipe.gradient_accumulation_steps)
    total_steps = recipe.max_steps or math.ceil(recipe.epochs * steps_per_epoch)
    # The schedule is stepped by hand below (once per optimizer step) and saved as JSON in the trainer state,
    # not registered with accelerate, which would pickle it (and unpickle whatever a checkpoint holds).
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(recipe.warmup_ratio * total_steps), total_steps)

    # Where the run stands: optimizer steps, micro-batches read in this epoch (skipped samples included, so the
    # position in the data is exact after a resume), losses logged, samples skipped while reading.
    step, micro, metrics, skipped = 0, 0, [], Counter()
    checkpoint = output_dir / "checkpoint"
    if resume:
        found = find_checkpoint(checkpoint)
        if found is None:
            accelerator.print(f"--resume: nothing to resume in {checkpoint}; starting at step 0")
        else:
            folder, state = found
            if state.get("recipe", asdict(recipe)) != asdict(recipe):
                changed = sorted(k for k, v in state["recipe"].items() if asdict(recipe).get(k) != v)
                raise CheckpointError(f"cannot resume from {folder}: the recipe changed since ({', '.join(changed)})")
            accelerator.load_state(str(folder))
            scheduler.load_state_dict(state["scheduler"])
            step, micro, metrics = state["step"], state["micro_batches"], state["metrics"]
            skipped = Counter(state["skipped"])
            accelerator.print(f"resuming from {folder} at step {step}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        # metrics.jsonl grows line by line (nothing lost on a crash); a resumed run starts from the checkpoint's
        with open(output_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=f"stage {recipe.stage}",
               disable=not (progress and accelerator.is_local_main_process))
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.mixed_precision, torch.float32)
    peak = recipe.peak_flops or measure_peak_flops(accelerator.device, compute_dtype)
    unwrapped = accelerator.unwrap_model(model)
    last_time, tokens, flops, losses, used = time.perf_counter(), 0, 0.0, [], 0
    while step < total_steps:
        epoch = step // steps_per_epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, micro) if micro else loader
        for batch in batches:
            micro += 1
            skipped.update(batch.pop("skipped"))
            with accelerator.accumulate(model):
                if batch["input_ids"] is not None:  # None: every sample of this micro-batch was skipped
                    with autocast:
                        loss = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                     batch["labels"], image_sizes=batch["image_sizes"]).loss
                    accelerator.backward(loss)
                    losses.append(loss.detach())
                    tokens += int(batch["attention_mask"].sum())
                    flops += step_flops(unwrapped, batch, recipe.stage)
                    used += 1
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, recipe.max_grad_norm)
                    # before the step is taken, let alone saved (under fp16 the loss scaler skips inf steps itself)
                    check_finite(losses, grad_norm if recipe.mixed_precision != "fp16" else None, step + 1)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % recipe.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - last_time
                window = torch.stack(losses) if losses else torch.zeros(0, device=accelerator.device)
                loss_sum, count = accelerator.reduce(torch.stack([window.sum(), torch.tensor(
                    float(len(window)), device=window.device)]), "sum").tolist()
                mean_loss = loss_sum / count if count else None  # None: every sample of the window was skipped
                metrics.append({"step": step, "epoch": epoch, "loss": round(mean_loss, 5) if count else None,
                                "lr": scheduler.get_last_lr()[-1], "grad_norm": round(float(grad_norm), 4),
                                "tokens_per_s": round(tokens * accelerator.num_processes / elapsed, 1),
                                "mfu": round(flops / elapsed / peak, 4)})  # this process's FLOPs / its peak
                if skipped:  # this process's count so far (all processes' in the final summary)
                    metrics[-1]["skipped"] = dict(skipped)
                bar.set_postfix(loss=f"{mean_loss or float('nan'):.3f}",
                                tok_s=f"{metrics[-1]['tokens_per_s']:.0f}", mfu=f"{metrics[-1]['mfu']:.1%}")
                if accelerator.is_main_process:
                    with open(output_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(metrics[-1]) + "\n")
                last_time, tokens, flops, losses = time.perf_counter(), 0, 0.0, []
            bar.update(1)
            epoch_over = step % steps_per_epoch == 0  # the leftover micro-batches of an epoch are not used
            if recipe.save_every and step % recipe.save_every == 0 and step < total_steps:
                save_checkpoint(accelerator, checkpoint, {
                    "step": step, "micro_batches": 0 if epoch_over else micro, "metrics": metrics,
                    "scheduler": scheduler.state_dict(), "skipped": dict(skipped), "recipe": asdict(recipe)})
            if epoch_over or step >= total_steps or (stop_after is not None and step >= stop_after):
                break
        if used == 0:
            raise RecordError(f"{recipe.data}: every sample read was skipped ({skip_summary(skipped)}); "
                              "nothing to train on")
        micro = 0
        if stop_after is not None and step >= stop_after:
            break
    bar.close()

    total_skipped = Counter(dataset.skipped)  # found when the dataset was built (every process saw the same)
    total_skipped.pop("total", None)
    for counts in gather_object([dict(skipped)]):  # found while reading, in each process and worker
        total_skipped.update(counts)
    if accelerator.is_main_process:
        if metrics:
            plot_losses(metrics, output_dir / "loss.png", f"Stage {recipe.stage} training loss")
        if summary := skip_summary(total_skipped):
            print(f"{recipe.data}: {summary}")
            with open(output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"summary": "skipped", "skipped": dict(total_skipped)}) + "\n")
    if step >= total_steps:
        accelerator.wait_for_everyone()
        state = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards: every process must call it
        if accelerator.is_main_process:
            if recipe.stage == 1 or is_lora(unwrapped):
                save_file({k: state[k].detach().contiguous() for k in projector_state_dict(unwrapped)},
                          str(output_dir / CONNECTOR_FILE))
            if is_lora(unwrapped):  # adapters + connector; `minillava merge-lora` makes a plain model of them
                lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
                unwrapped.lm.save_pretrained(output_dir / "adapter", state_dict=lm_state)
                (output_dir / CONFIG_NAME).write_text(json.dumps(asdict(unwrapped.config), indent=2))
            elif recipe.stage == 2:
                unwrapped.save_pretrained(output_dir / "model", state_dict=state)
    unwrapped.eval()
    return metrics
