"""Math word problems with a final answer: GSM8K and MATH (the 5000-problem test split and MATH-500).

Each record's `reference` is the gold answer string; a completion is correct when its extracted final answer
is equivalent to it (`datamodules.math.answers`). Verification runs the cheap checks in-process and the
symbolic ones (math-verify) in a shared pool of worker processes with a per-answer time limit, so a hanging
comparison costs one sample's reward (Verdict(0.0, error="timeout")), never the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from datamodules.math.answers import (
    answer_key,
    check_equivalence,
    check_strategies,
    decide_fast,
    extract_answer,
    find_boxed,
    shared_pool,
)
from datamodules.records import DataError, require
from datamodules.tasks.base import Task, read_rows
from datamodules.types import PromptRecord, Verdict

__all__ = ["GSM8K", "MATH", "MathAnswerTask"]

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class MathAnswerTask(Task):
    """Shared machinery of the final-answer math tasks (see `GSM8K` and `MATH` for the arguments)."""

    name = "math"
    default_instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    default_strategies: tuple[str, ...] = ("boxed", "hash", "answer_is")
    question_label, solution_label = "Problem", "Solution"

    def __init__(self, path: str, chat: bool = True, instruction: str | None = None, few_shot: int = 0,
                 limit: int | None = None, timeout_s: float = 5.0, workers: int | None = None,
                 strategies: list[str] | None = None, hub_split: str = "test", hub_config: str | None = None,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None):
        self.set_limits(verify_timeout_s, max_record_bytes)
        if few_shot < 0:
            raise ValueError(f"{type(self).__name__}: few_shot must be >= 0, got {few_shot}")
        if limit is not None and limit < 1:
            raise ValueError(f"{type(self).__name__}: limit must be >= 1 or null (all records), got {limit}")
        if not timeout_s > 0:
            raise ValueError(f"{type(self).__name__}: timeout_s must be > 0 seconds, got {timeout_s}")
        if workers is not None and workers < 1:
            raise ValueError(f"{type(self).__name__}: workers must be >= 1 or null (automatic), got {workers}")
        self.path = os.fspath(path)
        self.chat = chat
        self.instruction = self.default_instruction if instruction is None else instruction
        self.few_shot = few_shot
        self.limit = limit
        self.timeout_s = float(timeout_s)
        self.workers = workers or _default_workers()
        self.strategies = check_strategies(strategies if strategies is not None else self.default_strategies)
        self.hub_split, self.hub_config = hub_split, hub_config
        self._cache: dict[tuple[str, str], bool] = {}

        rows = self._read_rows(self.path)
        if few_shot >= len(rows):
            raise DataError(f"{self.path}: few_shot={few_shot} needs more than {few_shot} records (the first "
                            f"{few_shot} become examples), but the file has {len(rows)}")
        self.shots = rows[:few_shot]
        rows = rows[few_shot:]
        if limit is not None:
            rows = rows[:limit]
        self.records = [self._make_record(row) for row in rows]

    # -- reading
    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        """(id, question, gold, solution, meta) dicts, one per line; DataError naming file:line on a bad row."""
        raise NotImplementedError

    # -- prompts
    def _user_text(self, question: str) -> str:
        return f"{question}\n\n{self.instruction}" if self.instruction else question

    def _make_record(self, row: dict[str, Any]) -> PromptRecord:
        meta = dict(row["meta"], solution=row["solution"])
        if self.chat:
            messages = []
            for shot in self.shots:
                messages.append({"role": "user", "content": self._user_text(shot["question"])})
                messages.append({"role": "assistant", "content": shot["solution"]})
            messages.append({"role": "user", "content": self._user_text(row["question"])})
            return PromptRecord(id=row["id"], messages=messages, reference=row["gold"], task=self.name, meta=meta,
                                source=row.get("source", ""))
        q, a = self.question_label, self.solution_label
        parts = [self.instruction + "\n\n"] if self.instruction else []
        parts += [f"{q}: {s['question']}\n{a}: {s['solution']}\n\n" for s in self.shots]
        parts.append(f"{q}: {row['question']}\n{a}:")
        return PromptRecord(id=row["id"], prompt="".join(parts), reference=row["gold"], task=self.name, meta=meta,
                            source=row.get("source", ""))

    def reference_completion(self, record: PromptRecord) -> str | None:
        """The dataset's worked solution, whose final answer the default strategies extract."""
        return record.meta.get("solution")

    # -- verification
    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        """Verdict(reward 1.0 if the final answer is equivalent to the gold answer else 0.0, answer = its voting
        key or None when no answer was found, error on a failure or "timeout")."""
        return self.verify_batch([record], [completion])[0]

    def verify_batch(self, records: Sequence[PromptRecord], completions: Sequence[str]) -> list[Verdict]:
        """Verdicts for each (record, completion): key checks in-process, the rest in the worker pool, in
        parallel, each with a `timeout_s` limit. Never raises for a bad completion or a hang."""
        if len(records) != len(completions):
            raise ValueError(f"verify_batch: {len(records)} records but {len(completions)} completions")
        verdicts: list[Verdict | None] = [None] * len(records)
        pending: dict[tuple[str, str], list[tuple[int, str | None]]] = {}
        for i, (record, completion) in enumerate(zip(records, completions)):
            try:
                gold = record.reference
                if not isinstance(gold, str):
                    raise TypeError(f"record {record.id}: reference should be the gold answer string, got "
                                    f"{type(gold).__name__}")
                pred = extract_answer(completion, self.strategies)
                if pred is None:
                    verdicts[i] = Verdict(reward=0.0, answer=None)
                    continue
                key = answer_key(pred) or None
                decided = self._cache.get((gold, pred))
                if decided is None:
                    decided = decide_fast(gold, pred)
                if decided is not None:
                    verdicts[i] = Verdict(reward=1.0 if decided else 0.0, answer=key)
                else:
                    pending.setdefault((gold, pred), []).append((i, key))
            except Exception as e:  # noqa: BLE001 - one bad sample must not take the batch down
                verdicts[i] = Verdict(reward=0.0, answer=None, error=f"{type(e).__name__}: {e}"[:500])
        if pending:
            jobs = list(pending)
            outcomes = shared_pool(self.workers).map(check_equivalence, jobs, timeout_s=self.timeout_s)
            if len(self._cache) > 200_000:
                self._cache.clear()
            for job, out in zip(jobs, outcomes):
                if out.ok:
                    self._cache[job] = bool(out.value)
                for i, key in pending[job]:
                    if out.ok:
                        verdicts[i] = Verdict(reward=1.0 if out.value else 0.0, answer=key)
                    else:
                        verdicts[i] = Verdict(reward=0.0, answer=key, error=out.error)
        return [v if v is not None else Verdict(0.0, error="not verified") for v in verdicts]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


