"""The verifier contract, enforced where training calls a task's verifier (PromptDataModule.verify), so that custom
tasks get it too: whatever a verifier does, a bad outcome costs that sample its reward and is counted, never the run.

- it raised (any exception, SystemExit included): Verdict(0.0, error="exception: ..."), counted as `exception`;
- it ran past `task.verify_timeout_s`: Verdict(0.0, error="timeout: ..."), `timeout`;
- its reward or score is NaN or infinite: Verdict(0.0, error="non_finite: ..."), `non_finite`;
- it returned something other than a Verdict, a non-numeric reward or score, a non-string answer, or (verify_batch)
  the wrong number of verdicts: Verdict(0.0, error="bad_type: ..."), `bad_type`.

Why threads, not processes: a custom verifier may hold state a child process would not have (a loaded reward model,
a GPU, an open session), and the trainer cannot safely fork once torch and its threads run. The built-in tasks that
run untrusted or slow work (code, symbolic math) already do it in processes that are killed at their own limits.
A thread cannot be killed, so a call past its limit is abandoned: its sample is scored 0 at once and the call runs
on in its (daemon) thread, which never delays exit. Calls run one at a time, as they always have (a verifier need not
be thread-safe); while `MAX_HUNG_CALLS` abandoned calls are still running, further calls are not started and their
samples are `timeout` at once, so a verifier that always hangs costs at most MAX_HUNG_CALLS x verify_timeout_s of
wall time (then each sample fails immediately until a hung call returns) and never more than that many threads.
What a thread cannot bound: a hung call that spins in pure Python keeps taking its share of the interpreter lock.
"""

from __future__ import annotations

import logging
import math
import numbers
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from datamodules.types import PromptRecord, Verdict

log = logging.getLogger(__name__)

#: what the guard counts, in `<stage>/verify_errors/<kind>`
KINDS = ("exception", "timeout", "non_finite", "bad_type")
#: abandoned calls that may still be running before new calls are refused (bounds threads and the stall per step)
MAX_HUNG_CALLS = 2
DEFAULT_VERIFY_TIMEOUT_S = 30.0

#: one sample's outcome: (True, what the verifier returned) or (False, the exception it raised); None when it ran
#: past its limit; a string when it was not started (why)
Outcome = tuple[bool, Any] | str | None


