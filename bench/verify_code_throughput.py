"""Code verification throughput on this machine: sandboxed programs verified per second.

Runs the tasks' own `verify_batch` (the trainer's path: one sandboxed interpreter per completion, a thread pool of
`--workers` slots) on
  * MBPP reference solutions (all 974 of mbpp.jsonl: every one must pass),
  * HumanEval canonical solutions and `return None` bodies (164 each: all pass / all fail),
  * CodeContests: a `print(0)`-style wrong program on every problem (each case runs until the first failure),
for each worker count in --workers, and prints a Markdown table (programs/s, wall seconds, how many scored 1,
errors) plus the sandbox isolation level and the machine's load.

Usage: python bench/verify_code_throughput.py [--data ../shared/data] [--workers 1 2 4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.sandbox import SandboxPool, isolation_level  # noqa: E402
from datamodules.tasks import load_task  # noqa: E402


def run(label: str, task, records, completions, workers: int, rows: list) -> None:
    with SandboxPool(workers) as pool:
        task._pool = pool
        task.verify_batch(records[:workers], completions[:workers])  # start-up outside the timing
        t = time.perf_counter()
        verdicts = task.verify_batch(records, completions)
        dt = time.perf_counter() - t
    ones = sum(v.reward == 1.0 for v in verdicts)
    errors = sum(v.error is not None for v in verdicts)
    rows.append((label, workers, len(verdicts), dt, len(verdicts) / dt, ones, errors))
    print(f"  {label}, {workers} workers: {len(verdicts) / dt:.1f} programs/s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                    help="sandbox pool sizes to time (default 1 2 4)")
    ap.add_argument("--quick", action="store_true", help="the first 200 MBPP records only, no CodeContests")
    args = ap.parse_args()
    data = Path(args.data)
    iso = isolation_level()
    rows: list = []
    mbpp = load_task("mbpp", str(data / "mbpp" / "mbpp.jsonl"))
    records = mbpp.records[:200] if args.quick else mbpp.records
    refs = [mbpp.reference_completion(r) for r in records]
    he = load_task("humaneval", str(data / "humaneval" / "HumanEval.jsonl"), chat=False)
    cc = load_task("stdio", str(data / "codecontests" / "test.jsonl"))
    wrong = "import sys\nsys.stdin.read()\nprint(0)\n"
    for workers in args.workers:
        run("MBPP reference solutions", mbpp, records, refs, workers, rows)
        if not args.quick:
            run("HumanEval canonical solutions", he, he.records, [r.reference["canonical_solution"]
                                                                  for r in he.records], workers, rows)
            run("HumanEval `return None` bodies", he, he.records, ["    return None\n"] * len(he.records), workers,
                rows)
            run("CodeContests wrong program (stdin/stdout)", cc, cc.records, [wrong] * len(cc.records), workers, rows)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (at the end)")
    print(f"Sandbox isolation: {iso.describe()}\n")
    print("| case | workers | programs | wall s | programs/s | scored 1 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, workers, n, dt, rate, ones, errors in rows:
        print(f"| {label} | {workers} | {n} | {dt:.1f} | {rate:.1f} | {ones} | {errors} |")


if __name__ == "__main__":
    main()
