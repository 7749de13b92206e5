"""The code tasks on the real datasets: HumanEval, MBPP (full and sanitized) and stdin/stdout problems (CodeContests,
APPS), through the public API `load_task(name, path)`, `.records`, `.verify`, `.verify_batch`.

Fast by default: a subset of each dataset (including the records with helpers, setup code and classes). The whole
datasets run under `-m slow` (about a minute on 2 cores)."""

from __future__ import annotations

import json
import textwrap
import threading

import pytest
from data_paths import data_file

from datamodules.records import DataError
from datamodules.sandbox import SandboxPool
from datamodules.tasks import MBPP, HumanEval, StdioCode, load_task
from datamodules.tasks.base import looks_like_hub_name
from datamodules.tasks.code_tasks import extract_code, humaneval_program, outputs_match
from datamodules.types import PromptRecord, Verdict

# HumanEval records whose prompts define helpers the tests use (10, 32, 38, 50) or that are otherwise unusual
HUMANEVAL_FAST = [f"HumanEval/{i}" for i in (0, 1, 2, 3, 10, 12, 22, 32, 38, 50, 53, 87, 129, 151, 160, 163)]
# MBPP: the first records, the three whose tests build the solution's own classes (367, 601, 927), float results
MBPP_FAST = [f"mbpp/{i}" for i in (1, 2, 3, 11, 12, 13, 17, 56, 120, 367, 601, 927, 600, 974)]


@pytest.fixture(scope="module")
def humaneval() -> HumanEval:
    return load_task("humaneval", data_file("humaneval", "HumanEval.jsonl"))


@pytest.fixture(scope="module")
def humaneval_raw() -> HumanEval:
    return load_task("humaneval", data_file("humaneval", "HumanEval.jsonl"), chat=False)


@pytest.fixture(scope="module")
def mbpp() -> MBPP:
    return load_task("mbpp", data_file("mbpp", "mbpp.jsonl"))


@pytest.fixture(scope="module")
def codecontests() -> StdioCode:
    return load_task("stdio", data_file("codecontests", "test.jsonl"))


@pytest.fixture(scope="module")
def apps() -> StdioCode:
    return load_task("stdio", data_file("apps", "selected150.jsonl"))


def pick(task, ids: list[str]) -> list[PromptRecord]:
    by_id = {r.id: r for r in task.records}
    return [by_id[i] for i in ids]


def failures(records, verdicts, want: float) -> list[tuple[str, Verdict]]:
    return [(r.id, v) for r, v in zip(records, verdicts) if v.reward != want]


# ----------------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------------

def test_records_have_ids_prompts_and_what_the_verifier_needs(humaneval, humaneval_raw, mbpp, codecontests, apps):
    assert len(humaneval) == 164 and len(mbpp) == 974 and len(codecontests) == 165 and len(apps) == 150
    for task in (humaneval, mbpp, codecontests, apps):
        ids = [r.id for r in task.records]
        assert len(set(ids)) == len(ids), f"{task.name}: duplicate record ids"
        assert all(r.messages and r.messages[-1]["role"] == "user" for r in task.records)  # chat by default
    he = humaneval.records[0]
    assert he.id == "HumanEval/0" and "```python\nfrom typing import List" in he.messages[0]["content"]
    assert set(he.reference) >= {"prompt", "test", "entry_point"}
    raw = humaneval_raw.records[0]
    assert raw.messages is None and raw.prompt == he.reference["prompt"]  # a base model continues the prompt
    mb = pick(mbpp, ["mbpp/11"])[0]
    assert mb.reference["tests"][0] in mb.messages[0]["content"]  # the visible test is in the prompt
    assert mb.reference["entry"] == ["remove_Occ"]
    cc = codecontests.records[0]
    assert cc.reference["kind"] == "stdio" and "standard input" in cc.messages[0]["content"]
    assert {r.reference["kind"] for r in apps.records} == {"stdio", "call"}


