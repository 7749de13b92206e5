"""pass^k / min@k (callbacks.estimators.pass_pow) against enumeration of all k-subsets in exact arithmetic, the
tau-bench closed form, the exact gradient of a toy policy, ties, dtypes and configuration errors."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import brute_force as bf
import pytest
import torch
from estimator_testing import D, close, t
from test_estimator_properties import THETA, exact_expected_gradient, exact_objective_gradient

from callbacks.estimators import mean_weights, pass_pow_k, pass_pow_k_weights


def brute_min(values: list) -> tuple[Fraction, list[Fraction]]:
    """(value, loo-1 weights) of f(I) = min over I, straight from the definition over all k-subsets."""
    g = [bf.frac(x) for x in values]
    return g, (lambda s: min(g[i] for i in s))


def random_group(rng: random.Random, n: int, kind: str) -> list[float]:
    if kind == "binary":
        return [float(rng.random() < 0.6) for _ in range(n)]
    if kind == "ties":
        return [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(n)]
    return [rng.random() for _ in range(n)]


@pytest.mark.parametrize("kind", ["binary", "real", "ties"])
@pytest.mark.parametrize("n", range(2, 9))
def test_value_and_weights_match_enumeration_of_all_k_subsets(n, kind):
    rng = random.Random(100 * n + len(kind))
    groups = [random_group(rng, n, kind) for _ in range(3)]
    rewards = t(groups)
    for k in range(1, n + 1):
        values, weights = pass_pow_k(rewards, k), pass_pow_k_weights(rewards, k)
        for row, group in enumerate(groups):
            g, fmin = brute_min(group)
            close(values[row], [bf.u_value(n, k, fmin)])
            expected = bf.rloo(g) if k == 1 else bf.u_loo_minus_1(n, k, fmin)
            close(weights[row], expected)


def test_binary_closed_forms_of_tau_bench():
    """pass^k = C(c, k) / C(G, k) (Yao et al. 2024); weights -C(c, k-1) / C(G, k) on failures, 0 on successes."""
    for n in range(2, 9):
        for c in range(n + 1):
            rewards = t([[1.0] * c + [0.0] * (n - c)])
            for k in range(2, n + 1):
                close(pass_pow_k(rewards, k), [Fraction(math.comb(c, k), math.comb(n, k))])
                fail = Fraction(-math.comb(c, k - 1), math.comb(n, k))
                close(pass_pow_k_weights(rewards, k), [0] * c + [fail if c < n else 0] * (n - c))


def test_weights_are_unbiased_for_the_min_at_k_gradient():
    reward = t([1.0, 0.0, 0.4, 0.4])  # real rewards with a tie
    for g, k in [(4, 2), (4, 3), (3, 3)]:
        est = exact_expected_gradient(THETA, reward, g, lambda tup, k=k: pass_pow_k_weights(reward[tup], k))
        ref = exact_objective_gradient(THETA, k, lambda tup: min(float(reward[i]) for i in tup))
        assert torch.allclose(est, ref, atol=1e-9, rtol=0), (est, ref)


def test_ties_get_bitwise_equal_weights_and_constant_groups_exact_zeros():
    rewards = t([[0.3, 0.7, 0.3, 0.7, 0.3, 1.0], [0.5] * 6])
    w = pass_pow_k_weights(rewards, 3)
    assert w[0, 0] == w[0, 2] == w[0, 4] and w[0, 1] == w[0, 3]
    assert torch.equal(w[1], torch.zeros(6, dtype=D)) and not torch.signbit(w[1]).any()


def test_k_equal_1_is_the_mean_reward_and_dtypes_follow_the_rewards():
    rewards = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pass_pow_k_weights(rewards.double(), 1), mean_weights(rewards.double()))
    assert torch.allclose(pass_pow_k(rewards.double(), 1), rewards.double().mean(-1), atol=1e-15)
    assert pass_pow_k_weights(rewards, 2).dtype == torch.float32
    assert pass_pow_k((rewards > 0.5).int(), 2).dtype == torch.get_default_dtype()
    assert pass_pow_k_weights(rewards > 0.5, 2).dtype == torch.get_default_dtype()


def test_group_smaller_than_k_is_a_configuration_error():
    with pytest.raises(ValueError, match="G=3 is smaller than k=4"):
        pass_pow_k_weights(torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="G=3 is smaller than k=4"):
        pass_pow_k(torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="k must"):
        pass_pow_k(torch.ones(2, 3), 0)
