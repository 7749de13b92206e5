"""Where the policy comes from: a Hugging Face model (hub name or local path), or a tiny model built from a
config with a character tokenizer built locally (tests and the demo; no downloads)."""

from __future__ import annotations

import functools
import importlib
import os
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from modules.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: bitsandbytes weight quantization: LLM.int8 ("8bit") or NF4 ("4bit"); the weights are frozen either way
Quantization = Literal["8bit", "4bit"]

# A plain chat template for tokenizers that have none: user turns, then the assistant's reply.
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% elif m['role'] == 'system' %}"
    "{{ m['content'] }}\n{% else %}A: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}")


class PolicySource:
    """Builds the policy model and its tokenizer. Subclasses are chosen in YAML by `class_path`."""

    #: the bitsandbytes quantization `load_model` applies (None: full-precision weights)
    quantization: Quantization | None = None

    def load_model(self) -> PreTrainedModel:
        raise NotImplementedError

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError


class PretrainedPolicy(PolicySource):
    """A causal LM loaded with `AutoModelForCausalLM.from_pretrained`.

    Args:
        name_or_path: a hub name (needs network or a filled HF cache) or a local folder with config.json and
            weights, e.g. one written by `save_pretrained`. With `gguf_file`: the folder holding that file (or None).
        tokenizer: where to load the tokenizer from; defaults to `name_or_path` (the converted folder with
            `gguf_file`).
        dtype: parameter dtype; "auto" keeps the checkpoint's.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None lets transformers choose.
        revision: a branch, tag or commit of a hub repository.
        quantization: load the weights quantized with bitsandbytes, frozen: "4bit" (NF4; with `model.memory.lora` this
            is QLoRA) or "8bit" (LLM.int8); None = as stored. Needs `pip install inferl[bnb]` and `model.memory.lora`
            (quantized weights do not train). Linear layers are quantized; embeddings, norms and the LM head keep
            `dtype`, which is also the 4-bit compute dtype.
        gguf_file: a llama.cpp GGUF file (inside `name_or_path`, as transformers reads it, or a path of its own).
            It is converted once into a plain float32 Hugging Face folder in the models cache
            (~/.cache/inferl/models/<file name>, or $INFERL_MODELS_DIR; `modules.gguf_convert`), which training,
            vLLM and export then read. Needs the `gguf` package.
    """

    def __init__(self, name_or_path: str | None = None, tokenizer: str | None = None,
                 dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", trust_remote_code: bool = False,
                 attn_implementation: str | None = None, revision: str | None = None,
                 quantization: Quantization | None = None, gguf_file: str | None = None) -> None:
        if name_or_path is None and gguf_file is None:
            raise ConfigError("model.policy.init_args.name_or_path is required (a local model folder or a hub name), "
                              "unless model.policy.init_args.gguf_file names a GGUF file")
        self.name_or_path = name_or_path
        self.tokenizer = tokenizer or name_or_path
        self.tokenizer_given = tokenizer is not None
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.revision = revision
        self.quantization = quantization
        self.gguf_file = gguf_file
        self._converted: str | None = None

    def model_folder(self) -> str:
        """What transformers (and vLLM) load: the converted folder with `gguf_file` (converted on first use),
        else `name_or_path` once a local-looking path is checked to exist (one-line ConfigError otherwise)."""
        if self.gguf_file is not None:
            if self._converted is None:
                from modules.gguf_convert import convert_gguf, resolve_gguf

                self._converted = convert_gguf(resolve_gguf(self.name_or_path or "", self.gguf_file))
            return self._converted
        return check_model_path(self.name_or_path, "model.policy.init_args.name_or_path")

    def load_model(self) -> PreTrainedModel:
        path = self.model_folder()
        kwargs = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        dtype = "auto" if self.dtype == "auto" else DTYPES[self.dtype]
        with hub_errors(path, "model.policy.init_args.name_or_path"):
            if self.quantization is not None:
                if dtype == "auto":  # the checkpoint's dtype, which bitsandbytes also needs as its compute dtype
                    stored = getattr(AutoConfig.from_pretrained(path, **kwargs), "dtype", None)
                    dtype = DTYPES.get(str(stored).removeprefix("torch."), torch.float32)
                return load_quantized(path, self.quantization, dtype, **kwargs)
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer_given:
            key = "model.policy.init_args.tokenizer"
            path = check_model_path(self.tokenizer, key, needs_config=False)
        else:
            key, path = "model.policy.init_args.name_or_path", self.model_folder()
        with hub_errors(path, key):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code,
                                                      revision=self.revision)
        return with_padding(tokenizer)


