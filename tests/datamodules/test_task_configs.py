"""configs/<task>/<objective>.yaml: each parses and validates through the real CLI (`inferl fit --config X
--print_config`, which checks every key and class path without instantiating anything, so the hub model is never
loaded), and its data section builds the real tasks from the local data paths."""

from __future__ import annotations

import sys

import pytest
import yaml
from data_paths import REPO, data_file
from jsonargparse import ArgumentParser

from app.cli import main
from datamodules import PromptDataModule
from datamodules.tasks import GSM8K, MATH, MBPP, HumanEval, StdioCode

CONFIGS = REPO / "configs"
OBJECTIVES = {"mean_reward": "callbacks.MeanReward", "pass_at_k": "callbacks.PassAtK",
              "majority_vote": "callbacks.MajorityVote", "best_of_n": "callbacks.BestOfN"}
MATH_TASKS, CODE_TASKS = ("gsm8k", "math"), ("humaneval", "mbpp", "stdio")
EXPECTED = {task: ["majority_vote", "mean_reward", "pass_at_k"] for task in MATH_TASKS} | {
    task: ["best_of_n", "mean_reward", "pass_at_k"] for task in CODE_TASKS}
TASK_CLASSES = {"gsm8k": (GSM8K, GSM8K), "math": (MATH, MATH), "humaneval": (MBPP, HumanEval), "mbpp": (MBPP, MBPP),
                "stdio": (StdioCode, StdioCode)}
ALL = [(task, objective) for task, objectives in EXPECTED.items() for objective in objectives]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["inferl"])  # the CLI gets its arguments from `args` only


def print_config(args: list[str], capsys) -> dict:
    """`inferl fit ... --print_config`: the resolved config (exit status 0), or a failure with the CLI's error."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    return yaml.safe_load(captured.out)


def test_every_task_has_its_objectives():
    found = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONFIGS.iterdir()
             if d.is_dir() and d.name in EXPECTED}
    assert found == EXPECTED


@pytest.mark.parametrize("task,objective", ALL)
def test_config_parses_and_validates_through_the_cli(task, objective, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the data paths are relative to the working directory, as documented
    path = CONFIGS / task / f"{objective}.yaml"
    printed = print_config(["--config", str(path)], capsys)
    objectives = [c for c in printed["trainer"]["callbacks"] if c["class_path"] in OBJECTIVES.values()]
    assert [c["class_path"] for c in objectives] == [OBJECTIVES[objective]]
    if objective == "best_of_n":
        assert objectives[0]["init_args"]["score"] == "verifier"
    policy = printed["model"]["policy"]
    assert policy["class_path"] == "modules.PretrainedPolicy"
    assert policy["init_args"]["name_or_path"].startswith("Qwen/")  # a hub name, not loaded here
    assert printed["trainer"]["logger"]["init_args"]["name"] == f"{task}_{objective}"
    assert printed["checkpoint"]["dirpath"] == f"runs/{task}_{objective}/checkpoints"
    train_cls, val_cls = TASK_CLASSES[task]
    data = printed["data"]
    assert data["train"]["class_path"].rsplit(".", 1)[-1] == train_cls.__name__
    assert data["val"]["class_path"].rsplit(".", 1)[-1] == val_cls.__name__
    for split in ("train", "val"):
        assert data[split]["init_args"]["path"].startswith("../shared/data/")
    # the config only holds keys a run uses: every key in the file is one the CLI printed back (none unknown)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(printed) and set(raw["model"]) <= set(printed["model"])


@pytest.mark.parametrize("task,objective", [(t, o) for t, o in ALL if o == "mean_reward"])
def test_the_data_section_builds_the_real_tasks(task, objective, monkeypatch):
    """The data section instantiated as the CLI does (jsonargparse, class_path + init_args) from the local data."""
    data_file(*{"gsm8k": ("gsm8k", "train.jsonl"), "math": ("math", "test.jsonl"), "humaneval": ("mbpp", "mbpp.jsonl"),
                "mbpp": ("mbpp", "mbpp.jsonl"), "stdio": ("apps", "selected150.jsonl")}[task])  # a clear failure
    monkeypatch.chdir(REPO)
    config = yaml.safe_load((CONFIGS / task / f"{objective}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_class_arguments(PromptDataModule, "data")
    datamodule = parser.instantiate(parser.parse_object({"data": config["data"]})).data
    train_cls, val_cls = TASK_CLASSES[task]
    assert type(datamodule.train_task) is train_cls and type(datamodule.val_task) is val_cls
    assert len(datamodule.train_task) > 100 and len(datamodule.val_task) >= 164
    if task == "math":  # trained on the test split without MATH-500, validated on MATH-500: no overlap
        assert len(datamodule.train_task) == 4500 and len(datamodule.val_task) == 500
        train_problems = {r.messages[-1]["content"] for r in datamodule.train_task.records}
        assert not train_problems & {r.messages[-1]["content"] for r in datamodule.val_task.records}
    if task == "stdio":
        assert datamodule.val_task.limits.timeout_s == 4.0 and datamodule.val_task.limits.max_total_s == 30.0


def test_a_local_model_copy_is_one_override(capsys, monkeypatch, tmp_path):
    """docs/tasks.md: point name_or_path at a folder written by save_pretrained (parsed, not loaded, here)."""
    monkeypatch.chdir(REPO)
    printed = print_config(["--config", str(CONFIGS / "gsm8k" / "pass_at_k.yaml"),
                            "--model.policy.init_args.name_or_path", str(tmp_path / "Qwen2.5-0.5B-Instruct")], capsys)
    assert printed["model"]["policy"]["init_args"]["name_or_path"] == str(tmp_path / "Qwen2.5-0.5B-Instruct")


def test_a_bad_key_is_rejected(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    config = yaml.safe_load((CONFIGS / "mbpp" / "best_of_n.yaml").read_text())
    config["data"]["train"]["init_args"]["splitt"] = "train"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None) and "splitt" in capsys.readouterr().err


SMOLLM2 = sorted(p.name for p in (CONFIGS / "smollm2").glob("*.yaml"))
SMOLLM2_OBJECTIVES = {"mean_reward": "callbacks.MeanReward", "pass_at_k": "callbacks.PassAtK",
                      "pass_at_k_annealed": "callbacks.PassAtK", "majority_vote": "callbacks.MajorityVote",
                      "best_of_n": "callbacks.BestOfN", "budget": "callbacks.BudgetConstrained",
                      "pass_pow_k": "callbacks.PassPowK", "max_likelihood": "callbacks.MaxLikelihood"}


@pytest.mark.parametrize("name", SMOLLM2)
def test_the_real_model_configs_parse_with_one_objective_each(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    printed = print_config(["--config", str(CONFIGS / "smollm2" / name)], capsys)
    objectives = [c["class_path"] for c in printed["trainer"]["callbacks"] if c["class_path"] in
                  SMOLLM2_OBJECTIVES.values()]
    assert objectives == [SMOLLM2_OBJECTIVES[name.removesuffix(".yaml")]]
    assert printed["model"]["policy"]["init_args"]["name_or_path"] == "models/SmolLM2-135M-Instruct"
    assert printed["data"]["train"]["class_path"] == "datamodules.tasks.ChatArithmetic"
