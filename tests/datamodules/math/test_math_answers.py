"""Math answer extraction, voting keys, equivalence (a table of known pitfalls) and the time-limited worker pool."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest

from datamodules.math.answers import (
    VerifierPool,
    analyse_answer,
    answer_key,
    check_equivalence,
    decide_fast,
    extract_answer,
    find_boxed,
    is_equivalent,
    normalize_answer,
)
from datamodules.types import PromptRecord

pytest.importorskip("math_verify")

# (gold, prediction, equivalent?) -- prediction is an already-extracted answer
EQUIVALENCE_TABLE = [
    # numbers, thousands separators, money, units
    ("1000", "1,000", True),
    ("1000", "1{,}000", True),
    ("1000", "1\\,000", True),  # math-verify alone reads 1\,000 as 1*0
    ("10080", "10,\\!080", True),
    ("1000000", "1,000,000", True),
    ("1000000", "1 000 000", True),
    ("1000000", "1e6", True),  # math-verify alone reads 1e6 as 6e
    ("1000.5", "\\$1,000.50", True),
    ("5", "\\$5.00", True),
    ("5", "5\\text{ cm}", True),
    ("18", "18 \\text{ inches}^2", True),
    ("12", "12 dollars", True),
    ("12", "12.", True),  # math-verify alone cannot parse "12."
    ("5", "5.00", True),
    ("18", "18.0", True),
    ("-3", "- 3", True),
    ("0", "-0", True),
    ("-5", "5", False),
    ("1000000", "1000001", False),
    ("123456789012345678", "123456789012345679", False),  # big ints: exact, not floats
    ("10^{20}", "100000000000000000001", False),
    ("2^{100}", "1267650600228229401496703205376", True),
    ("2", "2.0000001", False),
    ("0", "0.0000001", False),
    ("1,5", "15", False),
    # fractions and decimals
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac12", "0.5", True),
    ("\\dfrac12", "1/2", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("1.5", "\\frac32", True),
    ("\\frac{3}{2}", "1\\frac12", True),  # mixed number
    ("3\\frac12", "3.5", True),
    ("\\frac{7}{3}", "2\\frac{1}{3}", True),
    ("2\\frac{1}{3}", "\\frac{2}{3}", False),
    ("1/2", "2/4", True),
    ("2", "4/2", True),
    ("1/3", "0.333", False),
    ("1/3", "0.333333", False),  # math-verify alone accepts (6-digit rounding): approximations are not answers
    ("-\\frac{8}{5}", "-1.6", True),
    ("\\frac{1}{2004!}", "\\frac{2}{2004!}", False),  # math-verify alone accepts (both round to 0)
    # percent
    ("50\\%", "0.5", True),
    ("0.5", "50\\%", True),
    ("50", "50\\%", True),
    ("50\\%", "50", True),
    ("0.5", "50", False),
    ("7.2\\%", "7.2", True),
    ("25\\%", "30\\%", False),
    # roots, pi, expressions
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}", True),
    ("3\\sqrt{2}", "\\sqrt{18}", True),
    ("2", "\\sqrt4", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\sqrt{3}", "1.7320508", False),  # math-verify alone accepts the decimal approximation
    ("3.14", "\\pi", False),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("4\\pi", "4 \\pi", True),
    ("5+6\\sqrt{2}", "6\\sqrt2+5", True),
    ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt6}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^2+2x+1", "x^2+2x+2", False),
    ("3x^2 - 7x + 4", "4 - 7x + 3x^2", True),
    ("-1 - 5i", "-5i - 1", True),
    ("i", "\\sqrt{-1}", True),  # math-verify alone says no
    ("6", "3!", True),
    ("10", "\\binom{5}{2}", True),
    ("\\frac{1}{2}", "\\frac{1}{2}+x-x", True),
    ("30^\\circ", "\\frac{\\pi}{6}", False),  # degrees are numbers, not radians
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90", True),
    # equations, tuples, intervals, sets
    ("2", "x=2", True),
    ("x=2", "2", True),
    ("y=2x+3", "2x+3", True),
    ("2", "x=3", False),
    ("x \\in [2,5]", "[2,5]", True),
    ("[1,2)", "[1,2)", True),
    ("[1,2)", "(1,2)", False),
    ("(-\\infty,2]", "(-\\infty,2)", False),
    ("(1,2)", "(2,1)", False),
    ("(2,3)", "\\left( 2, 3 \\right)", True),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(1, 4\\sqrt3)", "(1, \\sqrt{48})", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("1,2", "2,1", True),
    ("1, 2", "\\{2,1\\}", True),
    ("[1,2]", "\\{1,2\\}", False),
    ("1", "1, 2", False),
    ("1, 2", "1", False),
    ("\\pm 2", "-2, 2", True),
    ("\\pm 2", "2", False),
    ("12\\text{ and }13", "13, 12", True),
    ("(-\\infty,0)\\cup(1,\\infty)", "(1,\\infty)\\cup(-\\infty,0)", True),
    ("-\\infty", "\\infty", False),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)", False),
    ("\\begin{pmatrix} 3 & 6 \\\\ 2 & 7 \\end{pmatrix}", "\\begin{pmatrix} 3 & 6 \\\\ 2 & 8 \\end{pmatrix}", False),
    # bases
    ("664_7", "664_7", True),
    ("664_7", "664", True),  # the base is in the question
    ("52_8", "52_9", False),  # math-verify alone accepts (drops the subscript)
    ("4210_{5}", "4210_5", True),
    # text and multiple choice
    ("\\text{(A)}", "A", True),
    ("\\text{(C)}", "(C)", True),
    ("\\text{(C)}", "\\text{(D)}", False),
    ("A", "B", False),
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{Sunday}", "sunday.", True),
    ("\\text{east}", "\\text{west}", False),
    ("\\text{no}", "no", True),
    ("\\text{no}", "on", False),  # math-verify alone reads both as the product n*o
    ("10", "ten", False),
    ("\\text{A,C,F}", "A, C, F", True),
    # empty
    ("5", "", False),
]


def test_table_is_big_enough():
    assert len(EQUIVALENCE_TABLE) >= 80
    assert {e for _, _, e in EQUIVALENCE_TABLE} == {True, False}


@pytest.mark.parametrize("gold,pred,expected", EQUIVALENCE_TABLE)
def test_equivalence_table(gold, pred, expected):
    assert is_equivalent(gold, pred, timeout_s=30) is expected


@pytest.mark.parametrize("gold,pred,expected", EQUIVALENCE_TABLE[::7])
def test_in_process_check_agrees(gold, pred, expected):
    assert check_equivalence(gold, pred) is expected


# --- extraction

def test_boxed_nested_braces():
    assert extract_answer(r"so $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{\{1, \{2\}\}}") == r"\{1, \{2\}\}"
    assert extract_answer(r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}") == r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"


def test_multiple_boxed_takes_last():
    assert extract_answer(r"first \boxed{1}, then \boxed{2}, finally \boxed{3}") == "3"
    assert find_boxed(r"\boxed{a} \fbox{b} \boxed{c}") == ["a", "b", "c"]
    assert extract_answer(r"\boxed{\boxed{7}}") == r"\boxed{7}"
    assert answer_key(extract_answer(r"\boxed{\boxed{7}}")) == "7"


def test_boxed_edge_cases():
    assert extract_answer(r"\boxed 5 is it") == "5"
    assert extract_answer(r"put it in \boxed{} ... \boxed{42}") == "42"
    assert extract_answer(r"put it in \boxed{}", strategies=("boxed",)) is None
    assert extract_answer(r"\boxed{12 unbalanced", strategies=("boxed",)) is None
    assert extract_answer(r"\fbox{9}") == "9"


def test_hash_with_commas():
    text = "She earns 12 * 100 = 1200.\n#### 1,200"
    assert extract_answer(text) == "1,200"
    assert answer_key(extract_answer(text)) == "1200"
    assert extract_answer("#### 5\nmore\n#### $1,000.") == "$1,000"
    assert answer_key("$1,000") == "1000"


def test_answer_is_and_last_number():
    assert extract_answer("Thus the final answer is 42. Done.") == "42"
    assert extract_answer("The answer is: $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert extract_answer("So the answer is \\boxed{7}", strategies=("answer_is",)) == "7"
    assert extract_answer("I got 3 apples and then -2.5 more") == "-2.5"
    assert extract_answer("total 1,234,567 widgets") == "1,234,567"
    assert extract_answer("ratio 3/4") == "3/4"


def test_no_answer_is_none():
    assert extract_answer("I don't know.") is None
    assert extract_answer("") is None
    assert extract_answer("the answer is 5", strategies=("boxed", "hash")) is None


def test_strategy_order_and_validation():
    text = "#### 3\n\\boxed{4}"
    assert extract_answer(text, strategies=("boxed", "hash")) == "4"
    assert extract_answer(text, strategies=("hash", "boxed")) == "3"
    with pytest.raises(ValueError, match="unknown"):
        extract_answer(text, strategies=("boxed", "guess"))
    with pytest.raises(TypeError):
        extract_answer(None)  # type: ignore[arg-type]


# --- normalisation and voting keys

@pytest.mark.parametrize("forms", [
    ["1000", "1,000", "1{,}000", "1,\\!000", "1\\,000", "\\$1,000", "1000.0", "1000 dollars"],
    ["\\frac{1}{2}", "\\frac12", "\\dfrac{1}{2}", "1/2", "0.5", "\\tfrac12", "\\left(\\frac{1}{2}\\right)"],
    ["50", "50\\%", "50%", "50 percent", "\\text{50}"],
    ["3\\sqrt{2}", "\\sqrt{18}", "3 \\sqrt 2", "\\sqrt2\\cdot 3"],
    ["\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", "\\frac{1}{2}\\sqrt{2}"],
    ["2", "x=2", "x = 2", "2.", "\\boxed{2}", "$2$", "2^\\circ", "2 \\text{ cm}"],
    ["\\{1,2\\}", "\\{2,1\\}", "1, 2", "2,1", "1 \\text{ and } 2", "2 or 1"],
    ["(-\\infty,0)", "\\left(-\\infty, 0\\right)", "(-\\infty , 0)"],
    ["x^2+2x+1", "1+2x+x^2", "x^2 + 2 x + 1", "2x+x^{2}+1"],
    ["\\text{(C)}", "C", "(C)", "\\textbf{(C)}", "\\text{C}"],
    ["\\text{Evelyn}", "Evelyn", "\\mbox{Evelyn}", "evelyn."],
    ["\\frac{7}{2}", "3\\frac12", "3.5"],
])
def test_equivalent_answers_share_a_key(forms):
    keys = {answer_key(f) for f in forms}
    assert len(keys) == 1, {f: answer_key(f) for f in forms}


def test_different_answers_have_different_keys():
    different = ["1", "-1", "2", "1/2", "0.51", "\\sqrt2", "2\\sqrt2", "(1,2)", "[1,2]", "\\{1,2\\}", "(2,1)",
                 "x+1", "x-1", "\\text{A}", "\\text{B}", "\\pi", "2\\pi", "1000", "100", "10000", "123456789012345679",
                 "123456789012345678", "i", "-i", "\\infty", "-\\infty", "52_8", "52_9", "x^2", "x^3"]
    keys = [answer_key(x) for x in different]
    assert len(set(keys)) == len(keys), {x: answer_key(x) for x in different}


def test_normalize_answer_examples():
    assert normalize_answer("$\\dfrac{1}{2}$") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "( 3, \\frac{\\pi}{2} )"
    assert normalize_answer("1,\\!000,\\!000") == "1000000"
    assert normalize_answer("45^\\circ") == "45"
    assert normalize_answer("8\\sqrt{3} \\text { square inches}") == "8\\sqrt{3}"
    assert normalize_answer("\\text{(A)}") == "(A)"
    assert normalize_answer("50\\%") == "50\\%"


def test_parser_is_bounded():
    t = time.perf_counter()
    for x in ["10^{10^{10}}", "9^{9^{9^{9}}}", "(10^{100})!", "2^{2^{2^{2^{2^{2}}}}}", "1" * 5000,
              "(" * 500 + "1" + ")" * 500, "\\frac{" * 200 + "1" + "}{2}" * 200, "x" * 1000]:
        a = analyse_answer(x)
        assert a.key
    assert time.perf_counter() - t < 30  # bounded: unbounded arithmetic on these would never finish


def test_decide_fast_leaves_symbolic_cases_open():
    assert decide_fast("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}") is None
    assert decide_fast("1000", "1,000") is True
    assert decide_fast("\\sqrt3", "1.732") is False


# --- time limits and errors

HANG = ("2", "10^{10^{10}}")  # math-verify never finishes this comparison


def test_hanging_verification_costs_one_sample():
    with VerifierPool(workers=2) as pool:
        pool.map(check_equivalence, [("1", "1")] * 2, timeout_s=60)  # workers up
        t = time.perf_counter()
        outs = pool.map(check_equivalence, [("1/2", "0.5"), HANG, ("x^2+2x+1", "(x+1)^2"), ("3", "4")],
                        timeout_s=2.0)
        elapsed = time.perf_counter() - t
        assert [o.ok for o in outs] == [True, False, True, True]
        assert outs[1].error == "timeout"
        assert [outs[0].value, outs[2].value, outs[3].value] == [True, True, False]
        assert elapsed < 60, elapsed  # the hang was cut (a generous bound: no timing is measured here)
        assert pool.timeouts == 1
        # the pool replaced the killed worker and still works
        assert pool.map(check_equivalence, [("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}")], timeout_s=30)[0].value


def test_is_equivalent_times_out_to_false():
    t = time.perf_counter()
    assert is_equivalent(*HANG, timeout_s=1.0) is False
    assert time.perf_counter() - t < 60  # cut at the limit, not left to hang


def test_exception_and_crash_in_worker_become_errors():
    with VerifierPool(workers=1) as pool:
        outs = pool.map(math.sqrt, [(-1.0,), (4.0,)], timeout_s=30)
        assert not outs[0].ok and outs[0].error.startswith("ValueError")
        assert outs[1] == (True, 2.0, None)
        outs = pool.map(os._exit, [(3,)], timeout_s=30)  # the worker process dies
        assert not outs[0].ok and "died" in outs[0].error and "3" in outs[0].error
        assert pool.map(math.sqrt, [(9.0,)], timeout_s=30)[0].value == 3.0


def test_workers_are_lean_contained_and_keep_their_protocol_clean():
    with VerifierPool(workers=1, warm=False, memory_mb=1024) as pool:
        # the worker does not import the package's __init__ (lightning, torch) nor re-run the caller's __main__
        (loaded,) = pool.map(eval, [("sorted(m for m in ('lightning', 'torch') if m in __import__('sys').modules)",)],
                             timeout_s=60)
        assert loaded == (True, [], None)
        # a job's prints go to stderr and do not corrupt the result channel
        assert pool.map(print, [("noise",)], timeout_s=60)[0] == (True, None, None)
        # a runaway allocation fails that job only (the address-space limit), and the worker lives on
        (hog,) = pool.map(bytearray, [(8 << 30,)], timeout_s=60)
        assert not hog.ok and "MemoryError" in hog.error
        assert pool.map(math.sqrt, [(16.0,)], timeout_s=60)[0].value == 4.0
        # and it still answers real jobs
        assert pool.map(check_equivalence, [("1", "1")], timeout_s=60)[0].value is True


def test_workers_started_from_a_short_lived_thread_outlive_it():
    """Workers die with the trainer (PR_SET_PDEATHSIG), which the kernel ties to the thread that started them: a pool
    first used from a thread that then ends must keep its workers."""
    with VerifierPool(workers=1, warm=False) as pool:
        thread = threading.Thread(target=pool.map, args=(math.sqrt, [(4.0,)]), kwargs={"timeout_s": 60})
        thread.start()
        thread.join()
        worker = pool._workers[0].proc
        time.sleep(0.5)
        assert worker.poll() is None, f"the worker died with the thread that started it (status {worker.poll()})"
        assert pool.map(math.sqrt, [(9.0,)], timeout_s=60)[0].value == 3.0 and pool._workers[0].proc is worker


def test_task_verdicts_for_hang_and_exception(tmp_path):
    from datamodules.tasks.math_tasks import MATH

    f = tmp_path / "m.jsonl"
    f.write_text('{"problem": "p1", "solution": "so \\\\boxed{2}"}\n'
                 '{"problem": "p2", "solution": "so \\\\boxed{\\\\frac{1}{\\\\sqrt{2}}}"}\n')
    task = MATH(str(f), timeout_s=2.0, workers=2)
    r1, r2 = task.records
    t = time.perf_counter()
    verdicts = task.verify_batch(
        [r1, r1, r2, r1, r1],
        ["\\boxed{10^{10^{10}}}", "\\boxed{2}", "\\boxed{\\frac{\\sqrt2}{2}}", None, "no answer here"])
    assert time.perf_counter() - t < 60  # the hang was cut
    hang, ok, sym, bad, none = verdicts
    assert hang.reward == 0.0 and hang.error == "timeout" and hang.answer == answer_key("10^{10^{10}}")
    assert ok.reward == 1.0 and ok.error is None and ok.answer == "2"
    assert sym.reward == 1.0 and sym.error is None
    assert bad.reward == 0.0 and bad.error.startswith("TypeError") and bad.answer is None
    assert none.reward == 0.0 and none.error is None and none.answer is None
    odd = PromptRecord(id="odd", prompt="x", reference=None)
    assert task.verify(odd, "\\boxed{1}").error.startswith("TypeError")
