"""`minillava ablate`: format-prompt stripping, the claims logic, and a whole ablation on a tiny budget."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from minillava.ablate import GROUPS, Budget, ablate, claims_table
from minillava.prompts import MULTIPLE_CHOICE, REGION_TO_TEXT, SHORT_ANSWER, strip_format_prompts, with_format_prompt


def test_strip_format_prompts_keeps_the_question_and_region_prompts():
    assert strip_format_prompts(with_format_prompt("<image>\nWhat colour?", SHORT_ANSWER)) == "<image>\nWhat colour?"
    q = "What colour?\nA. red\nB. blue"
    assert strip_format_prompts(with_format_prompt(q, MULTIPLE_CHOICE)) == q
    assert strip_format_prompts(with_format_prompt("[0.1, 0.2, 0.3, 0.4]", REGION_TO_TEXT)).endswith(REGION_TO_TEXT)


def _runs(values):
    return [{"overall": v} for v in values]


def test_claims_verdicts():
    results = {"connector": {"mlp2x_gelu": _runs([0.8, 0.82, 0.81]), "linear": _runs([0.5, 0.52, 0.51])}}
    assert "| reproduced |" in claims_table(results)
    results["connector"]["linear"] = _runs([0.9, 0.92, 0.91])
    assert "| contradicted |" in claims_table(results)
    results["connector"]["linear"] = _runs([0.7, 0.9, 0.8])  # within the noise
    assert "| unclear |" in claims_table(results)
    # one seed has no standard error: no verdict either way, only the sign
    one = {"connector": {"mlp2x_gelu": _runs([0.5]), "linear": _runs([0.9])}}
    assert "| no verdict (1 seed: lower) |" in claims_table(one) and "contradicted" not in claims_table(one)


def test_ablation_end_to_end_on_a_tiny_budget(tmp_path, toy_cache, monkeypatch):
    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    results = ablate(tmp_path / "out", Budget.tiny(), progress=False, jobs=1)  # workers: the test below
    assert set(results) == set(GROUPS)
    for group, variants in results.items():
        assert list(variants) == [v.name for v in GROUPS[group]]
        assert all(len(runs) == 1 and 0 <= runs[0]["overall"] <= 1 for runs in variants.values())
    # the baseline is trained once and shared by the groups it appears in
    assert results["connector"]["mlp2x_gelu"] == results["format"]["with format prompts"]
    assert len(list((tmp_path / "out" / "runs").glob("variant*"))) == 5
    # one stage 1 per connector (and seed), which its variants share
    assert sorted(p.name for p in (tmp_path / "out" / "runs").glob("stage1-*")) == [
        "stage1-linear-seed0", "stage1-mlp2x_gelu-seed0"]
    # the variant without format prompts trained on data without them, answers unchanged
    stripped = next((tmp_path / "out" / "runs").glob("*/stage2_without_format_prompts.json"))
    text = stripped.read_text()
    assert SHORT_ANSWER not in text and MULTIPLE_CHOICE not in text
    report = (tmp_path / "out" / "ablation.md").read_text()
    assert "## resolution" in report and "The paper's claims" in report
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "ablation.json").read_text())["results"] == results


def test_unknown_group_is_named(tmp_path):
    with pytest.raises(ValueError, match="resolutoin"):
        ablate(tmp_path, Budget(seeds=[0]), groups=["resolutoin"])


def test_ablate_quick_command_prints_the_claims(tmp_path, toy_cache, monkeypatch, capsys):
    from minillava.cli import main

    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    monkeypatch.setattr(Budget, "quick", classmethod(lambda cls: Budget.tiny()))  # the suite's reduced budget
    main(["ablate", "--quick", "--out", str(tmp_path / "out"), "--groups", "format", "--jobs", "1"])
    out = capsys.readouterr().out
    assert "format prompts make short prompts get short answers" in out and "no verdict (1 seed: " in out
    assert (tmp_path / "out" / "ablation.md").exists()


def test_runs_in_parallel_processes_give_the_runs_of_one_process(tmp_path, toy_cache, monkeypatch):
    """Two worker processes of one thread each train exactly the models one process of one thread trains: each
    run in its own folder, its own seed, its own variant (a mix-up or a lost seed changes the weights)."""
    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    budget = Budget.tiny()
    budget.seeds = [1]  # not the default 0: a worker that lost its seed would train another model
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ablate(tmp_path / "one", budget, groups=["format"], progress=False, jobs=1)
        torch.set_num_threads(2)  # the two processes get one thread each
        two = ablate(tmp_path / "two", budget, groups=["format"], progress=False, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert one == two

    def weights(folder):
        return {run.name: hashlib.sha256((run / "stage2" / "model" / "model.safetensors").read_bytes()).hexdigest()
                for run in (folder / "runs").glob("variant*")}

    assert weights(tmp_path / "one") == weights(tmp_path / "two")
    assert len(set(weights(tmp_path / "one").values())) == 2  # 2 variants, different models


def test_variants_start_stage2_from_their_connectors_shared_stage1(tmp_path, toy_cache, monkeypatch):
    """Stage 1 is trained once per connector and seed, at one view; every variant with that connector (the HD
    ones too, as the paper trains LLaVA-1.5-HD) starts stage 2 from it."""
    import minillava.ablate as ablate_module
    import minillava.trainer as trainer_module

    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    stage1s, loads = [], []
    run_stage1, load_connector = ablate_module.run_stage1, trainer_module.load_connector
    monkeypatch.setattr(ablate_module, "run_stage1",
                        lambda connector, *args: stage1s.append((connector, args[3])) or run_stage1(connector, *args))
    monkeypatch.setattr(trainer_module, "load_connector",
                        lambda model, path: loads.append((model.hd is not None, Path(path).name))
                        or load_connector(model, path))
    budget = Budget.tiny()
    budget.seeds = [0, 1]
    ablate(tmp_path, budget, groups=["connector", "resolution"], progress=False, jobs=1)
    assert sorted(stage1s) == [("linear", 0), ("linear", 1), ("mlp2x_gelu", 0), ("mlp2x_gelu", 1)]
    assert sorted(loads) == sorted([(False, "stage1-linear-seed0"), (False, "stage1-linear-seed1")]
                                   + [(hd, f"stage1-mlp2x_gelu-seed{s}") for hd in (False, True, True) for s in (0, 1)])
    stage1 = json.loads((tmp_path / "runs" / "stage1-mlp2x_gelu-seed1" / "stage1.json").read_text())
    assert (stage1["stage1"], stage1["seed"], stage1["budget"]["stage1_steps"]) == ("mlp2x_gelu", 1, 2)
    # and each stage trained the budget's steps with the run's seed
    trained1 = json.loads((tmp_path / "runs" / "stage1-mlp2x_gelu-seed1" / "recipe.json").read_text())
    trained2 = json.loads((tmp_path / "runs" / "variant2-seed1" / "stage2" / "recipe.json").read_text())
    assert (trained1["stage"], trained1["max_steps"], trained1["seed"]) == (1, budget.stage1_steps, 1)
    assert (trained2["stage"], trained2["max_steps"], trained2["seed"], trained2["per_device_batch_size"]) == (
        2, budget.stage2_steps, 1, budget.stage2_batch_size)


def test_resume_trains_only_the_runs_that_did_not_finish(tmp_path, toy_cache, monkeypatch):
    import minillava.ablate as ablate_module

    monkeypatch.setenv("MINILLAVA_CACHE", str(toy_cache))
    budget = Budget.tiny()
    first = ablate(tmp_path, budget, groups=["format"], progress=False, jobs=1)
    (tmp_path / "runs" / "variant1-seed0" / "run.json").unlink()  # as if the ablation was killed in this run
    trained, run_variant = [], ablate_module.run_variant  # jobs=1 below: the spy must run in this process
    monkeypatch.setattr(ablate_module, "run_variant",
                        lambda variant, *args: trained.append((variant.name, args[3])) or run_variant(variant, *args))
    stage1s, run_stage1 = [], ablate_module.run_stage1
    monkeypatch.setattr(ablate_module, "run_stage1", lambda *args: stage1s.append(args) or run_stage1(*args))
    assert ablate(tmp_path, budget, groups=["format"], progress=False, jobs=1, resume=True) == first
    assert trained == [("with format prompts", 0)] and stage1s == []  # its stage 1 had finished: kept
    # another budget makes other runs: none of the earlier ones is kept
    trained.clear()
    budget.stage2_steps += 1
    ablate(tmp_path, budget, groups=["format"], progress=False, jobs=1, resume=True)
    assert len(trained) == 2
    # so does another toy recipe (a comment changes the file, and the runs are not taken for the same)
    import shutil

    import minillava.toy as toy_module

    recipes = shutil.copytree(toy_module.RECIPES, tmp_path / "recipes")
    with open(recipes / "toy-stage2.yaml", "a") as f:
        f.write("# edited\n")
    monkeypatch.setattr(toy_module, "RECIPES", recipes)
    trained.clear()
    ablate(tmp_path, budget, groups=["format"], progress=False, jobs=1, resume=True)
    assert len(trained) == 2
