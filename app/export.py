"""`inferl export`: a training checkpoint as a Hugging Face model folder (config.json, safetensors weights,
generation_config.json, tokenizer files) that loads with `AutoModelForCausalLM` / `AutoTokenizer`, without inferl.

The checkpoint holds weights, not the policy's source (`save_hyperparameters` leaves `policy` out), so the run's
config rebuilds the module's skeleton and the checkpoint's `policy.*` weights are loaded into it. Checkpoints: a
`.ckpt` file (one device, DDP), or a sharded directory written by `ModelParallelStrategy` (FSDP2: torch distributed
checkpoint + `meta.pt`), consolidated here in one process. A LoRA (peft) policy is exported merged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from modules.errors import ConfigError

#: files a sharded (distributed) checkpoint directory has: Lightning's metadata and torch's index of the shards
SHARDED_MARKERS = ("meta.pt", ".metadata")
#: module wrappers that insert a name into parameter keys (activation checkpointing, torch.compile)
WRAPPER_INFIXES = ("._checkpoint_wrapped_module", "._orig_mod")
#: model settings export overrides: it writes the policy only, so no frozen reference copy, no separate critic, and
#: no training-only settings
SKELETON_OVERRIDES = {"kl.coef": 0.0, "critic.kind": "none", "critic.model": None,
                      "memory.gradient_checkpointing": False}


class ExportError(ConfigError):
    """An export that cannot be done; the message says why and what to pass instead."""


class ExportSubcommand:
    """Adds `export` to a LightningCLI. It is parsed exactly like `fit` (the run's `--config`, `--model.*` keys,
    `--help`) plus the arguments of `export` below, and runs no Trainer (its accelerator may be absent here)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": set()}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # private, as LightningCLI has no public hook for a subcommand that is not a Trainer method: its loop, where
        # a subcommand's arguments come from the Trainer method of that name; export's come from this class's method
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            klass = ExportSubcommand if name == "export" else self.trainer_class
            description = (getattr(klass, name).__doc__ or "").strip().split("\n")[0]
            subparser_kwargs = {"description": description, **kwargs.get(name, {})}
            self._subcommand_parsers[name] = self._prepare_subcommand_parser(klass, name, **subparser_kwargs)
            subcommands.add_subcommand(name, self._subcommand_parsers[name], help=description)

    def _parse_ckpt_path(self) -> None:
        # private (no public switch): export takes the model's settings from the run's config, not the checkpoint's
        if self.config.get("subcommand") != "export":
            super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        if self.config.get("subcommand") != "export":
            return super().instantiate_classes()
        # the module is built in export() once the checkpoint and the output folder are known to be usable
        self.config_init, self.model, self.datamodule, self.trainer = self.config, None, None, None

    def _run_subcommand(self, subcommand: str) -> None:
        # private (no public hook): LightningCLI runs `trainer.<subcommand>`; export runs without a Trainer
        if subcommand != "export":
            return super()._run_subcommand(subcommand)
        config = self.config["export"]
        self.export(**{key: config[key] for key in self._subcommand_method_arguments["export"]})

    def export(self, output: str, ckpt_path: str | None = None, overwrite: bool = False,
               weights_only: bool | None = None) -> None:
        """Write a checkpoint's policy as a Hugging Face model folder (config, safetensors weights, tokenizer).

        Args:
            output: the folder to write; it loads with AutoModelForCausalLM.from_pretrained and
                AutoTokenizer.from_pretrained.
            ckpt_path: the checkpoint: a .ckpt file, a sharded checkpoint directory (FSDP2), or "last" (the newest
                last*.ckpt in checkpoint.dirpath). The config must be the run's (e.g. the config.yaml saved in its
                log folder): it rebuilds the model that the weights are loaded into.
            overwrite: replace an existing, non-empty output folder (one that holds an exported model).
            weights_only: False unpickles any object in a .ckpt file (only for checkpoints you trust); None or True
                loads tensors and plain types only.
        """
        if ckpt_path is None:
            raise ExportError("export needs --ckpt_path: a .ckpt file, a sharded checkpoint directory or 'last'")
        config = self.config["export"]
        path = resolve_checkpoint(ckpt_path, checkpoint_dirs(config))
        out = check_output(Path(output), overwrite)
        module = build_module(self.model_class, config.model)
        step = load_policy_weights(module, path, weights_only=weights_only is not False)
        export_module(module, out)
        print(f"inferl: exported the policy of {path}{'' if step is None else f' (step {step})'} to {out}")


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(config: Namespace) -> list[str]:
    """The dirpaths of the config's ModelCheckpoint callbacks (the checkpoint section and trainer.callbacks)."""
    dirs = [config.get("checkpoint", {}).get("dirpath")]
    for callback in config.get("trainer", {}).get("callbacks") or []:
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            dirs.append((callback.get("init_args") or {}).get("dirpath"))
    return [str(d) for d in dirs if d]


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SHARDED_MARKERS)