def looks_local(name_or_path: str) -> bool:
    """True for what can only be a local path: it starts with `.`, `/` or `~`, has more than one `/` (a hub name is
    `name` or `owner/name`), or its first part is a folder here (`models/SmolLM2-135M-Instruct` with ./models)."""
    return (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
            or ("/" in name_or_path and os.path.isdir(name_or_path.split("/")[0])))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout_s` ($HF_ENDPOINT if set; never with
    HF_HUB_OFFLINE=1): checked before loading a hub name that is not cached, because offline the hub client retries
    for a minute before failing."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    return tcp_answers(host, 443, timeout_s)


@functools.cache
def tcp_answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether `host:port` accepts a TCP connection within `timeout_s`, name lookup included (which has no timeout
    of its own, so the probe runs in a daemon thread). Answered once a process."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(answer) and answer[0]


def is_cached(name: str) -> bool:
    """Whether the Hugging Face cache holds `name`'s config.json (a hub model used before)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:  # not a valid repository name: transformers reports it (through hub_errors)
        return False


def check_model_path(name_or_path: str, key: str, needs_config: bool = True) -> str:
    """`name_or_path`, after checking that a local-looking path exists and that a hub name is cached or the hub is
    reachable (before transformers sees it: its errors for both are long tracebacks, offline after a minute of
    retries). One-line ConfigError naming `key` otherwise; other hub failures go through `hub_errors`."""
    path = os.path.expanduser(name_or_path)
    if needs_config and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{key}: {name_or_path} is a folder but has no config.json; a model folder holds "
                          "config.json, the weights and the tokenizer files (what save_pretrained writes)")
    if os.path.exists(path):
        return path
    if looks_local(name_or_path):
        raise ConfigError(f"{key}: no model folder at {name_or_path!r} (working directory {os.getcwd()}); "
                          "point it at a folder written by save_pretrained, or convert a GGUF file with "
                          "`python -m modules.gguf_convert FILE.gguf --output FOLDER` (bash scripts/setup.sh makes "
                          "models/SmolLM2-135M-Instruct)")
    if not is_cached(name_or_path) and not hub_reachable():
        raise ConfigError(f"{key}: {name_or_path!r} is not a local folder, not in the Hugging Face cache, and the hub "
                          f"cannot be reached (offline); download it once where there is network (`huggingface-cli "
                          f"download {name_or_path} --local-dir /models/NAME`) and set {key} to that folder")
    return name_or_path


@contextmanager
def hub_errors(name_or_path: str, key: str):
    """Turn transformers' failure to find `name_or_path` (no such folder content, an unknown hub repository, or
    no network) into a one-line ConfigError naming the config key and how to fix it."""
    try:
        yield
    except OSError as error:
        if os.path.isdir(name_or_path):
            raise ConfigError(f"{key}: {name_or_path} is a folder but transformers cannot load it "
                              f"({first_line(error)}); it needs config.json, the weights and tokenizer files "
                              "(save_pretrained output)") from None
        raise ConfigError(f"{key}: {name_or_path!r} is not a local folder and the Hugging Face hub could not provide "
                          f"it (offline, or no such repository: {first_line(error)}); download it once "
                          f"(`huggingface-cli download {name_or_path} --local-dir /models/NAME`) and set {key} to that "
                          "folder") from None


