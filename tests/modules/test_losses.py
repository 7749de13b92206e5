"""The policy-loss pieces against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from modules.losses import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty,
    terminal_rewards,
    truncated_importance_weights,
    whiten,
)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    loss, clipped = clipped_policy_loss(new, old, torch.tensor([2.0]), clip_low=0.2, clip_high=0.3)
    # A > 0: min(r A, clip(r) A) -> 1.3*2 (clipped), 0.5*2 (unclipped: lower already), 1.1*2
    assert torch.allclose(loss, -torch.tensor([[2.6, 1.0, 2.2]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss, clipped = clipped_policy_loss(new, old, torch.tensor([-1.0]), clip_low=0.2, clip_high=0.3)
    # A < 0: min(-r, -clip(r)) -> -1.5 (unclipped), -0.8 (clipped at 1 - 0.2), -1.1
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1]]))
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]


def test_policy_gradient_at_ratio_one_is_advantage_times_score():
    logprobs = torch.zeros(2, 1, requires_grad=True)
    loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), torch.tensor([3.0, -1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logprobs.grad.tolist() == [[-3.0], [1.0]]


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    log_r = math.log(0.5)  # log(ref / p)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(-log_r)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * log_r ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - log_r)
    assert kl_penalty(ref, ref, "k3").item() == 0.0


def test_kl_estimators_are_unbiased_on_a_categorical():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    exact = float((p * (p / q).log()).sum())
    for estimator in ("k1", "k3"):
        values = kl_penalty(p.log()[None], q.log()[None], estimator)[0]
        assert float((p * values).sum()) == pytest.approx(exact)


def test_aggregation_modes_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "sequence-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    # micro-batches with the minibatch's denominators add up to the minibatch value
    halves = [aggregate(values[i:i + 1], mask[i:i + 1], "token-mean", total_tokens=4) for i in range(2)]
    assert sum(halves).item() == pytest.approx(10 / 4)
    with pytest.raises(ValueError, match="token-mean or sequence-mean"):
        aggregate(values, mask, "sum")


def test_terminal_rewards_put_the_weight_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    rewards = terminal_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_gae_by_hand():
    # one sequence of 3 tokens, reward 1 at the end, V = (0.5, 0.2, 0.4), gamma 0.9, lambda 0.5
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # the 4th entry is padding: it must not leak in
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards = terminal_rewards(torch.tensor([1.0]), mask)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 + 0.9 * 0.0 - 0.4  # 0.6
    d1 = 0.0 + 0.9 * 0.4 - 0.2  # 0.16
    d0 = 0.0 + 0.9 * 0.2 - 0.5  # -0.32
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0]]))


def test_gae_with_lambda_one_gives_discounted_return_minus_value():
    values = torch.tensor([[0.3, -0.2, 0.1]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(terminal_rewards(torch.tensor([2.0]), mask), values, mask, gamma=0.8, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[2.0 * 0.8**2, 2.0 * 0.8, 2.0]]))  # Monte Carlo returns
    assert torch.allclose(advantages, returns - values)


def test_gae_without_a_critic_is_the_sequence_weight_at_every_token():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = torch.tensor([0.7, -0.3])
    advantages, _ = gae(terminal_rewards(weights, mask), torch.zeros(2, 3), mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, weights[:, None] * mask)


def test_whiten_over_masked_entries_only():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # entries 1, 2, 3: mean 2, unbiased std 1
    assert torch.allclose(whiten(values, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-6)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 0.1, -0.5]])
    returns = torch.tensor([[1.0, 1.0, 1.0]])
    loss, clipped = clipped_value_loss(new, old, returns, clip=0.2)
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.32; token 1: 0.81 vs 0.81 -> 0.405;
    # token 2: unclipped (-1.5)^2 = 2.25, clipped (-0.2-1)^2 = 1.44 -> 1.125
    assert torch.allclose(loss, torch.tensor([[0.32, 0.405, 1.125]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    plain, _ = clipped_value_loss(new, old, returns, clip=None)
    assert torch.allclose(plain, torch.tensor([[0.125, 0.405, 1.125]]))


def test_truncated_importance_weights_by_hand():
    trainer = torch.tensor([[0.5, 0.2, 0.9], [0.9, 0.3, 0.3]]).log()
    engine = torch.tensor([[0.25, 0.4, 0.1], [0.1, 0.3, 0.6]]).log()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights = truncated_importance_weights(trainer, engine, mask, cap=3.0)
    # ratios p/q: 2, 0.5, (9: padding -> 0) | 9 -> capped at 3, 1, 0.5
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 0.0], [3.0, 1.0, 0.5]]))
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(trainer, engine, mask, cap=0.5)


def test_importance_weights_correct_the_sampling_distribution_when_uncapped():
    # E_q[w f] = E_p[f] exactly when the cap is above every ratio (here p/q <= 4)
    p, q = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.4, 0.3, 0.2, 0.1])
    f = torch.tensor([1.0, -2.0, 0.5, 3.0])
    weights = truncated_importance_weights(p.log()[None], q.log()[None], torch.ones(1, 4), cap=4.0)[0]
    assert float((q * weights * f).sum()) == pytest.approx(float((p * f).sum()))
