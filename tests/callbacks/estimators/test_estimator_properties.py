"""callbacks.estimators: unbiasedness against the exact gradient of an enumerable toy softmax policy, and exact,
finite results for groups of up to G = 512 samples (no factorial overflow, no precision loss)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import brute_force as bf
import pytest
import torch
from estimator_testing import D, close, t

from callbacks.estimators import (
    bon_weights,
    chen_passk_weights,
    majority_at_k,
    majority_weights,
    mean_weights,
    pass_at_k,
    passk_weights,
)

# ---------------------------------------------------------------------------------------------------- (3)

def exact_expected_gradient(theta, outcomes_reward, g: int, weights_fn):
    """E over all G-tuples of i.i.d. samples of sum_i w_i grad log pi(y_i), enumerated exactly."""
    pi = torch.softmax(theta.detach(), 0)
    n_out = len(pi)
    tuples = torch.tensor(list(itertools.product(range(n_out), repeat=g)))
    prob = pi[tuples].prod(-1)
    w = weights_fn(tuples)  # [T, G]
    score = torch.nn.functional.one_hot(tuples, n_out).to(D) - pi  # grad_theta log pi(y) = e_y - pi
    return (prob[:, None, None] * w[..., None] * score).sum((0, 1))


def exact_objective_gradient(theta, k: int, f_of_tuple):
    """grad of J_k = E over k i.i.d. samples of f, by enumerating all k-tuples and autograd."""
    th = theta.detach().clone().requires_grad_(True)
    pi = torch.softmax(th, 0)
    j = sum(pi[list(tup)].prod() * f_of_tuple(tup) for tup in itertools.product(range(len(theta)), repeat=k))
    (grad,) = torch.autograd.grad(j, th)
    return grad


THETA = torch.tensor([0.3, -0.8, 0.5, -0.1], dtype=D)
REWARD = t([1.0, 0.0, 0.4, 0.4])  # real rewards with a tie


@pytest.mark.parametrize("baseline,g,k", [("none", 4, 2), ("loo", 4, 2), ("loo-1", 4, 2), ("loo-1", 4, 3),
                                          ("loo-1", 3, 3), ("none", 3, 3), ("loo", 5, 3)])
def test_passk_weights_are_unbiased_for_the_max_at_k_gradient(baseline, g, k):
    est = exact_expected_gradient(THETA, REWARD, g, lambda tup: passk_weights(REWARD[tup], k, baseline))
    ref = exact_objective_gradient(THETA, k, lambda tup: max(float(REWARD[i]) for i in tup))
    assert torch.allclose(est, ref, atol=1e-9, rtol=0), (est, ref)


def test_mean_weights_are_unbiased_on_the_advantage_scale():
    """mean_weights is RLOO's r_i - mean_{j != i} r_j: the *mean* over the G samples of w_i grad log pi is
    unbiased for grad E[r] (the sum is G times it, unlike the k >= 2 weights whose sum is unbiased)."""
    g = 3
    est = exact_expected_gradient(THETA, REWARD, g, lambda tup: mean_weights(REWARD[tup]))
    ref = exact_objective_gradient(THETA, 1, lambda tup: float(REWARD[tup[0]]))
    assert torch.allclose(est / g, ref, atol=1e-9, rtol=0)


ANSWER = torch.tensor([0, 1, 1, -1])  # outcome -> answer class (outcomes 1 and 2 give the same answer)
CORRECT = t([1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("g,k", [(4, 2), (4, 3), (3, 3), (5, 4)])
def test_majority_weights_are_unbiased_for_the_maj_at_k_gradient(g, k):
    est = exact_expected_gradient(THETA, CORRECT, g,
                                  lambda tup: majority_weights(ANSWER[tup], CORRECT[tup], k, method="exact"))
    ref = exact_objective_gradient(
        THETA, k, lambda tup: float(bf.majority_f([int(ANSWER[i]) for i in tup], [float(CORRECT[i]) for i in tup],
                                                  tuple(range(k)))))
    assert torch.allclose(est, ref, atol=1e-9, rtol=0), (est, ref)


SCORE = t([0.9, 0.9, 0.2, 0.5])  # outcomes 0 and 1 tie in score with different rewards


@pytest.mark.parametrize("g,k", [(4, 2), (4, 3), (3, 3)])
def test_bon_weights_are_unbiased_for_the_bon_at_k_gradient(g, k):
    est = exact_expected_gradient(THETA, REWARD, g, lambda tup: bon_weights(REWARD[tup], SCORE[tup], k))
    ref = exact_objective_gradient(
        THETA, k, lambda tup: float(bf.bon_f([float(REWARD[i]) for i in tup], [float(SCORE[i]) for i in tup],
                                             tuple(range(k)))))
    assert torch.allclose(est, ref, atol=1e-9, rtol=0), (est, ref)


# ---------------------------------------------------------------------------------------------------- (4)

@pytest.mark.parametrize("k", [1, 2, 8, 64, 256, 511, 512])
def test_passk_is_exact_and_finite_at_g_512(k):
    n = 512
    gen = torch.Generator().manual_seed(k)
    r = (torch.rand(4, n, generator=gen) < torch.tensor([[0.002], [0.1], [0.6], [0.999]])).to(D)
    c = r.sum(-1).long().tolist()
    close(pass_at_k(r, k), [1 - Fraction(math.comb(n - ci, k), math.comb(n, k)) for ci in c], tol=1e-12)
    w = passk_weights(r, k)
    assert torch.isfinite(w).all()
    if k > 1:
        for row, ci in enumerate(c):
            expect = Fraction(math.comb(n - ci, k - 1), math.comb(n, k))
            assert torch.allclose(w[row][r[row] == 1], torch.tensor(float(expect), dtype=D), rtol=1e-12, atol=0)
            assert torch.all(w[row][r[row] == 0] == 0)
    real = torch.rand(4, n, generator=gen, dtype=D)
    for baseline in ("none", "loo", "loo-1"):
        if baseline == "loo" and k == n:
            continue
        assert torch.isfinite(passk_weights(real, k, baseline)).all()
    if k > 1:
        assert torch.isfinite(chen_passk_weights(r, k)).all()
        assert torch.isfinite(bon_weights(real, torch.rand(4, n, generator=gen, dtype=D), k)).all()


def sorted_closed_form(g: list[float], k: int, baseline: str) -> list[Fraction]:
    """The spec's sorted closed forms of the plain and loo-1 max@k weights in exact arithmetic (distinct g)."""
    n, cnk = len(g), math.comb(len(g), k)
    order = sorted(range(n), key=lambda i: g[i])
    out: list[Fraction] = [Fraction(0)] * n
    acc = Fraction(0)
    positions = range(n - 1, -1, -1) if baseline == "none" else range(n)
    for pos in positions:
        rank, value = pos + 1, Fraction(g[order[pos]])
        if baseline == "none":  # [C(i-1, k-1) g_(i) + sum_{j > i} C(j-2, k-2) g_(j)] / C
            out[order[pos]] = (math.comb(rank - 1, k - 1) * value + acc) / cnk
            acc += (math.comb(rank - 2, k - 2) if rank >= 2 and k >= 2 else 0) * value
        else:  # [C(i-1, k-1) g_(i) - sum_{j < i} C(j-1, k-2) g_(j)] / C
            out[order[pos]] = (math.comb(rank - 1, k - 1) * value - acc) / cnk
            acc += math.comb(rank - 1, k - 2) * value
    return out