def test_mbpp_splits_and_the_sanitized_file():
    path = data_file("mbpp", "mbpp.jsonl")
    sizes = {split: len(MBPP(path, split=split)) for split in ("test", "train", "prompt")}
    assert sizes == {"test": 500, "train": 464, "prompt": 10}
    sanitized = load_task("mbpp", data_file("mbpp", "sanitized-mbpp.jsonl"))
    assert len(sanitized) == 427
    assert all(r.reference["tests"] for r in sanitized.records)
    with pytest.raises(ValueError, match="split"):
        MBPP(path, split="validation")


# ----------------------------------------------------------------------------------------------------------------------
# HumanEval
# ----------------------------------------------------------------------------------------------------------------------

def test_humaneval_canonical_solutions_pass_and_none_bodies_fail_on_a_subset(humaneval, humaneval_raw):
    records = pick(humaneval, HUMANEVAL_FAST)
    good = humaneval.verify_batch(records, [humaneval.reference_completion(r) for r in records])
    assert failures(records, good, 1.0) == []
    assert all(v.error is None and v.score == 1.0 and v.answer is None for v in good)
    raw = pick(humaneval_raw, HUMANEVAL_FAST)
    bad = humaneval_raw.verify_batch(raw, ["    return None\n"] * len(raw))
    assert failures(raw, bad, 0.0) == []


@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_pass(humaneval):
    verdicts = humaneval.verify_batch(humaneval.records, [humaneval.reference_completion(r) for r in humaneval.records])
    assert failures(humaneval.records, verdicts, 1.0) == []


@pytest.mark.slow
def test_all_164_humaneval_return_none_bodies_fail(humaneval_raw):
    records = humaneval_raw.records
    verdicts = humaneval_raw.verify_batch(records, ["    return None\n"] * len(records))
    assert len(verdicts) == 164 and failures(records, verdicts, 0.0) == []


def _humaneval_forms(prompt: str, body: str) -> dict[str, str]:
    """A correct solution written the ways models write it."""
    full = prompt + body
    return {
        "body continuing the prompt": body,
        "body at column 0": textwrap.dedent(body),
        "full function": full,
        "fenced full function": f"```python\n{full}```",
        "prose, fence, prose": f"Here is the solution:\n\n```python\n{full}\n```\n\nIt compares every pair.",
        "prose then unfenced function": f"Sure! Here it is:\n{full}\nHope that helps.",
        "fenced body": f"```python\n{body}```",
        "unclosed fence": f"```python\n{full}",
        "an example block, then the solution": f"```python\nprint('usage')\n```\nSolution:\n```py\n{full}\n```",
        "fence language in capitals": f"```Python\n{full}\n```",
        "body, then prose": body + "\nThis solution checks all pairs.",
        "function without the prompt's imports": "def has_close_elements(numbers, threshold):\n" + body,
        "function with a helper": "```python\ndef _gap(a, b):\n    return abs(a - b)\n\n"
                                  "def has_close_elements(numbers, threshold):\n"
                                  "    return any(_gap(a, b) < threshold for i, a in enumerate(numbers)"
                                  " for j, b in enumerate(numbers) if i != j)\n```",
    }


def test_humaneval_accepts_a_body_or_a_function_fenced_or_not(humaneval):
    record = humaneval.records[0]
    forms = _humaneval_forms(record.reference["prompt"], record.reference["canonical_solution"])
    verdicts = humaneval.verify_batch([record] * len(forms), list(forms.values()))
    assert {name: v.reward for name, v in zip(forms, verdicts)} == {name: 1.0 for name in forms}


@pytest.mark.parametrize("completion,error", [
    ("", "no code"),
    ("```python\ndef has_close_elements(numbers, threshold):\n    return True\n```", None),  # wrong, runs fine
    ("    return numbers[0] < threshold\n", None),
    ("    return 1 +\n", "compile"),
    ("def has_close_elements(numbers, threshold):\n    raise ValueError('nope')\n", "ValueError"),
    ("I don't know how to solve this.", "compile"),
])
def test_humaneval_wrong_completions_fail(humaneval, completion, error):
    verdict = humaneval.verify(humaneval.records[0], completion)
    assert verdict.reward == 0.0
    if error is None:
        assert verdict.error is None
    else:
        assert error in verdict.error


