"""ChatArithmetic: held-out validation problems, the lenient final-number verifier, voting keys and the noisy
best-of-N score."""

from __future__ import annotations

import pytest

from datamodules.tasks import ChatArithmetic
from datamodules.tasks.chat_arithmetic import final_number, noisy_score, split_of


def problems(task: ChatArithmetic) -> set[tuple[int, str, int]]:
    return {(r.meta["a"], r.meta["op"], r.meta["b"]) for r in task.records}


def test_validation_problems_never_appear_in_training_whatever_the_seeds():
    val = problems(ChatArithmetic(split="val", num_records=20_000, seed=2))
    held_out = sum(split_of(f"{a}+{b}", 0.1) == "val" for a in range(100) for b in range(100))
    assert len(val) == held_out and 900 < held_out < 1100  # every held-out addition, about 10% of 100 x 100
    for seed in (0, 1, 7):
        train = problems(ChatArithmetic(split="train", num_records=20_000, seed=seed))
        assert len(train) == 10_000 - held_out
        assert not train & val


def test_splits_are_decided_by_the_problem_not_the_seed():
    assert {split_of("37+58", 0.1) for _ in range(3)} == {split_of("37+58", 0.1)}
    first, second = ChatArithmetic(split="val", num_records=64, seed=2), ChatArithmetic(split="val", num_records=64,
                                                                                         seed=3)
    assert problems(first) != problems(second)  # other problems, same held-out share
    assert ChatArithmetic(split="val", num_records=64, seed=2).records == first.records


def test_records_are_chat_messages_with_operands_of_up_to_two_digits():
    record = ChatArithmetic(split="train", num_records=5, seed=0).records[0]
    a, b = record.meta["a"], record.meta["b"]
    assert record.prompt is None
    assert record.messages == [{"role": "user", "content": f"What is {a} + {b}?"}]
    assert 0 <= a <= 99 and 0 <= b <= 99 and record.reference == str(a + b)
    system = ChatArithmetic(num_records=1, system_prompt="Be brief.").records[0].messages[0]
    assert system == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("completion, expected", [
    ("The sum of 37 and 58 is 95.", "95"),
    ("37 + 58 = 95\n\nSo the answer is **95**.", "95"),
    ("95.0", "95"),
    ("It is 1,095 or so", "1095"),
    ("-3", "-3"),
    ("I cannot add these numbers.", None),
])
def test_final_number_reads_the_last_number_of_free_form_text(completion, expected):
    assert final_number(completion) == expected


def test_verdict_rewards_the_final_number_and_votes_with_it():
    task = ChatArithmetic(split="train", num_records=1, seed=0, score_flip_prob=0.0)
    record = task.records[0]
    a, b, result = record.meta["a"], record.meta["b"], record.reference
    right = task.verify(record, f"Adding {a} and {b} gives {result}.")
    wrong = task.verify(record, f"{a} + {b} = {int(result) + 10}")
    assert (right.reward, right.answer, right.score) == (1.0, result, 1.0)
    assert (wrong.reward, wrong.answer, wrong.score) == (0.0, str(int(result) + 10), 0.0)
    assert task.verify(record, "no idea").answer is None  # never votes


def test_noisy_score_flips_at_the_given_rate_and_is_deterministic():
    flips = [noisy_score(True, f"prompt\x00completion {i}", 0.25) == 0.0 for i in range(4000)]
    assert abs(sum(flips) / len(flips) - 0.25) < 0.03
    assert noisy_score(False, "x", 0.25) == noisy_score(False, "x", 0.25)
    assert noisy_score(True, "x", 0.0) == 1.0 and noisy_score(False, "x", 1.0) == 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        ChatArithmetic(split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        ChatArithmetic(val_fraction=1.0)