@pytest.mark.parametrize("k", [2, 64, 256, 511, 512])
@pytest.mark.parametrize("baseline", ["none", "loo-1"])
def test_real_reward_weights_at_g_512_match_exact_arithmetic(k, baseline):
    r = torch.rand(1, 512, generator=torch.Generator().manual_seed(k), dtype=D)
    expect = torch.tensor([float(x) for x in sorted_closed_form(r[0].tolist(), k, baseline)], dtype=D)
    w = passk_weights(r, k, baseline)[0]
    assert torch.allclose(w, expect, rtol=1e-11, atol=1e-13 * float(expect.abs().max()))


def test_float32_inputs_give_float32_outputs_at_g_512():
    r = (torch.rand(2, 512) < 0.3).float()
    for w in (passk_weights(r, 64), bon_weights(r, torch.rand(2, 512), 64), mean_weights(r), pass_at_k(r, 64)):
        assert w.dtype == torch.float32 and torch.isfinite(w).all()


def test_majority_exact_at_g_512_matches_count_composition_reference():
    sizes, correct, invalid, k = [300, 150, 40], [1.0, 0.0, 0.5], 22, 6
    ids = torch.tensor([[c for c, s in enumerate(sizes) for _ in range(s)] + [-1] * invalid])
    corr = t([[correct[c] for c, s in enumerate(sizes) for _ in range(s)] + [0.0] * invalid])
    value, per_class = bf.majority_by_counts(sizes, correct, invalid, k)
    close(majority_at_k(ids, corr, k, method="exact"), [value])
    w = majority_weights(ids, corr, k, method="exact")[0]
    close(torch.stack([w[ids[0] == c][0] for c in range(3)]), per_class)


def test_majority_sampled_is_finite_at_g_512():
    ids = torch.randint(-1, 50, (2, 512), generator=torch.Generator().manual_seed(0))
    w = majority_weights(ids, (ids % 3 == 0).to(D), 128, num_subsets=16)
    assert torch.isfinite(w).all()