def test_humaneval_program_assembly():
    prompt = "import math\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n"
    assert humaneval_program(prompt, "    return math.sqrt(x)\n", "f") == prompt + "    return math.sqrt(x)\n"
    assert humaneval_program(prompt, "return 1", "f") == prompt + "    return 1"  # re-indented
    whole = humaneval_program(prompt, "```python\ndef f(x):\n    return 2\n```", "f")
    assert whole.startswith(prompt.rstrip()) and whole.endswith("def f(x):\n    return 2\n")  # imports kept
    assert humaneval_program(prompt, "    return 3\nThat is all.", "f").endswith("    return 3\n")


def test_extract_code():
    assert extract_code("```python\nx = 1\n```") == "x = 1\n"
    assert extract_code("text\n```\ny = 2\n```\n") == "y = 2\n"  # an unlabelled fence
    two = "```python\ndef g():\n    pass\n```\n```python\ndef f():\n    return 1\n```"
    assert extract_code(two, entry="f") == "def f():\n    return 1\n"  # the block defining the entry point
    assert extract_code("Answer:\nimport os\nprint(1)\nDone!") == "import os\nprint(1)\n"
    assert extract_code("print(1)\n") == "print(1)\n"  # raw code as is


# ----------------------------------------------------------------------------------------------------------------------
# MBPP
# ----------------------------------------------------------------------------------------------------------------------

def test_mbpp_reference_solutions_pass_on_a_subset(mbpp):
    records = pick(mbpp, MBPP_FAST)
    verdicts = mbpp.verify_batch(records, [mbpp.reference_completion(r) for r in records])
    assert failures(records, verdicts, 1.0) == []
    assert all(v.score == 1.0 and v.error is None for v in verdicts)


def test_mbpp_wrong_solutions_fail(mbpp):
    records = pick(mbpp, MBPP_FAST)
    stubs = []
    for r in records:  # every function the tests call, returning None
        stubs.append("".join(f"def {name}(*args, **kwargs):\n    return None\n" for name in r.reference["entry"]))
    classes = {"mbpp/367": "class Node:\n    def __init__(self, data):\n        self.data = data\n"
                           "        self.left = self.right = None\n",
               "mbpp/927": "class Node:\n    def __init__(self, data):\n        self.data = data\n"
                           "        self.left = self.right = None\n",
               "mbpp/601": "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"}
    stubs = [classes.get(r.id, "") + s for r, s in zip(records, stubs)]
    verdicts = mbpp.verify_batch(records, stubs)
    assert failures(records, verdicts, 0.0) == []


@pytest.mark.slow
def test_all_974_mbpp_reference_solutions_pass(mbpp):
    verdicts = mbpp.verify_batch(mbpp.records, [mbpp.reference_completion(r) for r in mbpp.records])
    assert len(verdicts) == 974 and failures(mbpp.records, verdicts, 1.0) == []


@pytest.mark.slow
def test_all_427_sanitized_mbpp_reference_solutions_pass():
    task = load_task("mbpp", data_file("mbpp", "sanitized-mbpp.jsonl"))
    verdicts = task.verify_batch(task.records, [task.reference_completion(r) for r in task.records])
    assert len(verdicts) == 427 and failures(task.records, verdicts, 1.0) == []


def test_fraction_reward_and_visible_test_score(mbpp):
    record = pick(mbpp, ["mbpp/11"])[0]  # remove_Occ(s, ch): remove the first and last occurrence of ch
    partial = "def remove_Occ(s, ch):\n    return s.replace(ch, '', 2) if s == 'hello' else s\n"
    assert mbpp.verify(record, partial).reward == 0.0
    fraction = MBPP(data_file("mbpp", "mbpp.jsonl"), split="prompt", reward="fraction")
    verdict = fraction.verify(record, partial)
    assert 0.0 < verdict.reward < 1.0
    assert verdict.score == 1.0  # the first test (the one in the prompt) passes


