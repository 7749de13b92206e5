"""Math answer checking: final-answer extraction, a canonical voting key, and equivalence with a time limit.

Three layers, cheapest first:

1. `extract_answer(text, strategies)` pulls the final answer out of a completion: the last `\\boxed{}` /
   `\\fbox{}` (balanced braces), the last `#### N`, the last "the answer is X", or the last number.
2. `answer_key(answer)` normalises an answer to a canonical string: equal keys are equivalent answers
   (one voting class for maj@k). It is pure Python on bounded input (no sympy, no unbounded arithmetic),
   so it is safe to call in the training process: `1,000` / `1{,}000` / `1\\!000` -> `1000`;
   `1/2`, `\\frac12`, `\\dfrac{1}{2}`, `0.5` -> `1/2`; `\\sqrt{18}` / `3\\sqrt2` -> `3*sqrt(2)`; sets and bare
   lists sorted; `x=2` -> `2`; units, `\\$`, `^\\circ`, `\\%`, `\\text{}` and spacing commands dropped.
3. `is_equivalent(gold, pred)` first decides with the keys (exact rational arithmetic, text answers by their
   text) and asks math-verify only for what the keys cannot settle (symbolic expressions: `(x+1)^2` vs
   `x^2+2x+1`, `\\frac{1}{\\sqrt2}` vs `\\frac{\\sqrt2}{2}`). math-verify's own SIGALRM timeouts are disabled
   (they only work in a main thread); the time limit is enforced by running it in worker processes
   (`VerifierPool`) that are killed and replaced when one hangs.

The code is split by idea: extract.py (1), normalize.py, parse.py and canon.py (2),
this module (3: equivalence, the public API) and pool.py with worker.py (the time-limited workers). The rules and the
cases
where they differ from plain math-verify (its known false positives) are documented in docs/tasks.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from fractions import Fraction
from typing import Any

from datamodules.math.canon import Analysis, analyse_answer, answer_key
from datamodules.math.extract import STRATEGIES, check_strategies, extract_answer, find_boxed
from datamodules.math.normalize import normalize_answer
from datamodules.math.pool import Outcome
from datamodules.math.pool import VerifierPool as _BasePool

log = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "Analysis",
    "Outcome",
    "VerifierPool",
    "analyse_answer",
    "answer_key",
    "check_equivalence",
    "check_strategies",
    "decide_fast",
    "extract_answer",
    "find_boxed",
    "is_equivalent",
    "math_verify_only",
    "normalize_answer",
    "shared_pool",
]

# ----------------------------------------------------------------------------------------------------------
# 3. Equivalence
# ----------------------------------------------------------------------------------------------------------

def _number_values(a: Analysis) -> set[Fraction]:
    assert a.value is not None
    return {a.value, a.value / 100} if a.percent else {a.value}


def _base_equal(g: Analysis, p: Analysis) -> bool:
    """A base-b literal (`664_7`) against another answer: the same digits in the same base; or a plain integer
    written with the same digits (the base was left implicit: `664`); or a plain integer of the same value."""
    if g.kind == "base" and p.kind == "base":
        return g.key == p.key
    b, other = (g, p) if g.kind == "base" else (p, g)
    if other.kind != "number" or other.value is None or other.value.denominator != 1 or other.percent:
        return False
    digits, radix = b.key.rsplit("_", 1)
    if str(other.value.numerator) == digits:
        return True
    try:
        return int(digits, int(radix)) == other.value.numerator
    except ValueError:
        return False


def decide_fast(gold: str, pred: str) -> bool | None:
    """Equivalence decided without sympy when possible: True/False, or None when math-verify must settle it.

    Equal keys -> True. Text answers (either side) -> equal text keys only. Two exact numbers -> exact
    equality (a % sign on either side also accepts the value / 100: `50\\%` ~ `50` ~ `0.5`). Two structures
    of numbers (tuples, sets, intervals) -> equal keys only. A decimal literal against an exact irrational
    or symbolic gold (`1.732` vs `\\sqrt3`) -> False: approximations are not answers.
    """
    g, p = analyse_answer(gold), analyse_answer(pred)
    if p.kind == "empty" or g.kind == "empty":
        return False
    if g.key == p.key:
        return True
    if g.kind == "text" or p.kind == "text":  # the other side read as words: \text{no} ~ no, but not ~ on
        other = p if g.kind == "text" else g
        text = g if g.kind == "text" else p
        return bool(re.fullmatch(r"[A-Za-z][A-Za-z .,'?:\-]*", other.norm)) and \
            " ".join(other.norm.lower().rstrip(".").split()) == text.key
    if g.kind == "number" and p.kind == "number":
        return bool(_number_values(g) & _number_values(p))
    if g.kind == "base" or p.kind == "base":
        return _base_equal(g, p)
    if g.kind in ("number", "numeric") and p.kind in ("number", "numeric"):
        return False
    if p.kind == "number" and p.decimal and g.kind == "expr":
        return False
    return None


_MV_READY = False


def _math_verify_equal(gold_norm: str, pred_norm: str) -> bool:
    """math-verify on two normalised answers, with its own (SIGALRM) timeouts off. Runs in a worker process."""
    global _MV_READY
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    if not _MV_READY:
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _MV_READY = True
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    g = parse("$\\boxed{" + gold_norm + "}$", extraction_config=config, parsing_timeout=None)
    p = parse("$\\boxed{" + pred_norm + "}$", extraction_config=config, parsing_timeout=None)
    if not g or not p:
        return False
    if not verify(g, p, timeout_seconds=None):
        return False
    return _exact_recheck(g[0], p[0])


def _exact_recheck(a: Any, b: Any) -> bool:
    """Veto math-verify's float-rounding matches of two exact constants that differ (1/2004! vs 2/2004!)."""
    import sympy
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return True
    if a.free_symbols or b.free_symbols or a.atoms(sympy.Float) or b.atoms(sympy.Float):
        return True
    try:
        diff = sympy.N(a - b, 30)
        scale = sympy.N(abs(a) + abs(b), 30)
        if diff.is_number and scale.is_number and scale != 0 and abs(diff) > scale * sympy.Float("1e-20"):
            return False
    except Exception:  # noqa: BLE001 - keep math-verify's verdict when sympy cannot evaluate
        pass
    return True


