"""The trainer: what each stage trains, exact resume, recipes, 2-process training, and `minillava run toy`."""

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minillava.cli import main
from minillava.model import MiniLlava
from minillava.toy import toy_recipes
from minillava.toyworld import EVAL_TASKS, write_world
from minillava.trainer import CONNECTOR_FILE, Recipe, load_connector, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), n_train=48, n_eval=4, seed=1, progress=False)


def recipe(world, stage, **kw):
    data = "stage1.json" if stage == 1 else "stage2.json"
    base = dict(stage=stage, data=str(world / data), image_folder=str(world / "images"),
                template="plain" if stage == 1 else "vicuna_v1", max_steps=3, per_device_batch_size=4,
                learning_rate=1e-3, log_every=1, max_length=512)
    return Recipe(**(base | kw))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_stage1_trains_only_the_connector(model, world, tmp_path):
    before = {name: snapshot(getattr(model, name)) for name in ("encoder", "connector", "lm")}
    metrics = train(recipe(world, 1), model, tmp_path, progress=False)
    assert not changed(before["encoder"], model.encoder) and not changed(before["lm"], model.lm)
    assert changed(before["connector"], model.connector) == set(before["connector"])
    assert (tmp_path / CONNECTOR_FILE).exists() and (tmp_path / "loss.png").exists()
    assert len(metrics) == 3 and all(m["loss"] > 0 for m in metrics)
    saved = snapshot(model.connector)  # stage 2 starts from the saved connector
    with torch.no_grad():
        for p in model.connector.parameters():
            p.zero_()
    load_connector(model, tmp_path)
    assert not changed(saved, model.connector)


def test_stage2_trains_connector_and_lm_not_the_vision_tower(model, world, tmp_path):
    before = {name: snapshot(getattr(model, name)) for name in ("encoder", "connector", "lm")}
    train(recipe(world, 2), model, tmp_path, progress=False)
    assert not changed(before["encoder"], model.encoder)
    assert changed(before["connector"], model.connector) and changed(before["lm"], model.lm)
    loaded = MiniLlava.from_pretrained(tmp_path / "model")
    assert not changed(snapshot(model.lm), loaded.lm)


def test_resume_after_interruption_gives_the_same_losses(clip_dir, llm_dir, world, tmp_path):
    def fresh():
        torch.manual_seed(0)
        return MiniLlava.from_backbones(str(clip_dir), str(llm_dir))
    r = recipe(world, 2, max_steps=6, save_every=2, per_device_batch_size=2, gradient_accumulation_steps=2)
    straight = train(r, fresh(), tmp_path / "straight", progress=False)
    train(r, fresh(), tmp_path / "resumed", progress=False, stop_after=3)  # "crash" after step 3; saved at 2
    resumed = train(r, fresh(), tmp_path / "resumed", resume=True, progress=False)
    assert [m["step"] for m in resumed] == list(range(1, 7))
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in straight], abs=1e-5)


def test_gradient_checkpointing_trains_the_same_weights(clip_dir, llm_dir, world, tmp_path):
    """LLaVA-1.5 trains with gradient checkpointing: the recomputed layers must give the same losses and updates
    (a checkpointed LM whose embeddings stopped passing gradients would train different weights)."""
    def trained(checkpointing):
        torch.manual_seed(0)
        model = MiniLlava.from_backbones(str(clip_dir), str(llm_dir))
        metrics = train(recipe(world, 2, gradient_checkpointing=checkpointing), model,
                        tmp_path / str(checkpointing), progress=False)
        return [m["loss"] for m in metrics], model.lm.state_dict()
    (losses, weights), (losses_ckpt, weights_ckpt) = trained(False), trained(True)
    assert losses_ckpt == pytest.approx(losses, abs=1e-5)
    for name, w in weights.items():
        torch.testing.assert_close(weights_ckpt[name], w, atol=1e-5, rtol=1e-5, msg=name)