def test_verify_batch_runs_in_parallel_and_keeps_order(mbpp):
    """Each verification waits at a barrier for the other worker: this only completes if two run at once."""
    barrier = threading.Barrier(2, timeout=60)

    class Barriered(MBPP):
        def verify(self, record, completion):
            barrier.wait()
            return super().verify(record, completion)

    task = Barriered.__new__(Barriered)
    task.__dict__.update(mbpp.__dict__)
    with SandboxPool(2) as pool:
        task._pool = pool
        records = pick(mbpp, ["mbpp/11", "mbpp/12", "mbpp/13", "mbpp/17"])
        completions = [mbpp.reference_completion(records[0]), "def f(:", mbpp.reference_completion(records[2]), ""]
        verdicts = task.verify_batch(records, completions)
    assert [v.reward for v in verdicts] == [1.0, 0.0, 1.0, 0.0]
    assert "compile" in verdicts[1].error and "no code" in verdicts[3].error


def test_an_exception_in_verify_costs_one_sample(mbpp):
    class Flaky(MBPP):
        def verify(self, record, completion):
            if completion == "boom":
                raise RuntimeError("verifier bug")
            return super().verify(record, completion)

    task = Flaky.__new__(Flaky)
    task.__dict__.update(mbpp.__dict__)
    records = pick(mbpp, ["mbpp/11", "mbpp/11"])
    verdicts = task.verify_batch(records, ["boom", mbpp.reference_completion(records[1])])
    assert verdicts[0].reward == 0.0 and verdicts[0].error == "RuntimeError: verifier bug"
    assert verdicts[1].reward == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# stdin/stdout: CodeContests and APPS (neither ships solutions: these programs are hand-written)
# ----------------------------------------------------------------------------------------------------------------------

CODECONTESTS = {
    # line in test.jsonl: (problem, correct program, incorrect program)
    29: ("Luntik's concerts: minimal duration difference",
         "import sys\nd = sys.stdin.read().split()\nfor i in range(int(d[0])):\n"
         "    a, b, c = map(int, d[1 + 3 * i: 4 + 3 * i])\n    print((a + 2 * b + 3 * c) % 2)\n",
         "for _ in range(int(input())):\n    input()\n    print(0)\n"),
    30: ("nearly full subsequences",
         "t = int(input())\nfor _ in range(t):\n    n = int(input())\n    a = list(map(int, input().split()))\n"
         "    print(a.count(1) * 2 ** a.count(0))\n",
         "t = int(input())\nfor _ in range(t):\n    n = int(input())\n    a = list(map(int, input().split()))\n"
         "    print(a.count(1))\n"),
    141: ("squares and cubes up to n (138 tests)",
          "from math import isqrt\n\ndef iroot(n, k):\n    r = round(n ** (1 / k))\n"
          "    while r ** k > n:\n        r -= 1\n"
          "    while (r + 1) ** k <= n:\n        r += 1\n    return r\n\nfor _ in range(int(input())):\n"
          "    n = int(input())\n    print(isqrt(n) + iroot(n, 3) - iroot(n, 6))\n",
          "for _ in range(int(input())):\n    n = int(input())\n    print(int(n ** 0.5) + int(n ** (1 / 3)))\n"),
    155: ("break a stick into a rectangle (YES/NO in any case)",
          "for _ in range(int(input())):\n    a, b, c = sorted(map(int, input().split()))\n"
          "    ok = c == a + b or (a == b and c % 2 == 0) or (b == c and a % 2 == 0)\n"
          "    print('yes' if ok else 'no')\n",  # lower case: the statement accepts any case
          "for _ in range(int(input())):\n    a, b, c = sorted(map(int, input().split()))\n"
          "    print('YES' if c == a + b else 'NO')\n"),
}


def test_codecontests_hand_written_programs_get_the_right_verdicts(codecontests):
    by_id = {r.id: r for r in codecontests.records}
    records, completions = [], []
    for line, (_, good, bad) in CODECONTESTS.items():
        record = by_id[f"test/{line}"]
        records += [record, record]
        completions += [f"Here you go:\n```python\n{good}```", bad]
    verdicts = codecontests.verify_batch(records, completions)
    got = [(r.id, v.reward) for r, v in zip(records, verdicts)]
    want = [(r.id, 1.0 if i % 2 == 0 else 0.0) for i, r in enumerate(records)]
    assert got == want, [(r.id, v) for r, v in zip(records, verdicts)]
    assert all(v.error is None for v in verdicts)  # wrong answers are not errors
    assert by_id["test/155"].reference["ignore_case"] and not by_id["test/141"].reference["ignore_case"]