def check_equivalence(gold: str, pred: str) -> bool:
    """Whether `pred` is an equivalent answer to `gold`, in-process and WITHOUT a time limit.

    `decide_fast`, then math-verify for what it leaves open. Training code should call `is_equivalent` (or a
    task's `verify_batch`), which runs this in a worker process with a time limit.
    """
    fast = decide_fast(gold, pred)
    if fast is not None:
        return fast
    return _math_verify_equal(analyse_answer(gold).norm, analyse_answer(pred).norm)


def is_equivalent(gold: str, pred: str, timeout_s: float = 5.0, pool: VerifierPool | None = None) -> bool:
    """Whether `pred` is an equivalent answer to `gold` (both already extracted), within `timeout_s` seconds.

    Decided in-process when the keys suffice (`decide_fast`); otherwise math-verify runs in a worker process
    of `pool` (default: the shared pool), which is killed and replaced if it exceeds `timeout_s`. A timeout or
    an error counts as not equivalent (logged at debug level).
    """
    fast = decide_fast(gold, pred)
    if fast is not None:
        return fast
    pool = pool or shared_pool()
    (out,) = pool.map(check_equivalence, [(gold, pred)], timeout_s=timeout_s)
    if not out.ok:
        log.debug("is_equivalent(%r, %r): %s", gold[:100], pred[:100], out.error)
        return False
    return bool(out.value)


def math_verify_only(gold: str, pred: str) -> bool:
    """math-verify alone (after normalisation), without the key checks: what the slow path costs (bench/)."""
    return _math_verify_equal(analyse_answer(gold).norm, analyse_answer(pred).norm)


# ----------------------------------------------------------------------------------------------------------
# 4. Worker processes with a hard time limit per job (datamodules/math/pool.py)
# ----------------------------------------------------------------------------------------------------------

def _warm_up() -> None:
    """Import math-verify and run one comparison, so a worker's first job is not charged for it."""
    try:
        _math_verify_equal("\\frac{1}{2}", "0.5")
    except Exception:  # noqa: BLE001 - a missing math-verify shows up as each job's error instead
        pass


class VerifierPool(_BasePool):
    """datamodules.math.pool.VerifierPool whose workers import math-verify and warm up before taking jobs
    (warm=False: they do not). See that class for the arguments and guarantees."""

    def __init__(self, workers: int = 2, warm: bool = True, **kwargs) -> None:
        super().__init__(workers, warm_up=_warm_up if warm else None, **kwargs)


_SHARED: dict[int, VerifierPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int | None = None) -> VerifierPool:
    """A process-wide VerifierPool per worker count, created on first use (default: min(2, CPU count) workers)."""
    workers = workers or min(2, os.cpu_count() or 1)
    with _SHARED_LOCK:
        pool = _SHARED.get(workers)
        if pool is None or pool._pid != os.getpid():
            pool = _SHARED[workers] = VerifierPool(workers)
        return pool