class GSM8K(MathAnswerTask):
    """GSM8K grade-school word problems (JSON Lines with `question` and `answer`, whose last line is `#### N`).

    The prompt asks for the reasoning and a last line `#### <number>`, the dataset's own format, so the worked
    solutions serve as few-shot examples and supervised targets unchanged. Verification accepts, in order, a
    `#### N` line, a `\\boxed{N}`, "the answer is N", and otherwise the last number in the completion
    (set `strategies` to be stricter). The gold answer is the number after `####` with thousands separators
    removed; answers compare as exact numbers (`1,000` = `1000.0`; `$`, units and `%` are ignored).

    Args:
        path: a GSM8K JSON Lines file (e.g. ../shared/data/gsm8k/test.jsonl).
        chat: give records chat `messages` (a user turn; few-shot examples as earlier user/assistant turns)
            rather than a raw `prompt` ("Question: ...\\nAnswer:" blocks) for base models.
        instruction: text added after each question; None for the default ("... write the final answer as
            `#### <number>`"), "" for none.
        few_shot: number of worked examples put before each question, taken from the first records of the
            file (which are then excluded from the records).
        limit: keep only the first `limit` records (after the few-shot ones); None for all.
        timeout_s: time limit in seconds for checking one answer; a timeout gives reward 0 with error "timeout".
        workers: verifier worker processes (shared between tasks); None for min(4, CPU count).
        strategies: answer extraction strategies in order of preference, from "hash", "boxed", "answer_is",
            "last_number"; None for all four in that order.
        hub_split, hub_config: the split and configuration to load when `path` is a hub dataset name (e.g.
            path openai/gsm8k, hub_config main, hub_split train) and the `datasets` package is installed.
        verify_timeout_s, max_record_bytes: the `Task` settings (None: 30 s per completion, 8 MiB per line).
    """

    name = "gsm8k"
    default_instruction = ("Solve the problem step by step. On the last line, write the final answer as "
                           "\"#### <number>\".")
    default_strategies = ("hash", "boxed", "answer_is", "last_number")
    question_label, solution_label = "Question", "Answer"

    def __init__(self, path: str, chat: bool = True, instruction: str | None = None, few_shot: int = 0,
                 limit: int | None = None, timeout_s: float = 5.0, workers: int | None = None,
                 strategies: list[str] | None = None, hub_split: str = "test", hub_config: str | None = None,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None):
        super().__init__(path, chat=chat, instruction=instruction, few_shot=few_shot, limit=limit,
                         timeout_s=timeout_s, workers=workers, strategies=strategies, hub_split=hub_split,
                         hub_config=hub_config, verify_timeout_s=verify_timeout_s, max_record_bytes=max_record_bytes)

    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        rows = []
        for lineno, obj in read_rows(path, self.hub_split, self.hub_config, self.max_record_bytes):
            if "problem" in obj and "question" not in obj:
                raise DataError(f"{path}:{lineno}: this looks like a MATH file (it has 'problem'); use the "
                                f"'math' task for it")
            question = require(obj, "question", path, lineno)
            answer = require(obj, "answer", path, lineno)
            m = re.search(r"####\s*(.+?)\s*$", answer)
            if not m:
                raise DataError(f"{path}:{lineno}: field 'answer' has no final line '#### <number>'")
            gold = m.group(1).replace(",", "").replace("$", "").strip()
            body = _CALCULATOR_RE.sub("", answer[:m.start()]).rstrip()
            solution = f"{body}\n#### {gold}" if body else f"#### {gold}"
            rows.append({"id": str(obj.get("id", f"{os.path.basename(path)}:{lineno}")), "question": question,
                         "gold": gold, "solution": solution, "meta": {}, "source": f"{path}:{lineno}"})
        if not rows:
            raise DataError(f"{path}: the file has no records")
        return rows

    def reference_completion(self, record: PromptRecord) -> str | None:
        """The dataset's solution without calculator annotations (`<<48/2=24>>`), ending `#### N` (no commas)."""
        return record.meta.get("solution")