def test_stdio_crashes_timeouts_and_floods_are_errors(codecontests):
    from datamodules.sandbox import SandboxLimits
    task = StdioCode.__new__(StdioCode)
    task.__dict__.update(codecontests.__dict__)
    task.limits = SandboxLimits(timeout_s=1.0, startup_s=5.0)
    record = next(r for r in codecontests.records if r.id == "test/29")
    programs = ["raise ValueError('bad input')", "while True:\n    pass", "while True:\n    print('x' * 1000)"]
    crash, hang, flood = task.verify_batch([record] * 3, programs)
    assert crash.reward == 0.0 and "ValueError: bad input" in crash.error
    assert hang.reward == 0.0 and hang.error == "timeout"
    assert flood.reward == 0.0 and flood.error == "output_limit"


APPS = {
    # APPS id: (correct, incorrect); call-based problems get a function, stdin/stdout ones a program
    "apps/4440": ("def validate_pin(pin):\n    return len(pin) in (4, 6) and pin.isdigit() and pin.isascii()\n",
                  "def validate_pin(pin):\n    return len(str(pin)) == 4\n"),  # PINs are digit strings: `1234`
    "apps/4465": ("def super_size(n):\n    return int(''.join(sorted(str(n), reverse=True)))\n",
                  "def super_size(n):\n    return n\n"),
    "apps/4724": ("def drop_cap(str_):\n    return ' '.join(w.capitalize() if len(w) > 2 else w for w in "
                  "str_.split(' '))\n", "def drop_cap(str_):\n    return str_.title()\n"),
    "apps/1607": ("s = input()\nn = len(s)\nprint(sum(s[i] + s[j] + s[k] == 'QAQ' for i in range(n) for j in "
                  "range(i + 1, n) for k in range(j + 1, n)))\n", "print(input().count('QAQ'))\n"),
}


def test_apps_hand_written_programs_get_the_right_verdicts(apps):
    by_id = {r.id: r for r in apps.records}
    assert by_id["apps/4440"].reference["kind"] == "call" and by_id["apps/1607"].reference["kind"] == "stdio"
    records, completions = [], []
    for rid, (good, bad) in APPS.items():
        records += [by_id[rid], by_id[rid]]
        completions += [f"```python\n{good}```", bad]
    verdicts = apps.verify_batch(records, completions)
    got = [(r.id, v.reward) for r, v in zip(records, verdicts)]
    assert got == [(r.id, 1.0 if i % 2 == 0 else 0.0) for i, r in enumerate(records)], verdicts


def test_apps_call_readings_and_methods(tmp_path):
    """Synthetic APPS rows: a LeetCode-style method, a one-parameter function given a multi-line string, and an
    always-equal object, which must not pass through the in-process (method) path."""
    rows = [
        {"id": 1, "description": "max", "starter_code": "class Solution:\n    def biggest(self, xs: list) -> int:\n",
         "test_list": [{"input": "[1, 5, 2]", "output": [5]}, {"input": "[7]", "output": [7]}]},
        {"id": 2, "description": "lines", "starter_code": "def count_lines(text):\n\t",
         "test_list": [{"input": "a\nb\nc", "output": [3]}, {"input": "", "output": [1]}]},
    ]
    path = tmp_path / "apps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("stdio", str(path))
    method, lines = task.records
    assert method.reference["isolate_calls"] is False and lines.reference["isolate_calls"] is True
    verdicts = task.verify_batch(
        [method, method, method, lines, lines],
        ["class Solution:\n    def biggest(self, xs):\n        return max(xs)\n",
         "class Solution:\n    def biggest(self, xs):\n        return xs[0]\n",
         "class A:\n    __eq__ = lambda s, o: True\n    __hash__ = object.__hash__\n"
         "class Solution:\n    def biggest(self, xs):\n        return A()\n",
         "def count_lines(text):\n    return len(text.split('\\n'))\n",
         "def count_lines(text):\n    return text.count('\\n')\n"])
    assert [v.reward for v in verdicts] == [1.0, 0.0, 0.0, 1.0, 0.0], verdicts


