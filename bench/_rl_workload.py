"""The shared workload of bench/rl_step_vs_trl.py: a 32k-vocabulary BPE tokenizer trained locally on GSM8K and
MATH text, a ~23M-parameter Llama built from a config, both written with save_pretrained, the prompts
(chat-templated GSM8K questions) and the verifier reward. Nothing is downloaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = DATA / "gsm8k" / "train.jsonl"
MATH_TEST = DATA / "math" / "test.jsonl"  # extra tokenizer text: GSM8K alone yields only ~25.6k BPE merges
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def read_rows(path: Path = GSM8K_TRAIN) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gold_answer(row: dict) -> str:
    return row["answer"].split("####")[-1].strip().replace(",", "")


def reward(completion: str, gold: str) -> float:
    """1.0 if the completion contains the gold number; 0.1 if its first number ends in the gold's last digit (a
    shaping term, so that the groups of an untrained model still differ in reward and the update has non-zero
    advantages, as in real training); else 0.0."""
    numbers = [n.replace(",", "") for n in _NUMBER.findall(completion)]
    if gold in numbers:
        return 1.0
    return 0.1 if numbers and numbers[0][-1:] == gold[-1:] else 0.0


def build_tokenizer(texts: list[str], vocab_size: int = 32000):
    """A byte-level BPE (vocabulary `vocab_size`, <pad>/<s>/</s>) trained on `texts`, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from modules.policy import SIMPLE_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1,
                                  show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


def build(folder: str | Path, hidden: int = 256, layers: int = 6, intermediate: int = 1024, heads: int = 4,
          vocab_size: int = 32000, seed: int = 0) -> dict:
    """Write `folder`/model (config + weights) and `folder`/tokenizer (kept apart: a tokenizer folder without
    config.json loads as the tokenizer it is). Returns {"model", "tokenizer", "vocab", "params"}."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = Path(folder)
    rows, math_rows = read_rows(GSM8K_TRAIN), read_rows(MATH_TEST)
    texts = ([r["question"] for r in rows] + [r["answer"] for r in rows] + [r["problem"] for r in math_rows]
             + [r["solution"] for r in math_rows])
    tokenizer = build_tokenizer(texts, vocab_size)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "tokenizer")
    return {"model": str(folder / "model"), "tokenizer": str(folder / "tokenizer"), "vocab": len(tokenizer),
            "params": sum(p.numel() for p in model.parameters())}


def pretrained(folder: str | Path) -> dict:
    """A pretrained model in a plain Hugging Face folder (weights and tokenizer together, e.g. SmolLM2-135M-Instruct
    converted by scripts/setup.sh): {"model", "tokenizer", "vocab", "params"} as `build` returns."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder} has no config.json: run `bash scripts/setup.sh` (it converts SmolLM2-135M-Instruct "
                         "into models/) or pass --model-path")
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # tied embeddings are one parameter, counted once
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return {"model": str(folder), "tokenizer": str(folder), "vocab": len(load_tokenizer(str(folder))),
            "params": params}


def load_tokenizer(path: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def prompts(tokenizer, count: int, start: int = 0) -> list[tuple[str, str]]:
    """(prompt text, gold answer) of GSM8K training questions start..start+count, rendered with the chat template
    (one user turn and the generation prompt): both systems get this same text as a raw prompt."""
    rows = read_rows()[start:start + count]
    return [(tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                           add_generation_prompt=True), gold_answer(r)) for r in rows]