def resolve_checkpoint(ckpt_path: str, dirs: list[str]) -> Path:
    """The checkpoint file or sharded directory `ckpt_path` names; "last" as Lightning resolves it (the newest
    last*.ckpt in the checkpoint callbacks' dirpaths)."""
    if ckpt_path == "last":
        if not dirs:
            raise ExportError("--ckpt_path last looks in checkpoint.dirpath, which the config does not set; "
                              "pass the checkpoint's path")
        found = [p for d in dirs if os.path.isdir(d) for p in Path(d).iterdir()
                 if p.suffix == ".ckpt" and p.name.startswith("last") and (p.is_file() or is_sharded_checkpoint(p))]
        if not found:
            raise ExportError(f"--ckpt_path last: no last*.ckpt in {', '.join(dirs)} (checkpoint.dirpath); is this "
                              "the run's config? Otherwise pass the checkpoint's path")
        return max(found, key=lambda p: p.stat().st_mtime)
    path = Path(ckpt_path)
    if path.is_file() or is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        raise ExportError(f"{path} is a directory but not a sharded checkpoint (no meta.pt or .metadata); pass a "
                          ".ckpt file or a directory written by ModelParallelStrategy")
    raise ExportError(f"{path}: no such checkpoint; pass a .ckpt file, a sharded checkpoint directory or 'last'")


def load_policy_weights(module: torch.nn.Module, path: Path, weights_only: bool = True) -> int | None:
    """Load the checkpoint's `policy.*` tensors into `module.policy` (after checking that names and shapes match
    the config's model exactly); returns the checkpoint's global step."""
    expected = {f"policy.{name}": tensor for name, tensor in module.policy.state_dict().items()}
    if path.is_dir():
        shapes, meta = sharded_shapes(path)
        names = {unwrap(key): key for key in shapes if unwrap(key).startswith("policy.")}  # module key -> saved key
        check_matches(path, expected, {name: shapes[key] for name, key in names.items()})
        loaded = load_sharded(path, {key: expected[name] for name, key in names.items()})
        state = {name: loaded[key] for name, key in names.items()}
        step = meta.get("global_step")
    else:
        checkpoint = read_checkpoint_file(path, weights_only)
        tensors = {unwrap(key): value for key, value in checkpoint["state_dict"].items()}
        state = {key: value for key, value in tensors.items() if key.startswith("policy.")}
        check_matches(path, expected, {key: tuple(value.shape) for key, value in state.items()})
        step = checkpoint.get("global_step")
    module.policy.load_state_dict({key.removeprefix("policy."): value for key, value in state.items()}, strict=True)
    return step


def unwrap(key: str) -> str:
    for infix in WRAPPER_INFIXES:
        key = key.replace(infix, "")
    return key


