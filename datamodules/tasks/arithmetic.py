"""The synthetic task of the embedded demo: integer arithmetic with an exact, programmatic verifier."""

from __future__ import annotations

import random
import re
from typing import Literal

from datamodules.records import load_records
from datamodules.tasks.base import Task
from datamodules.types import PromptRecord, Verdict

_ANSWER = re.compile(r"-?\d+")


class Arithmetic(Task):
    """Questions like "Q: 12+34=?\\nA: " whose answer is the integer result.

    Records are generated from `seed` (the same seed gives the same records), or read from a JSONL file in
    inferl's record schema ({"id", "prompt", "reference"}) when `path` is given.

    Args:
        path: a JSONL file of records to use instead of generated ones.
        num_records: how many problems to generate.
        digits: operands have 1 to `digits` digits.
        operations: the operators to draw from.
        seed: generation seed; use different seeds for training and validation sets.
        verify_timeout_s, max_record_bytes: see `Task` (None: the defaults, 30 s and 8 MiB).
    """

    name = "arithmetic"

    def __init__(self, path: str | None = None, num_records: int = 1000, digits: int = 2,
                 operations: list[Literal["+", "-", "*"]] | None = None, seed: int = 0,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None) -> None:
        self.set_limits(verify_timeout_s, max_record_bytes)
        if path is not None:
            self.records = load_records(path, task=self.name, needs_reference=True,
                                        max_record_bytes=self.max_record_bytes)
            return
        if num_records < 1 or digits < 1:
            raise ValueError(f"num_records and digits must be >= 1, got {num_records} and {digits}")
        operations = operations or ["+"]
        rng = random.Random(seed)
        high = 10 ** digits - 1
        self.records = []
        for i in range(num_records):
            a, b, op = rng.randint(0, high), rng.randint(0, high), rng.choice(operations)
            result = {"+": a + b, "-": a - b, "*": a * b}[op]
            self.records.append(PromptRecord(id=f"arith-{seed}-{i}", prompt=f"Q: {a}{op}{b}=?\nA: ",
                                             reference=str(result), task=self.name))

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        """Reward 1 when the completion is exactly the answer (surrounding whitespace ignored), else 0.
        The parsed answer (first integer) is returned for voting; the score, a cheap and noisy verifier for
        best-of-N, is 1 when that answer's last digit is right (every correct answer and some wrong ones)."""
        parsed = _ANSWER.search(completion)
        answer = parsed.group(0) if parsed else None
        score = float(answer is not None and answer[-1] == str(record.reference)[-1])
        return Verdict(reward=float(completion.strip() == str(record.reference)), answer=answer, score=score)

    def reference_completion(self, record: PromptRecord) -> str:
        return str(record.reference)
