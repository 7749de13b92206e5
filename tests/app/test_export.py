"""`inferl export`: a training checkpoint (file or sharded directory) as a Hugging Face model folder that loads with
AutoModelForCausalLM / AutoTokenizer and generates as the trained policy; LoRA merged; one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.cli import main
from app.export import ExportError, check_exportable, export_module, load_policy_weights
from modules import InferlModule, TinyPolicy

REPO = Path(__file__).resolve().parents[2]
POLICY = {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64, "seed": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step CLI fit of a tiny demo model: checkpoints in <run>/ckpt, the run's config in <run>/config.yaml."""
    root = tmp_path_factory.mktemp("run")
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["trainer"].update(max_steps=2, enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                             enable_model_summary=False)
    config["trainer"]["logger"]["init_args"].update(save_dir=str(root), name="logs")
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.MeanReward"},
                                      {"class_path": "callbacks.SupervisedWarmStart", "init_args": {"steps": 2}}]
    config["checkpoint"].update(dirpath=str(root / "ckpt"), every_n_train_steps=1)
    config["model"]["policy"]["init_args"] = POLICY
    config["model"].update(group={"size": 4, "sampling": {"max_new_tokens": 6}}, evaluation={"samples": 4, "pass_k": 2})
    config["data"].update(batch_size=4)
    config["data"]["train"]["init_args"]["num_records"] = 64
    (root / "demo.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(root / "demo.yaml")])
    (root / "config.yaml").write_bytes((root / "logs" / "version_0" / "config.yaml").read_bytes())  # the run's
    return root


def export(run: Path, *args: str) -> None:
    main(["export", "--config", str(run / "config.yaml"), *args])


def policy_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {key.removeprefix("policy."): value for key, value in state.items() if key.startswith("policy.")}


def test_export_loads_with_auto_classes_and_generates_as_the_policy(run, tmp_path, capsys):
    out = tmp_path / "model"
    export(run, "--ckpt_path", "last", "--output", str(out))
    assert f"to {out}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".*"))  # the partial folder was renamed into place

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = policy_weights(run / "ckpt" / "last.ckpt")
    state = exported.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], value) for key, value in expected.items())

    # the trained policy: the config's TinyPolicy with the checkpoint's weights
    source = TinyPolicy(**POLICY)
    policy, reference_tokenizer = source.load_model().eval(), source.load_tokenizer()
    policy.load_state_dict(expected)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [reference_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                       add_generation_prompt=True) for q in ("3+4=?", "7*8=?")]
    for prompt in [*prompts, "0123456789+-*=?QA: \n"]:
        assert tokenizer(prompt).input_ids == reference_tokenizer(prompt).input_ids
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<pad>", "</s>")
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        for length in ({}, {"min_new_tokens": 8}):  # to EOS, and 8 tokens past it
            ours = exported.generate(ids, do_sample=False, max_new_tokens=8, **length)
            theirs = policy.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0, eos_token_id=2,
                                     **length)
            assert torch.equal(ours, theirs)

    generation = json.loads((out / "generation_config.json").read_text())  # the run's validation sampling
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["max_new_tokens"]) == (2, 0, 6)
    assert generation["do_sample"] is True and generation["top_k"] == 0


def test_sharded_checkpoint_directory_exports_the_same_weights(run, tmp_path):
    # the layout of Lightning's ModelParallelStrategy (FSDP2): torch distributed checkpoint of {"state_dict",
    # "optimizer_0", ...} plus meta.pt with the rest, here written by one process
    from torch.distributed.checkpoint import save

    checkpoint = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    sharded = tmp_path / "last.ckpt"
    optimizer = {"state": {key: {"exp_avg": torch.zeros_like(value)}
                           for key, value in checkpoint["state_dict"].items()}}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process"
        warnings.simplefilter("ignore")
        save({"state_dict": checkpoint.pop("state_dict"), "optimizer_0": optimizer}, checkpoint_id=sharded)
    checkpoint.pop("optimizer_states")
    torch.save(checkpoint, sharded / "meta.pt")

    export(run, "--ckpt_path", str(sharded), "--output", str(tmp_path / "model"))
    exported = load_file(tmp_path / "model" / "model.safetensors")
    expected = policy_weights(run / "ckpt" / "last.ckpt")
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[key], value) for key, value in expected.items())


