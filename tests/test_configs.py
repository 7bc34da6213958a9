"""The accelerate configs load with accelerate's own loader and name DeepSpeed files that exist."""

import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {c.stem for c in CONFIGS}
    assert {"single_gpu", "ddp_8gpu", "deepspeed_zero2_8gpu", "deepspeed_zero3_8gpu", "deepspeed_zero3_offload_8gpu",
            "fsdp_8gpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_loads_and_points_to_real_files(path):
    config = load_config_from_file(str(path))
    assert config.num_processes == (1 if path.stem == "single_gpu" else 8)
    kind = str(config.distributed_type)
    if "deepspeed" in path.stem:
        assert "DEEPSPEED" in kind
        ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        stage = 2 if "zero2" in path.stem else 3
        assert ds["zero_optimization"]["stage"] == stage
        assert ("offload_optimizer" in ds["zero_optimization"]) == ("offload" in path.stem)
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # the recipe decides, not the file
    elif "fsdp" in path.stem:
        assert "FSDP" in kind
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
        assert config.fsdp_config["fsdp_use_orig_params"] is True  # the frozen vision tower sits in the model
    else:
        assert config.mixed_precision == "bf16"
