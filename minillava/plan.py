"""``minillava plan``: parameters, per-GPU memory and time of a recipe before renting the GPUs.

Everything here is arithmetic on the model shapes (no weights are loaded):

- parameters of a Llama LM, a CLIP vision tower and the connector, counted from their configs;
- memory per GPU: bf16 weights (2 bytes per parameter), bf16 gradients (2 per trainable parameter), AdamW
  in fp32 (master weights + two moments: 12 per trainable parameter), divided among the GPUs as the
  strategy shards them, plus activations (with gradient checkpointing: each layer's input is kept and one
  layer's activations are recomputed at a time; Korthikanti et al. 2022, ``s b h (34 + 5 a s / h)`` bytes for a
  layer without recomputation);
- time from FLOPs at an assumed MFU: ``trainer.model_flops``, the accounting of the trainer's own MFU (``6 N``
  per token for trained weights, ``4 N`` for frozen ones gradients pass through, ``2 N`` for the vision tower,
  plus attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from .connector import build_connector
from .trainer import Recipe, matmul_weights, model_flops

# The shapes of the released backbones (config.json of each), so that planning needs no download.
LLMS = {
    "lmsys/vicuna-7b-v1.5": dict(vocab=32000, hidden=4096, layers=32, intermediate=11008, heads=32),
    "lmsys/vicuna-13b-v1.5": dict(vocab=32000, hidden=5120, layers=40, intermediate=13824, heads=40),
}
VISION = {
    "openai/clip-vit-large-patch14-336": dict(image=336, patch=14, hidden=1024, layers=24, intermediate=4096),
}
STRATEGIES = ("ddp", "zero2", "zero3", "zero3_offload", "fsdp")
PAPER_HOURS = {("lmsys/vicuna-7b-v1.5", 1): 3.5, ("lmsys/vicuna-7b-v1.5", 2): 10.0,
               ("lmsys/vicuna-13b-v1.5", 1): 5.5, ("lmsys/vicuna-13b-v1.5", 2): 20.0}  # 8x A100, the README


def llama_parameters(vocab: int, hidden: int, layers: int, intermediate: int, **_) -> int:
    """Embeddings + per layer (q, k, v, o; gate, up, down; two RMSNorms) + final norm + LM head (untied)."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden + vocab * hidden


