"""MeanReward(length_penalty=alpha): RLOO weights of the shaped reward r - alpha * tokens, the fixed-price length
penalty that callbacks.BudgetConstrained is compared with in docs/results.md."""

from __future__ import annotations

import pytest
import torch

from callbacks import BudgetConstrained, MeanReward
from datamodules.types import Groups


def groups(rewards: list[list[float]], tokens: list[list[int]]) -> Groups:
    rewards_t = torch.tensor(rewards)
    return Groups(rewards=rewards_t, answer_ids=torch.zeros_like(rewards_t, dtype=torch.long),
                  costs=torch.tensor(tokens))


def test_penalty_makes_shorter_samples_of_equal_reward_weigh_more():
    batch = groups([[1.0, 1.0, 0.0, 0.0]], [[10, 30, 10, 30]])
    plain = MeanReward().weights(batch, step=0)
    penalised = MeanReward(length_penalty=0.01).weights(batch, step=0)
    assert plain[0, 0] == plain[0, 1]
    assert penalised[0, 0] > penalised[0, 1] and penalised[0, 2] > penalised[0, 3]
    # leave-one-out weights of r - alpha * c, worked by hand for sample 0: (1 - 0.1) - mean(0.7, -0.1, -0.3)
    assert penalised[0, 0].item() == pytest.approx(0.9 - (0.7 - 0.1 - 0.3) / 3)
    assert penalised.dtype == batch.rewards.dtype


def test_penalty_equals_the_budget_objective_at_a_fixed_lambda():
    batch = groups([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], [[12, 40, 25], [8, 64, 30]])
    budget = BudgetConstrained(budget=20, lr=0.0, lambda_init=0.02)  # lr 0: lambda stays at 0.02
    assert torch.allclose(MeanReward(length_penalty=0.02).weights(batch, step=0), budget.weights(batch, step=0))


def test_zero_penalty_is_plain_mean_reward_and_negative_is_refused():
    batch = groups([[1.0, 0.0, 0.0]], [[5, 50, 9]])
    assert torch.equal(MeanReward(length_penalty=0.0).weights(batch, step=0), MeanReward().weights(batch, step=0))
    assert MeanReward().identity() == {"normalize": "none"}  # checkpoints of runs without a penalty keep their key
    with pytest.raises(ValueError, match="length_penalty"):
        MeanReward(length_penalty=-0.1)