def read_checkpoint_file(path: Path, weights_only: bool = True) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as error:  # noqa: BLE001 - not a torch file, truncated, or holding objects beyond plain tensors and types
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"{path} cannot be read as a checkpoint ({type(error).__name__}: {first[:200]})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def sharded_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """The model tensors' (global) shapes in a torch distributed checkpoint directory, by module key, and
    Lightning's metadata (meta.pt: global step, loops, callbacks)."""
    try:
        entries = FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as error:  # noqa: BLE001 - any unreadable directory: one line naming it
        raise ExportError(f"{path} cannot be read as a sharded checkpoint ({type(error).__name__}: {error})") from None
    shapes = {key.removeprefix("state_dict."): tuple(entry.size) for key, entry in entries.items()
              if key.startswith("state_dict.") and isinstance(entry, TensorStorageMetadata)}
    meta_file = path / "meta.pt"
    meta = torch.load(meta_file, map_location="cpu", weights_only=True) if meta_file.is_file() else {}
    return shapes, meta


def load_sharded(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors `like` names (saved key -> a tensor of its shape and dtype) from a torch distributed checkpoint,
    consolidated in this process without a process group."""
    state = {key: torch.empty_like(tensor, device="cpu") for key, tensor in like.items()}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process": yes
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        load({"state_dict": state}, checkpoint_id=path)
    return state


def check_matches(path: Path, expected: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint whose policy weights do not fit the config's model, naming a few of the differences."""
    if not found:
        raise ExportError(f"{path} has no policy weights (no 'policy.*' keys in its state_dict): is it an inferl "
                          "checkpoint?")
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(key for key in expected.keys() & found.keys() if tuple(expected[key].shape) != found[key])
    if not (missing or unexpected or reshaped):
        return
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", reshaped)):
        if keys:
            named = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {what} ({named})")
    raise ExportError(f"{path} does not match the config's model: weights {'; '.join(parts)}; pass the config of "
                      "the run that wrote it (--config <log dir>/config.yaml)")


# --------------------------------------------------------------------------------------------- the model folder
def build_module(model_class: type, model_config: Namespace) -> torch.nn.Module:
    """The module skeleton the config's `model` section describes (policy from its source, no reference copy)."""
    model_config = model_config.clone()
    for key, value in SKELETON_OVERRIDES.items():
        if key in model_config:
            model_config[key] = value
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(model_class, "model")
    module = parser.instantiate_classes(parser.parse_object(Namespace(model=model_config))).model
    check_exportable(module.policy)
    return module


def check_exportable(policy: torch.nn.Module) -> None:
    """Refuse a bitsandbytes-quantized policy: its 4-bit / 8-bit weights can be neither merged nor saved plainly."""
    quantized = getattr(policy, "hf_quantizer", None) is not None or any(
        type(m).__module__.startswith("bitsandbytes") for m in policy.modules())
    if quantized:
        raise ExportError("the policy is quantized with bitsandbytes (4-bit / 8-bit) and cannot be exported as a "
                          "merged model; train with an unquantized policy, or save the LoRA adapter and merge it into "
                          "the unquantized base model")


def exportable_policy(policy: torch.nn.Module) -> torch.nn.Module:
    """The policy as a plain transformers model: a LoRA (peft) policy merged into its base weights."""
    peft = sys.modules.get("peft")  # a PeftModel policy means peft is imported already
    if peft is not None and isinstance(policy, peft.PeftModel):
        return policy.merge_and_unload()
    return policy


def export_module(module: torch.nn.Module, output: Path) -> None:
    """Write the module's policy (merged, with the run's generation settings) and tokenizer to `output`, whole or
    not at all: into a temporary folder beside it, then renamed into place."""
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # "Writing model shards": one line of output is enough
    try:
        generation = generation_settings(module)
        policy = exportable_policy(module.policy)
        policy.generation_config = generation
        policy.save_pretrained(partial, safe_serialization=True)
        module.tokenizer.save_pretrained(partial)
        check_tokenizer(module.tokenizer, partial, output)
        replace_folder(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def generation_settings(module: torch.nn.Module):
    """generation_config.json: the policy's, with the run's EOS / pad tokens and its validation sampling settings."""
    policy, tokenizer, sampling = module.policy, module.tokenizer, module.evaluation.sampling
    generation = copy.deepcopy(policy.generation_config) if policy.generation_config else \
        GenerationConfig.from_model_config(policy.config)
    eos = module.eos_token_ids()
    generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.max_new_tokens = sampling.max_new_tokens
    generation._from_model_config = False  # ours: transformers must not rebuild it from config.json
    if sampling.temperature == 0:
        generation.do_sample, generation.temperature, generation.top_p, generation.top_k = False, None, None, None
    else:
        generation.do_sample, generation.temperature = True, sampling.temperature
        generation.top_p, generation.top_k = sampling.top_p, sampling.top_k  # top_k 0: off, as in training
    return generation


def check_tokenizer(tokenizer, folder: Path, output: Path) -> None:
    """Check that AutoTokenizer loads the saved tokenizer as the training one (same ids for the same text). It can
    not for a custom tokenizer on some model types: transformers then builds that type's own tokenizer (e.g.
    Qwen2Tokenizer for model_type qwen2, with its own pre-tokenizer); say so, and how to load it instead."""
    if tokenizes_like(tokenizer, AutoTokenizer.from_pretrained(folder)):
        return
    loaded = PreTrainedTokenizerFast.from_pretrained(folder)
    if not tokenizes_like(tokenizer, loaded):
        raise ExportError(f"the tokenizer saved to {output} does not load back as the training tokenizer "
                          f"({type(tokenizer).__name__}); export it by hand with its save_pretrained")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    auto = type(AutoTokenizer.from_pretrained(folder)).__name__
    print(f"inferl: warning: AutoTokenizer.from_pretrained({str(output)!r}) builds {auto} for model_type "
          f"{model_type}, which tokenizes differently from the training tokenizer; load it with "
          f"PreTrainedTokenizerFast.from_pretrained({str(output)!r})", file=sys.stderr)


def tokenizes_like(reference, tokenizer) -> bool:
    """Same special tokens, chat template and token ids on a text made of the whole vocabulary (first 8192 ids)."""
    if (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, len(tokenizer)) != (
            reference.pad_token_id, reference.eos_token_id, reference.bos_token_id, len(reference)):
        return False
    if getattr(tokenizer, "chat_template", None) != getattr(reference, "chat_template", None):
        return False
    text = reference.decode(list(range(min(len(reference), 8192))), skip_special_tokens=True)
    texts = [text, text[::-1]]
    try:
        texts.append(reference.apply_chat_template([{"role": "user", "content": text[:64]}], tokenize=False,
                                                   add_generation_prompt=True))
    except Exception:  # noqa: BLE001 - no chat template, or one that wants other messages: the texts above still tell
        pass
    return all(reference(t).input_ids == tokenizer(t).input_ids for t in texts)


# --------------------------------------------------------------------------------------------- the output folder
def check_output(output: Path, overwrite: bool) -> Path:
    """Refuse an output that is a file, or a non-empty folder unless --overwrite true (and then only one that holds
    an exported model: overwrite never empties an unrelated folder)."""
    if output.is_file():
        raise ExportError(f"--output {output} is a file; pass a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"--output {output} exists and is not empty; pass --overwrite true to replace it, or "
                              "another folder")
        if not (output / "config.json").is_file():
            raise ExportError(f"--output {output} is not empty and holds no exported model (no config.json); "
                              "--overwrite only replaces an exported model folder: pass another folder")
    return output


def replace_folder(new: Path, output: Path) -> None:
    """Rename `new` to `output`, replacing an existing (empty, or exported-model) folder."""
    if not output.exists():
        os.replace(new, output)
        return
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    os.replace(output, old)
    os.replace(new, output)
    shutil.rmtree(old, ignore_errors=True)