def test_recipe_yaml_and_unknown_fields(tmp_path):
    (tmp_path / "r.yaml").write_text("stage: 1\nlearning_rate: 0.001\n")
    assert Recipe.from_yaml(tmp_path / "r.yaml").learning_rate == 1e-3
    (tmp_path / "no.yaml").write_text("stage: 1\nmixed_precision: no\n")
    assert Recipe.from_yaml(tmp_path / "no.yaml").mixed_precision == "no"  # not False
    (tmp_path / "bad.yaml").write_text("stage: 1\nlearnig_rate: 0.001\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        Recipe.from_yaml(tmp_path / "bad.yaml")


def test_toy_recipes_are_the_package_yaml_files(tmp_path, monkeypatch):
    """The toy run trains with minillava/recipes/toy-stage{1,2}.yaml (no second copy in code): change a file and
    the toy recipe changes; its data points at the world given."""
    import shutil

    import tomllib

    from minillava import toy

    stage1, stage2 = toy_recipes(tmp_path / "world")
    assert (stage1.stage, stage1.template, stage2.stage, stage2.template) == (1, "plain", 2, "vicuna_v1")
    assert stage2.data == str(tmp_path / "world" / "stage2.json")
    assert stage1.image_folder == str(tmp_path / "world" / "images")
    assert asdict(stage1) == asdict(Recipe.from_yaml(toy.RECIPES / "toy-stage1.yaml", data=stage1.data,
                                                     image_folder=stage1.image_folder))
    edited = tmp_path / "recipes"
    shutil.copytree(toy.RECIPES, edited)
    text, n = re.subn(r"\nlearning_rate: .*", "\nlearning_rate: 5.0e-4", (edited / "toy-stage2.yaml").read_text())
    assert n == 1
    (edited / "toy-stage2.yaml").write_text(text)
    monkeypatch.setattr(toy, "RECIPES", edited)
    assert toy_recipes(tmp_path / "world")[1].learning_rate == 5e-4 != stage2.learning_rate
    # a non-editable install has the files: pyproject's package data names them
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["minillava"]
    shipped = [p.relative_to(ROOT / "minillava").as_posix() for p in (ROOT / "minillava").rglob("*")
               if p.is_file() and (p.parent.name == "recipes" or "toy_backbones" in p.parts)]
    assert shipped and all(any(Path(f).match(pattern) for pattern in patterns) for f in shipped), shipped


def test_two_processes_keep_replicas_equal_and_match_one_process(clip_dir, llm_dir, world, tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1", "--main_process_port", "29517"]
    script = str(ROOT / "tests" / "distributed_train.py")
    args = [str(clip_dir), str(llm_dir), str(world)]
    two = subprocess.run(launch + [script, *args, str(tmp_path / "two"), "2"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, script, *args, str(tmp_path / "one"), "4"], capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # replicas stay in sync
    losses = lambda folder: [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").open()]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=0.05)


def test_text_only_rank_next_to_an_image_rank_does_not_hang(clip_dir, llm_dir, world, tmp_path):
    """One image record and one text-only record, one per process and step: every step one rank has no image,
    so without keeping the connector in its graph DDP would wait forever for the connector's gradients."""
    records = json.loads((world / "stage2.json").read_text())
    pair = [next(r for r in records if "image" in r), next(r for r in records if "image" not in r)]
    (tmp_path / "pair.json").write_text(json.dumps(pair))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1", "--main_process_port", "29518"]
    run = subprocess.run(launch + [str(ROOT / "tests" / "distributed_train.py"), str(clip_dir), str(llm_dir),
                                   str(world), str(tmp_path / "out"), "1", str(tmp_path / "pair.json")],
                         env=env, capture_output=True, text=True, timeout=240)  # a hang fails here
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "out" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_run_toy_fast_end_to_end(tmp_path, toy_cache, monkeypatch, capsys):
    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    main(["run", "toy", "--fast", "--out", str(tmp_path / "run")])
    table = capsys.readouterr().out
    assert "| pope |" in table and "| text |" in table
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Held-out evaluation" in report and (tmp_path / "run" / "stage2" / "loss.png").exists()
    assert (tmp_path / "run" / "examples.png").exists() and "examples.png" in report
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == set(EVAL_TASKS)
    main(["chat", "--model", str(tmp_path / "run"), "--image", str(next(toy_cache.glob("world-*/world.json")).parent
          / "images" / "000000.png"), "--question", "What is it?", "--max-new-tokens", "3"])
    # a second run reuses the cached world and backbones, and must train exactly the same model
    main(["run", "toy", "--fast", "--out", str(tmp_path / "again")])
    first, second = (load_file(tmp_path / run / "stage1" / "connector.safetensors") for run in ("run", "again"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_hd_stage1_trains_and_saves_the_row_end_vector(clip_dir, llm_dir, world, tmp_path):
    from minillava.hd import HDConfig

    torch.manual_seed(0)
    model = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig())
    row_end = model.hd.row_end.detach().clone()
    lm = snapshot(model.lm)
    train(recipe(world, 1, max_steps=2), model, tmp_path, progress=False)
    assert not torch.equal(model.hd.row_end, row_end) and not changed(lm, model.lm)
    trained = model.hd.row_end.detach().clone()
    with torch.no_grad():
        model.hd.row_end.zero_()
    load_connector(model, tmp_path)
    assert torch.equal(model.hd.row_end, trained)


def test_hd_model_starts_from_a_one_view_stage1(model, clip_dir, llm_dir, world, tmp_path):
    """The paper's HD: no extra pretraining at high resolution. The connector comes from the one-view stage 1;
    the row-end vector keeps its initialisation, and stage 2 trains it."""
    from minillava.hd import HDConfig

    train(recipe(world, 1, max_steps=2), model, tmp_path / "stage1", progress=False)  # one view
    torch.manual_seed(0)
    hd = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig())
    row_end = hd.hd.row_end.detach().clone()
    load_connector(hd, tmp_path / "stage1")
    assert not changed(snapshot(model.connector), hd.connector) and torch.equal(hd.hd.row_end, row_end)
    train(recipe(world, 2, max_steps=2), hd, tmp_path / "stage2", progress=False)
    assert not torch.equal(hd.hd.row_end, row_end)


PAPER_RECIPES = {"llava15-7b-stage1": (1, 1e-3, 256, "plain"), "llava15-7b-stage2": (2, 2e-5, 128, "vicuna_v1"),
                 "llava15-13b-stage1": (1, 1e-3, 256, "plain"), "llava15-13b-stage2": (2, 2e-5, 128, "vicuna_v1")}


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_hold_the_reference_numbers(name):
    r = Recipe.from_yaml(ROOT / "configs" / "recipes" / f"{name}.yaml")
    stage, lr, global_batch, template = PAPER_RECIPES[name]
    assert (r.stage, r.learning_rate, r.template, r.warmup_ratio, r.weight_decay) == (stage, lr, template, 0.03, 0.0)
    assert r.per_device_batch_size * r.gradient_accumulation_steps * 8 == global_batch  # on 8 GPUs
    assert r.preprocess == ("crop" if stage == 1 else "pad") and r.epochs == 1 and r.mixed_precision == "bf16"


def test_train_command_runs_both_stages(clip_dir, llm_dir, world, tmp_path):
    common = ["--vision", str(clip_dir), "--llm", str(llm_dir), "--set", f"image_folder={world / 'images'}",
              "--set", "max_steps=2", "--set", "per_device_batch_size=2", "--set", "mixed_precision=no",
              "--set", "gradient_checkpointing=false", "--set", "num_workers=0", "--set", "max_length=512"]
    recipes = ROOT / "configs" / "recipes"
    main(["train", str(recipes / "llava15-7b-stage1.yaml"), "--out", str(tmp_path / "s1"),
          "--set", f"data={world / 'stage1.json'}", *common])
    assert (tmp_path / "s1" / CONNECTOR_FILE).exists()
    with pytest.raises(SystemExit, match="--stage1"):
        main(["train", str(recipes / "llava15-7b-stage2.yaml"), "--out", str(tmp_path / "s2"), *common])
    main(["train", str(recipes / "llava15-7b-stage2.yaml"), "--out", str(tmp_path / "s2"), "--stage1",
          str(tmp_path / "s1"), "--set", f"data={world / 'stage2.json'}", *common])
    model = MiniLlava.from_pretrained(tmp_path / "s2" / "model")
    assert model.config.sources["vision"] == str(clip_dir)
    with pytest.raises(SystemExit, match="key=value"):
        main(["train", str(recipes / "llava15-7b-stage1.yaml"), "--out", str(tmp_path / "x"), "--set", "oops",
              "--vision", str(clip_dir), "--llm", str(llm_dir)])


def test_step_flops_by_hand(model, world):
    from minillava.data import pad_batch
    from minillava.prompts import tokenize_conversation
    from minillava.trainer import matmul_weights, step_flops

    lm, d, layers = model.lm.config, model.lm.config.hidden_size, model.lm.config.num_hidden_layers
    # Llama: q, k, v, o (4 d^2) + gate, up, down (3 d * intermediate) per layer, + the LM head (V d)
    assert matmul_weights(model.lm) == layers * (4 * d * d + 3 * d * lm.intermediate_size) + lm.vocab_size * d
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]
    s = tokenize_conversation(conv, model.tokenizer, model.image_token_id, [model.encoder.num_features])
    batch = pad_batch([s], model.tokenizer.pad_token_id)
    batch["pixel_values"] = torch.zeros(1, 3, 32, 32)
    T = len(s["input_ids"])
    v = model.encoder.tower.config
    per_view = model.encoder.num_patches + 1
    vision = 2 * per_view * (matmul_weights(model.encoder.tower) + 4 * v.num_hidden_layers * v.hidden_size * per_view)
    connector = 6 * model.encoder.num_features * matmul_weights(model.connector)
    lm_per_token = matmul_weights(model.lm) + 4 * layers * d * T
    assert step_flops(model, batch, 2) == pytest.approx(6 * T * lm_per_token + connector + vision)
    assert step_flops(model, batch, 1) == pytest.approx(4 * T * lm_per_token + connector + vision)


def test_metrics_report_mfu(model, world, tmp_path):
    metrics = train(recipe(world, 1, max_steps=2, log_every=1), model, tmp_path / "s1", progress=False)
    assert all(0 < m["mfu"] < 1 for m in metrics)


def test_lora_stage2_trains_adapters_and_merges_to_the_same_logits(clip_dir, llm_dir, world, tmp_path):
    from minillava.trainer import merge_lora

    torch.manual_seed(0)
    model = MiniLlava.from_backbones(str(clip_dir), str(llm_dir))
    base_lm = snapshot(model.lm)
    train(recipe(world, 2, max_steps=3, lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2),
          model, tmp_path / "s2", progress=False)
    assert (tmp_path / "s2" / "adapter" / "adapter_config.json").exists() and not (tmp_path / "s2" / "model").exists()
    lora_weights = {n: p for n, p in model.lm.named_parameters() if "lora_B" in n}
    assert lora_weights and any(p.abs().sum() > 0 for p in lora_weights.values())  # lora_B starts at 0: it trained
    base_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.lm.named_parameters()
                if "lora_" not in n}
    assert all(torch.equal(base_now[n], p) for n, p in base_lm.items())  # the LM's own weights did not move

    s = {"input_ids": torch.tensor([model.tokenizer("<s>USER: hi ASSISTANT:")["input_ids"]])}
    with torch.no_grad():
        adapter_logits = model.eval()(s["input_ids"]).logits
    merged = merge_lora(tmp_path / "s2", tmp_path / "merged")
    loaded = MiniLlava.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(s["input_ids"]).logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert not hasattr(merged.lm, "peft_config")
    with pytest.raises(ValueError, match="stage 2"):
        train(recipe(world, 1, lora_r=4), MiniLlava.from_backbones(str(clip_dir), str(llm_dir)), tmp_path / "x",
              progress=False)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_file_loads(path):
    r = Recipe.from_yaml(path)
    if "lora" in path.stem:
        assert (r.lora_r, r.lora_alpha, r.lora_dropout, r.learning_rate, r.connector_learning_rate) == \
            (128, 256, 0.05, 2e-4, 2e-5)


def test_torch_compile_option_trains_and_saves(model, world, tmp_path):
    # the "eager" backend runs TorchDynamo's graph capture without a C++ toolchain; GPUs use "inductor"
    metrics = train(recipe(world, 2, max_steps=2, torch_compile="eager"), model, tmp_path / "s2", progress=False)
    assert len(metrics) == 2 and all(m["loss"] > 0 for m in metrics)
    MiniLlava.from_pretrained(tmp_path / "s2" / "model")  # same keys as an uncompiled model


def test_stages_in_different_precisions_in_one_process(model, world, tmp_path):
    """A notebook trains stage 1 in fp32 and stage 2 in bf16 without restarting (accelerate keeps one state)."""
    dtypes = []
    hook = model.connector.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    train(recipe(world, 1, mixed_precision="no"), model, tmp_path / "fp32", progress=False)
    stage1, dtypes[:] = set(dtypes), []
    metrics = train(recipe(world, 2, mixed_precision="bf16"), model, tmp_path / "bf16", progress=False)
    hook.remove()
    assert len(metrics) == 3 and all(m["loss"] > 0 for m in metrics)
    assert stage1 == {torch.float32} and set(dtypes) == {torch.bfloat16}  # stage 2 really ran in bf16
    assert json.loads((tmp_path / "bf16" / "recipe.json").read_text())["mixed_precision"] == "bf16"


def test_a_change_of_precision_accelerate_cannot_make_is_named(model, world, tmp_path, monkeypatch):
    """A process whose accelerate state holds bf16 cannot train in fp32: a clear error, before any step."""
    import types

    import minillava.trainer as trainer

    monkeypatch.setattr(trainer, "is_initialized", lambda: True)
    monkeypatch.setattr(trainer, "AcceleratorState", lambda: types.SimpleNamespace(mixed_precision="bf16"))
    with pytest.raises(RuntimeError, match="mixed_precision='bf16'.*new process"):
        train(recipe(world, 1, mixed_precision="no"), model, tmp_path / "fp32", progress=False)
    assert not (tmp_path / "fp32" / "metrics.jsonl").exists()


def test_plan_counts_the_flops_the_trainer_counts(model, world, monkeypatch):
    """`minillava plan` and the trainer's MFU share one accounting: for the test model's own shapes, the plan's
    FLOPs for one sample equal step_flops on a one-sample batch of that length."""
    from minillava import plan as plan_module
    from minillava.data import pad_batch
    from minillava.prompts import tokenize_conversation
    from minillava.trainer import step_flops

    lm, v = model.lm.config, model.encoder.tower.config
    monkeypatch.setitem(plan_module.LLMS, "test-llm", dict(vocab=lm.vocab_size, hidden=lm.hidden_size,
                                                          layers=lm.num_hidden_layers, heads=lm.num_attention_heads,
                                                          intermediate=lm.intermediate_size))
    monkeypatch.setitem(plan_module.VISION, "test-clip", dict(image=v.image_size, patch=v.patch_size,
                                                             hidden=v.hidden_size, layers=v.num_hidden_layers,
                                                             intermediate=v.intermediate_size))
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]
    s = tokenize_conversation(conv, model.tokenizer, model.image_token_id, [model.encoder.num_features])
    batch = pad_batch([s], model.tokenizer.pad_token_id)
    batch["pixel_values"] = torch.zeros(1, 3, v.image_size, v.image_size)
    for stage in (1, 2):
        p = plan_module.plan(Recipe(stage=stage), "test-llm", "test-clip", connector=model.config.connector,
                             samples=1, tokens_per_sample=len(s["input_ids"]), gpus=1, gpu_flops=1.0, mfu=1.0)
        assert p.hours * 3600 == pytest.approx(step_flops(model, batch, stage), rel=1e-9), stage