def first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class TinyPolicy(PolicySource):
    """A tiny Llama or Qwen2 model initialised from a seed, with a character- or byte-level tokenizer.

    For tests and the demo: everything is built locally, nothing is downloaded.

    Args:
        alphabet: the characters the tokenizer knows (plus <pad>, <s>, </s>); others raise at encode time.
            None: a byte-level tokenizer (256 byte tokens) that encodes any text, for real tasks.
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads (key/value heads equal).
        intermediate_size: MLP width.
        max_position_embeddings: longest sequence (prompt + completion) in tokens.
        architecture: "llama" or "qwen2".
        seed: initialisation seed (the model is the same for the same seed).
        quantization: "4bit" or "8bit": the built model saved to a temporary folder and loaded back quantized with
            bitsandbytes (as `PretrainedPolicy`'s option; for QLoRA tests and demos). None = float32.
    """

    def __init__(self, alphabet: str | None = "0123456789+-*=?QA: \n", hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 4, intermediate_size: int = 256, max_position_embeddings: int = 256,
                 architecture: Literal["llama", "qwen2"] = "llama", seed: int = 0,
                 quantization: Quantization | None = None) -> None:
        self.alphabet = alphabet
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.architecture = architecture
        self.seed = seed
        self.quantization = quantization

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return build_char_tokenizer(self.alphabet) if self.alphabet is not None else build_byte_tokenizer()

    def load_model(self) -> PreTrainedModel:
        tokenizer = self.load_tokenizer()
        config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[self.architecture]
        config = config_cls(
            vocab_size=len(tokenizer), hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = AutoModelForCausalLM.from_config(config)
        return model if self.quantization is None else quantized_copy(model, self.quantization)


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A real `tokenizers` tokenizer with one token per character of `alphabet`, wrapped for transformers."""
    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: BPE splits into single characters
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real `tokenizers` byte-level tokenizer (GPT-2's byte alphabet, no merges): any text, 259 tokens."""
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


def with_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (the EOS token, as most causal LMs have none) and a chat template."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set one before training")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


@dataclass
class LoraParams:
    """LoRA adapters (peft) on the policy: only the adapters train, the base weights stay frozen, and the KL reference
    can be the same model with its adapters disabled (`model.kl.reference: adapters`, what "auto" picks with LoRA).

    Args:
        rank: r, the rank of each adapter.
        alpha: the adapters' output is scaled by alpha / rank.
        dropout: dropout on the adapters' input in training; keep 0 for RL (with dropout the update's log-probs are
            noisy versions of the rollout's, and the PPO ratio is no longer 1 on-policy).
        target_modules: the layers that get adapters: "all-linear" (every linear layer but the LM head) or module
            names, e.g. [q_proj, k_proj, v_proj, o_proj].
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"model.memory.lora.rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.memory.lora.dropout must be in [0, 1), got {self.dropout}")


def optional_import(name: str, feature: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{feature} needs the `{name}` package: pip install 'inferl[{extra}]'") from error


def is_quantized(model: torch.nn.Module) -> bool:
    """True for a transformers model loaded with bitsandbytes 4-/8-bit weights (also through a peft wrapper)."""
    return bool(getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "is_loaded_in_8bit", False))


def apply_lora(model: PreTrainedModel, params: LoraParams) -> torch.nn.Module:
    """`model` wrapped by peft with LoRA adapters (a PeftModelForCausalLM): only the adapters require grad.

    A quantized model first goes through `peft.prepare_model_for_kbit_training` (QLoRA): every base weight frozen,
    and the remaining half-precision weights (norms, embeddings, LM head) upcast to float32 for stable updates.
    Gradient checkpointing, if wanted, is enabled before (InferlModule does), non-reentrant, so no input-grad hook
    is needed."""
    peft = optional_import("peft", "model.memory.lora", "peft")
    if is_quantized(model):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                             target_modules=params.target_modules, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """transformers' activation (gradient) checkpointing of every decoder layer, non-reentrant (no input-grad hook
    needed, works with frozen bases and LoRA): each layer's activations are recomputed in backward.

    transformers checkpoints only in train mode, and `from_pretrained` returns a model in eval mode, which Lightning
    keeps: the model is put in train mode here (rollouts switch to eval mode and keep their KV cache).
    `modules.logprobs` skips its shared-prompt path under checkpointing."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()


def quantization_device(device: torch.device | None = None) -> str:
    """Where bitsandbytes quantizes while loading: `device`, else the CPU (where a policy is built; Lightning moves
    the model to the training device afterwards, as it does an unquantized one). transformers would otherwise pick
    the current GPU by itself, which puts a reference on another device than its policy."""
    return str(device) if device is not None else "cpu"