def test_lora_policy_is_exported_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_module() -> InferlModule:
        module = InferlModule(policy=TinyPolicy(**POLICY))
        module.policy = get_peft_model(module.policy, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))  # B != 0: merging counts
        return module

    trained = lora_module()
    torch.save({"state_dict": trained.state_dict(), "global_step": 3}, tmp_path / "lora.ckpt")
    module = lora_module()  # a skeleton whose adapter weights differ until the checkpoint is loaded
    assert load_policy_weights(module, tmp_path / "lora.ckpt") == 3
    export_module(module, tmp_path / "model")

    assert not (tmp_path / "model" / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert not any("lora" in key for key in exported.state_dict())
    ids = torch.tensor([[1, 14, 6, 15, 12, 19]])
    with torch.no_grad():
        expected = trained.policy.eval()(ids).logits
        torch.testing.assert_close(exported(ids).logits, expected, atol=1e-5, rtol=1e-4)
        with trained.policy.disable_adapter():
            assert not torch.allclose(expected, trained.policy(ids).logits, atol=1e-3)  # the adapter counts


def test_quantized_policy_is_refused(tmp_path):
    from transformers import BitsAndBytesConfig

    TinyPolicy(**POLICY).load_model().save_pretrained(tmp_path / "base")
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path / "base",
                                                     quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    with pytest.raises(ExportError, match="quantized with bitsandbytes"):
        check_exportable(quantized)
    check_exportable(TinyPolicy(**POLICY).load_model())


def test_qwen2_char_tokenizer_says_how_to_load_it(tmp_path, capsys):
    # transformers gives model_type qwen2 its own Qwen2Tokenizer, which re-tokenizes a character tokenizer
    module = InferlModule(policy=TinyPolicy(**POLICY, architecture="qwen2"))
    export_module(module, tmp_path / "model")
    assert "load it with PreTrainedTokenizerFast.from_pretrained" in capsys.readouterr().err
    from transformers import PreTrainedTokenizerFast

    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "model")
    assert loaded("Q: 3+4=?\nA: 7").input_ids == module.tokenizer("Q: 3+4=?\nA: 7").input_ids


def error_of(run: Path, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export(run, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_errors_are_one_line(run, tmp_path, capsys):
    out = ["--output", str(tmp_path / "model")]
    assert "export needs --ckpt_path" in error_of(run, capsys, *out)
    assert "no/such.ckpt: no such checkpoint" in error_of(run, capsys, "--ckpt_path", "no/such.ckpt", *out)
    (tmp_path / "empty").mkdir()
    assert "no last*.ckpt in" in error_of(run, capsys, "--ckpt_path", "last", "--checkpoint.dirpath",
                                          str(tmp_path / "empty"), *out)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    junk = error_of(run, capsys, "--ckpt_path", str(tmp_path / "junk.ckpt"), *out)
    assert "junk.ckpt cannot be used: the file is truncated or not a checkpoint" in junk
    assert "is a directory but not a sharded checkpoint" in error_of(run, capsys, "--ckpt_path", str(tmp_path), *out)


def test_checkpoint_that_does_not_match_the_config(run, tmp_path, capsys):
    args = ["--ckpt_path", "last", "--output", str(tmp_path / "model")]
    wider = error_of(run, capsys, *args, "--model.policy.init_args.hidden_size", "64")
    assert "does not match the config's model" in wider and "with other shapes" in wider
    assert "pass the config of the run that wrote it" in wider
    deeper = error_of(run, capsys, *args, "--model.policy.init_args.num_layers", "3")
    assert "missing (policy.model.layers.2." in deeper
    assert not (tmp_path / "model").exists()


def test_output_folder_is_replaced_only_with_overwrite(run, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["--ckpt_path", str(run / "ckpt" / "step000001.ckpt"), "--output", str(out)]
    out.mkdir()
    export(run, *args)  # an empty folder is fine
    capsys.readouterr()
    assert "exists and is not empty; pass --overwrite true" in error_of(run, capsys, *args)
    export(run, *args, "--overwrite", "true")
    assert "(step 1)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "holds no exported model" in error_of(run, capsys, "--ckpt_path", "last", "--output", str(other),
                                                 "--overwrite", "true")
    assert (other / "notes.txt").read_text() == "keep me"
