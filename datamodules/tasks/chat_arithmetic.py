"""Arithmetic for a small pretrained chat model: "What is 37 + 58?" as a chat message, a free-form answer, and a
lenient verifier that reads the final number of the answer.

Made for SmolLM2-135M-Instruct (configs/smollm2/): on two-digit addition it answers in about 35 tokens and is
right about 5% of the time per sample but about 30% of the time in 8 samples (../shared/docs/stack-notes.md):
low pass@1 with high pass@k, the regime where training for pass@k should pay.

Training and validation problems never overlap: every problem (a, op, b) belongs to exactly one split, decided by
a hash of the problem text (`split_of`), so a validation set drawn with any seed is disjoint from any training set.
"""

from __future__ import annotations

import hashlib
import random
import re
from decimal import Decimal, InvalidOperation
from typing import Literal

from datamodules.tasks.base import Task
from datamodules.types import PromptRecord, Verdict

# the numbers of a free-form answer: 68, -3, 1,234, 68.0 (thousands separators and a decimal part allowed)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")

Split = Literal["train", "val"]
Operation = Literal["+", "-", "*"]


def split_of(problem: str, val_fraction: float) -> Split:
    """The split a problem text (e.g. "37+58") belongs to: "val" for a `val_fraction` share of all problems, chosen
    by a hash of the text (stable across runs, seeds and machines), else "train"."""
    bucket = int.from_bytes(hashlib.sha256(problem.encode()).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def final_number(text: str) -> str | None:
    """The last number in `text`, normalised so equal values give equal strings ("1,234" and "1234.0" -> "1234");
    None when the text has no number."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        value = Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def noisy_score(correct: bool, key: str, flip_prob: float) -> float:
    """A cheap, imperfect verifier's score for best-of-N: 1.0 for a correct answer and 0.0 for a wrong one, each
    flipped with probability `flip_prob`, decided by a hash of `key` (the prompt and the completion), so the
    same completion always gets the same score."""
    draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return float(correct != (draw < flip_prob))


class ChatArithmetic(Task):
    """Arithmetic questions as chat messages ("What is 37 + 58?"), answered in free form.

    Problems have operands of up to `digits` digits (0..99 for 2, as `Arithmetic` draws them). A fixed share
    (`val_fraction`) of all problems is reserved for validation by a hash of the problem (`split_of`): `split: train`
    draws only from the rest and `split: val` only from that share, so the two never overlap whatever the seeds.

    Verdict: reward 1.0 when the last number of the answer equals the result (prose and working around it are
    fine); `answer` is that number (the voting key; None when the answer has no number); `score` is a noisy
    verifier for best-of-N: correctness flipped with probability `score_flip_prob`, deterministic per (prompt,
    completion).

    Args:
        split: "train" or "val": which share of the problems to draw from.
        num_records: how many distinct problems to draw from the split's share (capped at its size: about 9000 train and
            1000 val problems for two-digit addition with val_fraction 0.1).
        digits: operands have up to this many digits.
        operations: the operators to draw from.
        val_fraction: the share of all problems reserved for validation.
        seed: which problems are drawn (and in which order).
        score_flip_prob: the probability that the best-of-N score is wrong.
        system_prompt: an optional system message before the question (None: the chat template's default).
    """

    name = "chat_arithmetic"

    def __init__(self, split: Split = "train", num_records: int = 1000, digits: int = 2,
                 operations: list[Operation] | None = None, val_fraction: float = 0.1, seed: int = 0,
                 score_flip_prob: float = 0.25, system_prompt: str | None = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if num_records < 1 or digits < 1:
            raise ValueError(f"num_records and digits must be >= 1, got {num_records} and {digits}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not 0 <= score_flip_prob <= 1:
            raise ValueError(f"score_flip_prob must be in [0, 1], got {score_flip_prob}")
        self.split = split
        self.score_flip_prob = score_flip_prob
        operations = operations or ["+"]
        high = 10 ** digits - 1
        problems = [(a, op, b) for op in operations for a in range(high + 1) for b in range(high + 1)
                    if split_of(f"{a}{op}{b}", val_fraction) == split]
        drawn = random.Random(seed).sample(problems, min(num_records, len(problems)))
        self.records = [self.record(a, op, b, system_prompt) for a, op, b in drawn]

    def record(self, a: int, op: str, b: int, system_prompt: str | None) -> PromptRecord:
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        messages = [{"role": "user", "content": f"What is {a} {op} {b}?"}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return PromptRecord(id=f"{a}{op}{b}", messages=messages, reference=str(result), task=self.name,
                            meta={"a": a, "op": op, "b": b})

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        answer = final_number(completion)
        correct = answer is not None and answer == str(record.reference)
        score = noisy_score(correct, f"{record.id}\x00{completion}", self.score_flip_prob)
        return Verdict(reward=float(correct), answer=answer, score=score)

    def reference_completion(self, record: PromptRecord) -> str:
        meta = record.meta
        return f"{meta['a']} {meta['op']} {meta['b']} = {record.reference}"