def load_quantized(path: str, quantization: Quantization, dtype: torch.dtype, device: torch.device | None = None,
                   **kwargs) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(path)` with bitsandbytes weights (transformers' BitsAndBytesConfig; needs
    bitsandbytes and accelerate): "8bit" LLM.int8 or "4bit" NF4 with `dtype` as compute dtype. Linear layers are
    quantized (not the LM head); the rest keeps `dtype`. See `patch_bnb_layers` for what is added."""
    optional_import("bitsandbytes", f"quantization {quantization!r}", "bnb")
    optional_import("accelerate", f"quantization {quantization!r}", "bnb")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        raise ValueError(f"quantization must be '8bit', '4bit' or None, got {quantization!r}")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=dtype,
                                                 device_map={"": quantization_device(device)}, **kwargs)
    patch_bnb_layers(model)
    return model


def quantized_copy(model: PreTrainedModel, quantization: Quantization) -> PreTrainedModel:
    """A bitsandbytes-quantized copy of `model`'s current weights: saved (save_pretrained) to a temporary folder and
    loaded back with `load_quantized`, on the model's device. The temporary
    folder holds one full-precision copy for the duration (set TMPDIR for large models)."""
    if type(model).__module__.split(".")[0] == "peft":
        raise ValueError("a quantized copy of a peft (LoRA) model is not supported; with LoRA the reference is the "
                         "policy with its adapters disabled (model.kl.reference: adapters)")
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="inferl-quantize-") as folder:
        model.save_pretrained(folder)
        return load_quantized(folder, quantization, model.dtype, device=device)


def patch_bnb_layers(model: torch.nn.Module) -> None:
    """Make a bitsandbytes model's layers safe for training, checkpoints and device moves (idempotent).

    bitsandbytes 0.50 (measured here) needs three fixes:
    - 4-bit on CPUs with AVX512-BF16: the first eval-mode, no-grad forward (a rollout) repacks the weight into a CPU
      inference layout whose matmul has no backward, so later training passes give wrong gradients (no error). The
      repacking is turned off (`support_avx512bf16_for_cpu = False`): the plain dequantize-and-matmul runs.
    - 4-bit: `load_state_dict` cannot load a 4-bit weight's quantization statistics (absmax, quant_map, ...), so a
      Lightning checkpoint with a 4-bit reference or QLoRA base would not resume. A load pre-hook rebuilds the weight
      from the saved statistics (`Params4bit.from_prequantized`, as transformers does when loading).
    - 8-bit: after a forward the int8 weight and its scales live in the layer's matmul state, which neither
      `load_state_dict` (it raises) nor a Lightning device move (`Module._apply`: the state keeps the old tensors)
      updates. A load pre-hook moves them back where loading expects them, and a forward pre-hook re-points the
      state at the layer's current weight and device.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if getattr(module, "_inferl_patched", False):
            continue
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            module._register_load_state_dict_pre_hook(_load_4bit_weight, with_module=True)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            module._register_load_state_dict_pre_hook(_load_8bit_weight, with_module=True)
            module.register_forward_pre_hook(_follow_8bit_weight)
        else:
            continue
        module._inferl_patched = True


def _load_4bit_weight(module, state_dict, prefix, *args) -> None:
    key = prefix + "weight"
    stats = {name[len(key) + 1:]: state_dict.pop(name) for name in list(state_dict) if name.startswith(key + ".")}
    if stats and key in state_dict:
        import bitsandbytes as bnb

        module.weight = bnb.nn.Params4bit.from_prequantized(
            data=state_dict[key], quantized_stats=stats, requires_grad=False, device=module.weight.device,
            module=module)


def _load_8bit_weight(module, state_dict, prefix, *args) -> None:
    weight = module.weight
    if prefix + "SCB" in state_dict and getattr(weight, "SCB", None) is None and module.state.SCB is not None:
        weight.CB, weight.SCB = weight.data, module.state.SCB  # where bitsandbytes' loading copies the scales


def _follow_8bit_weight(module, args) -> None:
    weight = module.weight
    holder = weight if getattr(weight, "CB", None) is not None else module.state
    if holder.CB is not None and (holder.CB.data_ptr() != weight.data_ptr() or holder.CB.device != weight.device):
        holder.CB = weight.data
    if holder.SCB is not None and holder.SCB.device != weight.device:
        holder.SCB = holder.SCB.to(weight.device)
