"""Math verification throughput on this machine: answers checked per second.

For GSM8K test and MATH-500 (and, with --math-test, the 5000-problem MATH test split) it times
  * gold vs the dataset's own solution (each must score 1),
  * gold vs a perturbed wrong answer (the first integer in the gold answer + 1, or `+1` appended, or a wrong
    word for text answers; each should score 0),
  * math-verify alone on (gold, gold) pairs through the worker pool (the slow path's cost per answer),
and prints a Markdown table (answers/s, wall seconds, how many scored 1, errors/timeouts).

Usage: python bench/verify_math_throughput.py [--data ../shared/data] [--workers N] [--math-test]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.math.answers import (  # noqa: E402
    analyse_answer,
    check_equivalence,
    math_verify_only,
    normalize_answer,
    shared_pool,
)
from datamodules.tasks.math_tasks import GSM8K, MATH  # noqa: E402


def perturb(gold: str) -> str:
    """A different answer: the first integer + 1, else `+1` appended (a wrong word for text answers)."""
    m = re.search(r"\d+", gold)
    if m is not None:
        return gold[:m.start()] + str(int(m.group(0)) + 1) + gold[m.end():]
    if analyse_answer(gold).kind == "text":
        return "\\text{something else}"
    return gold + "+1"


def run(label: str, task, completions: list[str], rows: list) -> None:
    """Time task.verify_batch from cold caches (the answer analysis and the task's verdict cache)."""
    analyse_answer.cache_clear()
    normalize_answer.cache_clear()
    task._cache.clear()
    t = time.perf_counter()
    verdicts = task.verify_batch(task.records, completions)
    dt = time.perf_counter() - t
    ones = sum(v.reward == 1.0 for v in verdicts)
    errs = sum(v.error is not None for v in verdicts)
    rows.append((label, len(verdicts), dt, len(verdicts) / dt, ones, errs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--workers", type=int, default=None, help="verifier processes (default min(4, CPUs))")
    ap.add_argument("--timeout-s", type=float, default=5.0)
    ap.add_argument("--math-test", action="store_true", help="also the 5000-problem MATH test split")
    args = ap.parse_args()
    data = Path(args.data)
    sets = [("GSM8K test", GSM8K, data / "gsm8k" / "test.jsonl"), ("MATH-500", MATH, data / "math" / "math500.jsonl")]
    if args.math_test:
        sets.append(("MATH test", MATH, data / "math" / "test.jsonl"))
    rows: list = []
    for name, cls, path in sets:
        task = cls(str(path), workers=args.workers, timeout_s=args.timeout_s)
        # start the pool outside the timings
        shared_pool(task.workers).map(check_equivalence, [("x+1", "1+x")] * task.workers, timeout_s=60)
        refs = [task.reference_completion(r) for r in task.records]
        run(f"{name}: gold vs own solution", task, refs, rows)
        wrong = []
        for r in task.records:
            p = perturb(r.reference)
            wrong.append(f"So the answer is\n#### {p}" if cls is GSM8K else f"The answer is $\\boxed{{{p}}}$.")
        run(f"{name}: gold vs perturbed wrong answer", task, wrong, rows)
        bad = [(r.id, r.reference, w) for r, w, v in
               zip(task.records, wrong, task.verify_batch(task.records, wrong)) if v.reward == 1.0]
        for b in bad[:10]:
            print(f"  perturbed answer accepted: {b}", file=sys.stderr)
        pool = shared_pool(task.workers)
        jobs = [(r.reference, r.reference) for r in task.records]
        t = time.perf_counter()
        outs = pool.map(math_verify_only, jobs, timeout_s=args.timeout_s)
        dt = time.perf_counter() - t
        rows.append((f"{name}: math-verify only, gold vs gold (pool)", len(jobs), dt, len(jobs) / dt,
                     sum(bool(o.ok and o.value) for o in outs), sum(not o.ok for o in outs)))
    workers = args.workers or max(1, min(4, os.cpu_count() or 1))
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{workers} verifier workers, Python {platform.python_version()}\n")
    print("| case | answers | wall s | answers/s | scored 1 | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, dt, rate, ones, errs in rows:
        print(f"| {label} | {n} | {dt:.2f} | {rate:,.0f} | {ones} | {errs} |")


if __name__ == "__main__":
    main()
