"""The policy-loss pieces against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from modules.losses import aggregate, clipped_policy_loss, kl_penalty


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
