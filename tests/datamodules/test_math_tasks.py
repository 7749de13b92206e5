"""The math tasks on the real datasets: GSM8K (train and test), MATH (the 5000-problem test split) and MATH-500, through
`load_task(name, path)`: every gold answer verifies against its own worked solution, prompts are what the docs say,
equivalent answers vote together, and bad rows are reported with their file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_paths import data_file

from datamodules.math.answers import answer_key, find_boxed
from datamodules.records import DataError
from datamodules.tasks import GSM8K, MATH, load_task

pytest.importorskip("math_verify")


@pytest.mark.parametrize("name,parts,count", [
    ("gsm8k", ("gsm8k", "train.jsonl"), 7473),
    ("gsm8k", ("gsm8k", "test.jsonl"), 1319),
    ("math", ("math", "math500.jsonl"), 500),
    ("math", ("math", "test.jsonl"), 5000),
])
def test_every_gold_answer_verifies_against_its_own_solution(name, parts, count):
    task = load_task(name, data_file(*parts))
    assert len(task) == count
    solutions = [task.reference_completion(r) for r in task.records]
    verdicts = task.verify_batch(task.records, solutions)
    wrong = [(r.id, r.reference, v) for r, v in zip(task.records, verdicts) if v.reward != 1.0 or v.error]
    assert wrong == [], f"{len(wrong)} of {count} gold answers do not verify, e.g. {wrong[:5]}"
    # the voting key of the verified answer is the gold answer's key
    assert all(v.answer == answer_key(r.reference) for r, v in zip(task.records, verdicts))


def test_math500_answer_field_is_the_last_box_of_the_solution(tmp_path):
    """MATH-500 has the gold answer twice: in `answer` and as the last \\boxed{} of `solution` (which is all the
    5000-problem file has). Read without the `answer` field, every record gets an equivalent gold answer."""
    path = data_file("math", "math500.jsonl")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stripped = tmp_path / "math500-no-answer.jsonl"
    stripped.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n" for r in rows))
    with_field, from_box = MATH(path), MATH(str(stripped))
    assert [r.reference for r in with_field.records] == [r["answer"].strip() for r in rows]
    assert [r.reference for r in from_box.records] == [find_boxed(r["solution"])[-1].strip() for r in rows]
    verdicts = with_field.verify_batch(with_field.records, [f"\\boxed{{{r.reference}}}" for r in from_box.records])
    assert [r.id for r, v in zip(with_field.records, verdicts) if v.reward != 1.0] == []


def test_math_exclude_leaves_out_the_validation_problems():
    full, math500 = data_file("math", "test.jsonl"), data_file("math", "math500.jsonl")
    train = MATH(full, exclude=math500)
    assert len(train) == 4500  # the PRM800K split: MATH-500 comes from the 5000-problem test split
    val = {r.messages[-1]["content"] for r in MATH(math500).records}
    assert not val & {r.messages[-1]["content"] for r in train.records}


def test_wrong_answers_score_zero():
    task = load_task("gsm8k", data_file("gsm8k", "test.jsonl"), limit=50)
    wrong = [f"So the total is\n#### {int(r.reference) + 1}" for r in task.records]
    assert all(v.reward == 0.0 and v.error is None for v in task.verify_batch(task.records, wrong))
    math500 = load_task("math", data_file("math", "math500.jsonl"), limit=50)
    verdicts = math500.verify_batch(math500.records, ["I could not solve it."] * 50)
    assert all(v.reward == 0.0 and v.answer is None for v in verdicts)  # nothing extracted: no vote


def test_equivalent_answers_vote_together():
    task = load_task("math", data_file("math", "math500.jsonl"), limit=3)
    record = next(r for r in task.records if r.reference == "\\frac{14}{3}")
    forms = ["\\boxed{\\frac{14}{3}}", "so it is $\\boxed{\\dfrac{14}{3}}$.", "\\boxed{14/3}",
             "The answer is $4\\frac23$."]
    verdicts = task.verify_batch([record] * 4 + [record], [*forms, "\\boxed{4.67}"])
    assert [v.reward for v in verdicts] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert len({v.answer for v in verdicts[:4]}) == 1 and verdicts[4].answer != verdicts[0].answer


def test_gsm8k_records_and_prompts():
    path = data_file("gsm8k", "test.jsonl")
    chat = GSM8K(path, limit=2)
    first = chat.records[0]
    assert first.reference == "18" and first.task == "gsm8k"
    assert first.messages[-1]["role"] == "user" and "#### <number>" in first.messages[-1]["content"]
    assert "<<" not in chat.reference_completion(first) and chat.reference_completion(first).endswith("#### 18")
    shots = GSM8K(path, few_shot=2, limit=1)
    assert len(shots.records) == 1 and len(shots.records[0].messages) == 5  # 2 x (user, assistant) + the question
    assert shots.records[0].id == chat.__class__(path, limit=3).records[2].id  # the examples leave the records
    raw = GSM8K(path, chat=False, instruction="", few_shot=1, limit=1)
    assert raw.records[0].messages is None
    assert raw.records[0].prompt.startswith("Question: ") and raw.records[0].prompt.endswith("\nAnswer:")


def test_math_records_and_prompts():
    task = MATH(data_file("math", "math500.jsonl"), limit=1)
    record = task.records[0]
    assert record.id == "test/precalculus/807.json" and record.reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert "\\boxed{}" in record.messages[-1]["content"]
    assert record.meta["level"] == 2 and record.meta["subject"] == "Precalculus"
    full = MATH(data_file("math", "test.jsonl"), limit=1)
    assert full.records[0].meta["level"] in range(1, 6) and full.records[0].meta["subject"]


@pytest.mark.parametrize("task,row,message", [
    ("gsm8k", {"question": "q"}, "missing field 'answer'"),
    ("gsm8k", {"question": "q", "answer": "no final line"}, "#### <number>"),
    ("gsm8k", {"problem": "p", "solution": "s"}, "use the 'math' task"),
    ("math", {"problem": "p", "solution": "no box here"}, "no \\\\boxed"),
    ("math", {"problem": "p", "solution": "s", "answer": " "}, "gold answer is empty"),
    ("math", {"question": "q", "answer": "#### 1"}, "use the 'gsm8k' task"),
    ("math", {"problem": 3, "solution": "\\boxed{1}"}, "should be str"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, task, row, message):
    good = {"gsm8k": {"question": "q", "answer": "x\n#### 1"}, "math": {"problem": "p", "solution": "\\boxed{1}"}}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good[task]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_task(task, str(path))
    assert f"{path}:2" in str(info.value)


def test_bad_arguments_are_rejected(tmp_path):
    path = data_file("gsm8k", "test.jsonl")
    for kwargs, match in [({"few_shot": -1}, "few_shot"), ({"limit": 0}, "limit"), ({"timeout_s": 0}, "timeout_s"),
                          ({"strategies": ["guess"]}, "unknown"), ({"workers": 0}, "workers")]:
        with pytest.raises(ValueError, match=match):
            GSM8K(path, **kwargs)
    tiny = tmp_path / "one.jsonl"
    tiny.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    with pytest.raises(DataError, match="few_shot=1 needs more than 1"):
        GSM8K(str(tiny), few_shot=1)
