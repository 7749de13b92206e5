"""Where the policy comes from: a Hugging Face model (hub name or local path), or a tiny model built from a
config with a character tokenizer built locally (tests and the demo; no downloads)."""

from __future__ import annotations

import os
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel,
                          PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# A plain chat template for tokenizers that have none: user turns, then the assistant's reply.
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% elif m['role'] == 'system' %}"
    "{{ m['content'] }}\n{% else %}A: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}")


class PolicySource:
    """Builds the policy model and its tokenizer. Subclasses are chosen in YAML by `class_path`."""

    def load_model(self) -> PreTrainedModel:
        raise NotImplementedError

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError


class PretrainedPolicy(PolicySource):
    """A causal LM loaded with `AutoModelForCausalLM.from_pretrained`.

    Args:
        name_or_path: a hub name (needs network or a filled HF cache) or a local folder with config.json and
            weights, e.g. one written by `save_pretrained`.
        tokenizer: where to load the tokenizer from; defaults to `name_or_path`.
        dtype: parameter dtype; "auto" keeps the checkpoint's.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None lets transformers choose.
        revision: a branch, tag or commit of a hub repository.
    """

    def __init__(self, name_or_path: str, tokenizer: str | None = None,
                 dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", trust_remote_code: bool = False,
                 attn_implementation: str | None = None, revision: str | None = None) -> None:
        self.name_or_path = name_or_path
        self.tokenizer = tokenizer or name_or_path
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.revision = revision

    def load_model(self) -> PreTrainedModel:
        kwargs = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        dtype = "auto" if self.dtype == "auto" else DTYPES[self.dtype]
        return AutoModelForCausalLM.from_pretrained(self.name_or_path, dtype=dtype, **kwargs)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer, trust_remote_code=self.trust_remote_code,
                                                  revision=self.revision)
        return with_padding(tokenizer)


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
    """

    def __init__(self, alphabet: str | None = "0123456789+-*=?QA: \n", hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 4, intermediate_size: int = 256, max_position_embeddings: int = 256,
                 architecture: Literal["llama", "qwen2"] = "llama", seed: int = 0) -> None:
        self.alphabet = alphabet
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.architecture = architecture
        self.seed = seed

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
            return AutoModelForCausalLM.from_config(config)


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


def local_path_hint(name_or_path: str) -> str:
    """Why loading failed, in one line, for the common offline case."""
    if os.path.isdir(name_or_path):
        return f"{name_or_path} is a folder but has no loadable model (config.json and weights expected)"
    return (f"{name_or_path!r} is not a local folder, and the hub could not be reached; point "
            f"name_or_path at a local copy (a folder written by save_pretrained)")
