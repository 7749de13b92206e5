"""MaxRL to order K (callbacks.estimators.max_likelihood): the harmonic mixture of pass@k estimators against
enumeration of all k-subsets, the exact policy gradient, and the exact relation to the peers' (r - mean r)/mean r."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import brute_force as bf
import pytest
import torch
from estimator_testing import D, close, t
from test_estimator_properties import THETA, exact_expected_gradient, exact_objective_gradient

from callbacks.estimators import max_likelihood_value, max_likelihood_weights, pass_at_k, passk_weights


def brute_weights(group: list, max_k: int) -> tuple[Fraction, list[Fraction]]:
    """sum_{k<=K} (value, loo-1 weights) / k, on the U-statistic scale (k = 1: RLOO / G), by enumeration."""
    g = [bf.frac(x) for x in group]
    n = len(g)

    def fmax(s):
        return max(g[i] for i in s)

    value = sum((bf.u_value(n, k, fmax) / k for k in range(1, max_k + 1)), Fraction(0))
    weights = [w / n for w in bf.rloo(g)]
    for k in range(2, max_k + 1):
        weights = [a + b / k for a, b in zip(weights, bf.u_loo_minus_1(n, k, fmax))]
    return value, weights


@pytest.mark.parametrize("kind", ["binary", "real", "ties"])
@pytest.mark.parametrize("n", range(2, 9))
def test_value_and_weights_match_enumeration_for_every_order(n, kind):
    rng = random.Random(7 * n + len(kind))
    draw = {"binary": lambda: float(rng.random() < 0.5), "real": rng.random,
            "ties": lambda: rng.choice([0.0, 0.5, 1.0])}[kind]
    groups = [[draw() for _ in range(n)] for _ in range(3)]
    rewards = t(groups)
    for max_k in [*range(1, n + 1), None]:
        values, weights = max_likelihood_value(rewards, max_k), max_likelihood_weights(rewards, max_k)
        for row, group in enumerate(groups):
            value, expected = brute_weights(group, n if max_k is None else max_k)
            close(values[row], [value])
            close(weights[row], expected)


def test_one_pass_equals_the_sum_of_pass_at_k_estimators():
    rewards = torch.rand(16, 12, generator=torch.Generator().manual_seed(3), dtype=D)
    for max_k in (1, 2, 5, 12):
        summed = passk_weights(rewards, 1) / 12 + sum(passk_weights(rewards, k) / k for k in range(2, max_k + 1))
        close(max_likelihood_weights(rewards, max_k), summed.flatten(), tol=1e-12)
        close(max_likelihood_value(rewards, max_k), sum(pass_at_k(rewards, k) / k for k in range(1, max_k + 1)),
              tol=1e-12)


def test_binary_k_equal_g_is_the_peers_advantage_plus_a_leave_one_out_baseline():
    """Derivation (docs/estimators.md): with c >= 1 correct of G, G w_i = (r_i - rbar)/rbar + 1 - mean_{j != i} r_j;
    c = 0 gives zeros (as the peers' convention); correct samples get 1/c - (c-1)/(G(G-1)) on the sum scale."""
    for n in range(2, 9):
        for c in range(n + 1):
            r = [1.0] * c + [0.0] * (n - c)
            w = max_likelihood_weights(t([r]), None)[0]
            if c == 0:
                assert torch.equal(w, torch.zeros(n, dtype=D))
                continue
            rbar = Fraction(c, n)
            peers = [(Fraction(x) - rbar) / rbar for x in r]
            loo = [Fraction(c - x, n - 1) for x in (int(v) for v in r)]
            close(w * n, [p + 1 - b for p, b in zip(peers, loo)], tol=1e-12)
            close(w[:1], [Fraction(1, c) - Fraction(c - 1, n * (n - 1))], tol=1e-12)


def test_weights_are_unbiased_for_the_truncated_log_likelihood_and_the_peers_are_not():
    """E[sum_i w_i grad log pi(y_i)] = grad sum_{k<=K} pass@k / k = (1 - (1-p)^K) grad log p exactly; the peers'
    (r - rbar)/rbar (zero at rbar = 0), divided by G, has expectation (1 - (1-p)^G - p (1-p)^(G-1)) grad log p:
    its implicit baseline 1[c >= 1] / G depends on the sample's own reward through c."""
    reward = t([1.0, 0.0, 0.0, 0.0])  # outcome 0 succeeds
    p = float(torch.softmax(THETA, 0)[0])
    grad_p = exact_objective_gradient(THETA, 1, lambda tup: float(reward[tup[0]]))
    for g, max_k in [(3, 1), (3, 2), (3, 3), (4, 4), (4, 2)]:
        est = exact_expected_gradient(THETA, reward, g, lambda tup, k=max_k: max_likelihood_weights(reward[tup], k))
        ref = sum(exact_objective_gradient(THETA, k, lambda tup: max(float(reward[i]) for i in tup)) / k
                  for k in range(1, max_k + 1))
        assert torch.allclose(est, ref, atol=1e-12, rtol=0), (est, ref)
        assert torch.allclose(ref, (1 - (1 - p) ** max_k) * grad_p / p, atol=1e-12, rtol=0)

        def peers(tup, g=g):
            r = reward[tup]
            mean = r.mean(-1, keepdim=True)
            return torch.where(mean > 0, (r - mean) / mean.clamp_min(1e-300), torch.zeros_like(r)) / g

        est_peers = exact_expected_gradient(THETA, reward, g, peers)
        coef = 1 - (1 - p) ** g - p * (1 - p) ** (g - 1)
        assert torch.allclose(est_peers, coef * grad_p / p, atol=1e-12, rtol=0), (est_peers, coef * grad_p / p)


def test_full_order_sum_identity_and_stability_at_g_512():
    """sum_{j=0}^{a} C(a, j) / C(m, j) = (m+1)/(m+1-a): a correct sample's K = G weight without the RLOO term is 1/c."""
    n = 512
    for c in (1, 2, 17, 256, 511, 512):
        rewards = t([[1.0] * c + [0.0] * (n - c)])
        w = max_likelihood_weights(rewards, None)[0]
        assert torch.isfinite(w).all()
        expected = Fraction(1, c) - Fraction(c - 1, n * (n - 1))
        assert math.isclose(float(w[0]), float(expected), rel_tol=1e-12, abs_tol=1e-300)
        assert math.isclose(float(w[-1]) if c < n else 0.0, float(Fraction(-c, n * (n - 1))) if c < n else 0.0,
                            rel_tol=1e-12)


def test_order_above_the_group_size_is_a_configuration_error():
    with pytest.raises(ValueError, match="G=4 is smaller than k=5"):
        max_likelihood_weights(torch.ones(2, 4), 5)
    with pytest.raises(ValueError, match="k must"):
        max_likelihood_value(torch.ones(2, 4), 0)
    assert max_likelihood_weights(torch.ones(2, 4, dtype=torch.float32)).dtype == torch.float32