class MATH(MathAnswerTask):
    """MATH competition problems: the 5000-problem test split (`problem`, `solution`, `level`, `type`) or
    MATH-500 (`problem`, `solution`, `answer`, `subject`, `level`, `unique_id`); the format is detected per row.

    The gold answer is the `answer` field when present, else the last `\\boxed{...}` of `solution` (balanced
    braces). The prompt asks for the final answer in `\\boxed{}`; verification takes the last box (then a
    `####` line, then "the answer is ..."), and compares it with the gold answer: exact rational arithmetic,
    sets/tuples/intervals, text answers and units in-process, symbolic forms with math-verify in worker
    processes under `timeout_s`. Records' `meta` has `level` (int or None), `subject` and `solution`.

    Args:
        path: a MATH or MATH-500 JSON Lines file (e.g. ../shared/data/math/math500.jsonl).
        chat: give records chat `messages` (a user turn; few-shot examples as earlier user/assistant turns)
            rather than a raw `prompt` ("Problem: ...\\nSolution:" blocks) for base models.
        instruction: text added after each problem; None for the default ("Please reason step by step, and put
            your final answer within \\boxed{}."), "" for none.
        few_shot: number of worked examples put before each problem, taken from the first records of the file
            (which are then excluded from the records).
        limit: keep only the first `limit` records (after the few-shot ones); None for all.
        timeout_s: time limit in seconds for checking one answer; a timeout gives reward 0 with error "timeout".
        workers: verifier worker processes (shared between tasks); None for min(4, CPU count).
        strategies: answer extraction strategies in order of preference, from "boxed", "hash", "answer_is",
            "last_number"; None for ["boxed", "hash", "answer_is"] (no last-number guessing).
        hub_split, hub_config: the split and configuration to load when `path` is a hub dataset name (e.g.
            HuggingFaceH4/MATH-500) and the `datasets` package is installed.
        exclude: a MATH-style file (or hub name) whose problems are left out, e.g. MATH-500 when training on the
            5000-problem test split and validating on MATH-500 (the remaining 4500, as in PRM800K).
        verify_timeout_s, max_record_bytes: the `Task` settings (None: 30 s per completion, 8 MiB per line).
    """

    name = "math"

    def __init__(self, path: str, chat: bool = True, instruction: str | None = None, few_shot: int = 0,
                 limit: int | None = None, timeout_s: float = 5.0, workers: int | None = None,
                 strategies: list[str] | None = None, hub_split: str = "test", hub_config: str | None = None,
                 exclude: str | None = None, verify_timeout_s: float | None = None,
                 max_record_bytes: int | None = None):
        self.exclude = exclude
        super().__init__(path, chat=chat, instruction=instruction, few_shot=few_shot, limit=limit,
                         timeout_s=timeout_s, workers=workers, strategies=strategies, hub_split=hub_split,
                         hub_config=hub_config, verify_timeout_s=verify_timeout_s, max_record_bytes=max_record_bytes)

    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        rows = []
        for lineno, obj in read_rows(path, self.hub_split, self.hub_config, self.max_record_bytes):
            if "question" in obj and "problem" not in obj:
                raise DataError(f"{path}:{lineno}: this looks like a GSM8K file (it has 'question'); use the "
                                f"'gsm8k' task for it")
            problem = require(obj, "problem", path, lineno)
            solution = require(obj, "solution", path, lineno)
            if "answer" in obj:
                gold = require(obj, "answer", path, lineno).strip()
            else:
                boxes = [b for b in find_boxed(solution) if b.strip()]
                if not boxes:
                    raise DataError(f"{path}:{lineno}: field 'solution' has no \\boxed{{...}} answer (and the row "
                                    f"has no 'answer' field)")
                gold = boxes[-1].strip()
            if not gold:
                raise DataError(f"{path}:{lineno}: the gold answer is empty")
            level = obj.get("level")
            if isinstance(level, str):
                m = re.search(r"\d+", level)
                level = int(m.group(0)) if m else None
            elif not isinstance(level, int) or isinstance(level, bool):
                level = None
            subject = obj.get("subject", obj.get("type"))
            if "unique_id" in obj:
                rid = str(obj["unique_id"])
            elif "idx" in obj:
                rid = f"{os.path.splitext(os.path.basename(path))[0]}-{obj['idx']}"
            else:
                rid = f"{os.path.basename(path)}:{lineno}"
            rows.append({"id": rid, "question": problem, "gold": gold, "solution": solution,
                         "meta": {"level": level, "subject": subject if isinstance(subject, str) else None},
                         "source": f"{path}:{lineno}"})
        if not rows:
            raise DataError(f"{path}: the file has no records")
        if self.exclude is not None:
            drop = {" ".join(require(obj, "problem", self.exclude, lineno).split())
                    for lineno, obj in read_rows(self.exclude, self.hub_split, self.hub_config, self.max_record_bytes)}
            rows = [r for r in rows if " ".join(r["question"].split()) not in drop]
            if not rows:
                raise DataError(f"{path}: every problem is also in exclude={self.exclude}; nothing is left")
        return rows