def clip_vision_parameters(image: int, patch: int, hidden: int, layers: int, intermediate: int, **_) -> int:
    """Patch embedding (no bias) + CLS + positions + pre-LN + layers (attention with biases, MLP, 2 LNs) + post-LN."""
    positions = (image // patch) ** 2 + 1
    embeddings = 3 * patch * patch * hidden + hidden + positions * hidden
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden
    return embeddings + 2 * hidden + layers * per_layer + 2 * hidden


@dataclass
class Plan:
    llm_parameters: int
    vision_parameters: int
    connector_parameters: int
    trainable: int
    memory_gb: dict[str, float]  # per GPU
    hours: float
    paper_hours: float | None
    tokens_per_sample: int
    logits_gb: dict[str, float]  # per GPU, fp32: the LM head at every position vs at the labelled ones only


def plan(recipe: Recipe, llm: str, vision: str = "openai/clip-vit-large-patch14-336", connector: str = "mlp2x_gelu",
         gpus: int = 8, gpu_memory_gb: float = 80, strategy: str = "zero3", samples: int | None = None,
         tokens_per_sample: int | None = None, gpu_flops: float = 312e12, mfu: float = 0.4,
         answer_tokens: int | None = None) -> Plan:
    """The plan of one stage. ``samples`` / ``tokens_per_sample`` default to LCS-558K (stage 1) and the 665K mix
    (stage 2); ``gpu_flops`` is the GPU's dense bf16 peak (A100: 312e12). ``answer_tokens`` (labelled tokens per
    sample; default 20 for a stage-1 caption, 150 for a stage-2 conversation, assumed) sizes the logits the LM
    head computes when it runs only where there is a label (``MiniLlava.forward``)."""
    if llm not in LLMS or vision not in VISION:
        raise ValueError(f"known shapes: LLMs {sorted(LLMS)}, vision {sorted(VISION)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    lm_shape, v_shape = LLMS[llm], VISION[vision]
    n_lm, n_vision = llama_parameters(**lm_shape), clip_vision_parameters(**v_shape)
    connector_module = build_connector(connector, v_shape["hidden"], lm_shape["hidden"])
    n_connector = sum(p.numel() for p in connector_module.parameters())
    # stage 1 trains the connector; stage 2 the connector and the LM; the vision tower never
    trainable = n_connector + (n_lm if recipe.stage == 2 else 0)

    weights = 2 * (n_lm + n_vision + n_connector)
    grads, optimizer = 2 * trainable, 12 * trainable
    if strategy == "zero2":
        grads, optimizer = grads / gpus, optimizer / gpus
    elif strategy in ("zero3", "fsdp"):
        weights, grads, optimizer = weights / gpus, grads / gpus, optimizer / gpus
    elif strategy == "zero3_offload":  # weights and optimizer states live in CPU memory; gradients sharded
        weights, grads, optimizer = weights / gpus, grads / gpus, 0.0
    samples = samples or (558_128 if recipe.stage == 1 else 665_298)
    image_tokens = (v_shape["image"] // v_shape["patch"]) ** 2
    tokens_per_sample = tokens_per_sample or (image_tokens + 60 if recipe.stage == 1 else image_tokens + 400)
    s = min(recipe.max_length, tokens_per_sample)  # activations of a typical batch; the longest can reach max_length
    b, h, a, layers = recipe.per_device_batch_size, lm_shape["hidden"], lm_shape["heads"], lm_shape["layers"]
    full_layer = s * b * h * (34 + 5 * a * s / h)  # bytes, one layer, 16-bit activations
    activations = 2 * s * b * h * layers + full_layer if recipe.gradient_checkpointing else full_layer * layers
    memory = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations}
    memory = {k: v / 1e9 for k, v in memory.items()}
    memory["total"] = sum(memory.values())

    # one sample's step (weights that multiply activations: every Linear, the LM head and the patch embedding)
    lm_matmuls = lm_shape["layers"] * (4 * h * h + 3 * h * lm_shape["intermediate"]) + lm_shape["vocab"] * h
    v_width = v_shape["hidden"]
    tower_matmuls = (3 * v_shape["patch"] ** 2 * v_width
                     + v_shape["layers"] * (4 * v_width ** 2 + 2 * v_width * v_shape["intermediate"]))
    flops = samples * model_flops(recipe.stage, tokens_per_sample, tokens_per_sample, lm_matmuls, layers, h,
                                  image_tokens, matmul_weights(connector_module), views=1, view_tokens=image_tokens + 1,
                                  tower_weights=tower_matmuls, tower_layers=v_shape["layers"],
                                  tower_width=v_shape["hidden"])
    hours = flops * recipe.epochs / (gpus * gpu_flops * mfu) / 3600
    # the LM head's fp32 logits of one micro-batch: every position (transformers' default) vs the labelled ones
    answer_tokens = min(s, answer_tokens or (20 if recipe.stage == 1 else 150))
    logits = {"every position": 4 * b * s * lm_shape["vocab"] / 1e9,
              "labelled only": 4 * b * answer_tokens * lm_shape["vocab"] / 1e9}
    return Plan(n_lm, n_vision, n_connector, trainable, memory, hours, PAPER_HOURS.get((llm, recipe.stage)),
                tokens_per_sample, logits)


def format_plan(p: Plan, recipe: Recipe, gpus: int, gpu_memory_gb: float, strategy: str, mfu: float) -> str:
    fits = "fits" if p.memory_gb["total"] <= gpu_memory_gb else "does NOT fit"
    checkpointing = "on" if recipe.gradient_checkpointing else "off"
    lines = [f"stage {recipe.stage}, {gpus} GPUs of {gpu_memory_gb:g} GB, {strategy}, per-device batch "
             f"{recipe.per_device_batch_size}, gradient checkpointing {checkpointing}",
             f"parameters: LLM {p.llm_parameters:,}, vision {p.vision_parameters:,}, "
             f"connector {p.connector_parameters:,}; trainable {p.trainable:,}",
             "memory per GPU (GB): " + ", ".join(f"{k} {v:.1f}" for k, v in p.memory_gb.items()) + f" -> {fits}"
             f" (activations at {p.tokens_per_sample} tokens per sample)",
             f"time at {mfu:.0%} MFU: {p.hours:.1f} h" + (f" (paper: {p.paper_hours:g} h on 8x A100)"
                                                          if p.paper_hours else ""),
             f"LM head logits per GPU (fp32): {p.logits_gb['every position']:.2f} GB at every position, "
             f"{p.logits_gb['labelled only']:.2f} GB at the labelled ones only (minillava): "
             f"{p.logits_gb['every position'] - p.logits_gb['labelled only']:.2f} GB saved"]
    return "\n".join(lines)