def test_outputs_match():
    assert outputs_match("1 2\n3\n", "1 2 3")
    assert outputs_match("  4\r\n", "4\n")
    assert not outputs_match("1 2", "1 2 3")
    assert outputs_match("0.3333333", "0.333333333")
    assert not outputs_match("0.34", "0.333333333")
    assert not outputs_match("0.3333333", "0.333333333", float_tol=None)
    assert not outputs_match("1.0", "1")  # integers in the expected output are compared exactly
    assert not outputs_match("yes", "YES") and outputs_match("yes", "YES", ignore_case=True)
    assert not outputs_match("", "0")


# ----------------------------------------------------------------------------------------------------------------------
# Bad data
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,row,message", [
    ("humaneval", {"task_id": "X/0", "prompt": "def f():\n", "entry_point": "f"}, "missing field 'test'"),
    ("humaneval", {"task_id": "X/0", "prompt": "def f():\n", "entry_point": "f", "test": "assert True"},
     "def check"),
    ("mbpp", {"task_id": 11, "text": "t", "code": "def f(): pass", "test_list": []}, "non-empty list"),
    ("mbpp", {"task_id": 11, "code": "def f(): pass", "test_list": ["assert f() is None"]}, "neither MBPP format"),
    ("mbpp", {"task_id": "11", "text": "t", "code": "x", "test_list": ["assert 1"]}, "should be int"),
    ("mbpp", {"task_id": 11, "text": "t", "code": "def f(:", "test_list": ["assert 1"]}, "do not parse"),
    ("stdio", {"problem": "p", "tests": {"inputs": ["1"], "outputs": []}}, "equally long"),
    ("stdio", {"problem": "p", "tests": {"inputs": [1], "outputs": [2]}}, "strings"),
    ("stdio", {"description": "d", "test_list": [{"input": "1"}]}, "'input' and 'output'"),
    ("stdio", {"description": "d", "test_list": [{"input": "1", "output": ["1"]}], "starter_code": "x = 1"},
     "no function definition"),
    ("stdio", {"text": "what is this"}, "unknown format"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, name, row, message):
    path = tmp_path / "data.jsonl"
    good = {"humaneval": {"task_id": "X/1", "prompt": "def g():\n", "entry_point": "g",
                          "test": "def check(candidate):\n    assert candidate() is None\n"},
            "mbpp": {"task_id": 12, "text": "t", "code": "def g(): pass", "test_list": ["assert g() is None"]},
            "stdio": {"problem": "p", "tests": {"inputs": ["1\n"], "outputs": ["1\n"]}}}[name]
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_task(name, str(path))
    assert f"{path}:3" in str(info.value)


def test_bad_json_and_missing_files_are_data_errors(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"task_id": "X/0"\n')
    with pytest.raises(DataError, match=rf"{path}:1: not valid JSON"):
        load_task("humaneval", str(path))
    with pytest.raises(DataError, match="no such file"):
        load_task("mbpp", str(tmp_path / "nowhere" / "mbpp.jsonl"))  # a path, never tried as a hub name
    with pytest.raises(ValueError, match="unknown task"):
        load_task("gsm9k", str(path))
    assert looks_like_hub_name("openai/openai_humaneval") and looks_like_hub_name("mbpp")
    assert not any(looks_like_hub_name(p) for p in ("../shared/data/x", "data/mbpp.jsonl", "/abs/path", str(path)))


@pytest.mark.slow  # importing `datasets` takes 5-20 s
def test_a_hub_name_is_tried_through_datasets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the hub load fails, with a clear message
    try:
        import datasets  # noqa: F401
        says = "no-such-owner/no-such-dataset.*Hugging Face"
    except ImportError:  # the optional package is not installed (as in CI): the error says that instead
        says = "no-such-owner/no-such-dataset.*`datasets` package is not installed"
    with pytest.raises(DataError, match=says):
        load_task("stdio", "no-such-owner/no-such-dataset")