class _Worker:
    """A daemon thread that runs one call at a time, so that the caller can stop waiting for it."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="inferl-verify-call", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.results.put((True, job()))
            except BaseException as error:  # noqa: BLE001 - a verifier's SystemExit must not end the thread unseen
                self.results.put((False, error))

    def call(self, job: Callable[[], Any], timeout_s: float) -> tuple[bool, Any] | None:
        """(True, value) or (False, exception) of `job()`, or None when it ran past `timeout_s` (still running)."""
        self.jobs.put(job)
        try:
            return self.results.get(timeout=timeout_s)
        except queue.Empty:
            self.jobs.put(None)  # leave the loop once the hung call returns
            return None


class VerifyGuard:
    """Calls tasks' verifiers under the contract above; `counts[stage][kind]` are the failures since `take_counts`.

    A task that verifies one completion at a time (`verify`, the default `Task.verify_batch`) gets a limit per call;
    a task with its own `verify_batch` (a worker pool with its own limits, like the math and code tasks) is called
    once per batch, with `verify_timeout_s` per completion in it as the batch's limit.
    """

    def __init__(self) -> None:
        self._worker: _Worker | None = None
        self._hung: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: dict[str, int] = {}  # every verdict with an error (the task's own included), per stage

    def verify(self, task: Any, records: Sequence[PromptRecord], completions: Sequence[str],
               stage: str = "train") -> list[Verdict]:
        """One verdict per (record, completion), each within the contract; failures counted under `stage`."""
        if len(records) != len(completions):
            raise ValueError(f"verify: {len(records)} records but {len(completions)} completions")
        from datamodules.tasks.base import Task  # the tasks package imports the sandbox; load it only when used

        limit = float(getattr(task, "verify_timeout_s", DEFAULT_VERIFY_TIMEOUT_S))
        with self._lock:
            if type(task).verify_batch is Task.verify_batch:
                outcomes = [self._call(lambda r=r, c=c: task.verify(r, c), limit) for r, c in zip(records, completions)]
            else:
                outcome = self._call(lambda: task.verify_batch(list(records), list(completions)),
                                     limit * max(len(records), 1))
                outcomes = _split_batch(outcome, len(records))
            verdicts = []
            for record, outcome in zip(records, outcomes):
                verdict, kind = _checked(outcome, limit)
                if kind is not None:
                    self._count(stage, kind, verdict.error, task, record)
                verdicts.append(verdict)
            self.errors[stage] = self.errors.get(stage, 0) + sum(v.error is not None for v in verdicts)
            return verdicts

    def take_counts(self, stage: str) -> dict[str, float]:
        """{`<stage>/verify_errors`: every verdict with an error, `<stage>/verify_errors/<kind>`: the guard's
        failures by kind} since the last call for `stage`, then reset (for logging a step or an epoch)."""
        with self._lock:
            counts = self.counts.pop(stage, {})
            metrics = {f"{stage}/verify_errors": float(self.errors.pop(stage, 0))}
            metrics.update({f"{stage}/verify_errors/{kind}": float(counts.get(kind, 0)) for kind in KINDS})
            return metrics

    # -- internals
    def _call(self, job: Callable[[], Any], limit_s: float) -> Outcome:
        """The outcome of `job` (see _Worker.call), or a string saying why it was not started."""
        self._hung = [thread for thread in self._hung if thread.is_alive()]
        if len(self._hung) >= MAX_HUNG_CALLS:
            return (f"not started: {len(self._hung)} earlier verifier calls are still running past "
                    f"verify_timeout_s={limit_s:g} s")
        if self._worker is None:
            self._worker = _Worker()
        outcome = self._worker.call(job, limit_s)
        if outcome is None:  # abandon the thread (it cannot be killed); the next call gets a fresh one
            self._hung.append(self._worker.thread)
            self._worker = None
        return outcome

    def _count(self, stage: str, kind: str, message: str | None, task: Any, record: PromptRecord) -> None:
        per_stage = self.counts.setdefault(stage, {})
        per_stage[kind] = per_stage.get(kind, 0) + 1
        if kind not in self._reported:  # the first of each kind, once: the counts say the rest
            self._reported.add(kind)
            where = f" ({record.source})" if record.source else ""
            log.warning("inferl: verifier of task %s failed the contract on record %s%s: %s; the sample gets reward "
                        "0, and further %s failures are counted in %s/verify_errors/%s", type(task).__name__,
                        record.id, where, message, kind, stage, kind)


def _split_batch(outcome: Outcome, n: int) -> list[Outcome]:
    """Per-sample outcomes of one verify_batch call: its list's items, or its failure repeated."""
    if not isinstance(outcome, tuple) or not outcome[0]:
        return [outcome] * n
    verdicts = outcome[1]
    if not isinstance(verdicts, (list, tuple)) or len(verdicts) != n:
        got = f"{len(verdicts)} items" if isinstance(verdicts, (list, tuple)) else type(verdicts).__name__
        return [(True, f"verify_batch returned {got} for {n} completions")] * n
    return [(True, verdict) for verdict in verdicts]


def _checked(outcome: Outcome, limit_s: float) -> tuple[Verdict, str | None]:
    """(the verdict to use, the contract failure kind or None) for one sample's outcome."""
    if outcome is None:
        return _failed("timeout", f"the verifier ran past verify_timeout_s={limit_s:g} s")
    if isinstance(outcome, str):
        return _failed("timeout", outcome)
    ok, value = outcome
    if not ok:
        return _failed("exception", f"{type(value).__name__}: {value}"[:500])
    if not isinstance(value, Verdict):
        what = value if isinstance(value, str) and value.startswith("verify_batch returned") else None
        return _failed("bad_type", what or f"the verifier returned {type(value).__name__}, expected a Verdict")
    for field in ("reward", "score"):
        number = getattr(value, field)
        if number is None and field == "score":
            continue
        if not isinstance(number, numbers.Real):
            return _failed("bad_type", f"Verdict.{field} is {type(number).__name__} ({number!r:.40}), expected a "
                                       f"number")
        if not math.isfinite(number):
            return _failed("non_finite", f"Verdict.{field} is {number}")
    if value.answer is not None and not isinstance(value.answer, str):
        return _failed("bad_type", f"Verdict.answer is {type(value.answer).__name__}, expected a string or None")
    return Verdict(reward=float(value.reward), answer=value.answer,
                   score=None if value.score is None else float(value.score), error=value.error), None


def _failed(kind: str, message: str) -> tuple[Verdict, str]:
    return Verdict(reward=0.0, error=f"{kind}: {message}"), kind
