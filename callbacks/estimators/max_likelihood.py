"""Maximum-likelihood RL to order K (MaxRL; Tajwar et al. 2026, "Maximum Likelihood Reinforcement Learning",
arXiv 2602.02710): the harmonic mixture J_K = sum_{k=1..K} pass@k / k, exactly, with PKPO's unbiased pass@k
weights (Walder & Karkhanis 2025, arXiv 2505.15201) for every k at once.

Why: with binary rewards and p = P(success | x), pass@k = 1 - (1-p)^k, so grad pass@k / k = (1-p)^(k-1) grad p
and sum_{k>=1} grad pass@k / k = grad p / p = grad log p (the geometric series, 0 < p <= 1). Truncated at K:
grad J_K = (1 - (1-p)^K) grad log p = pass@K * grad log p. K = 1 is the mean reward; K -> inf is maximum
likelihood of success. For real rewards J_K = sum_k max@k / k (same estimators; no log-likelihood reading).

Shapes: B prompts x G samples; [B, G] tensors in, all prompts at once. docs/estimators.md has the derivation and
the exact relation to the peers' advantage (r - mean r) / mean r.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from callbacks.estimators.common import check_k, check_rewards, comb, loo_minus_1_sorted, out_dtype, tie_groups, unsort
from callbacks.estimators.mean import mean_weights


def resolve_max_k(group_size: int, max_k: int | None) -> int:
    """The order K in force: max_k, or the group size G for None; K > G raises ValueError (check_k)."""
    k = group_size if max_k is None else max_k
    check_k(group_size, k)
    return k


@functools.lru_cache(maxsize=64)
def _harmonic_tables(n: int, max_k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(value table V, loo-1 table T) over x = 0..n, float64 on `device`:
    V(x) = sum_{k=1..K} C(x, k-1) / (k C(n, k)),  T(x) = sum_{k=2..K} C(x, k-1) / (k C(n, k)) = V(x) - 1/n.
    k C(n, k) = n C(n-1, k-1), so each term is C(x, j) / (n C(n-1, j)) with j = k-1: a correctly rounded ratio of
    exact integers; the positive terms are summed with math.fsum (correctly rounded sum), so there is no cancellation.
    """
    def row(x: int, first_j: int) -> float:
        return math.fsum(comb(x, j) / (n * comb(n - 1, j)) for j in range(first_j, max_k))

    value = torch.tensor([row(x, 0) for x in range(n + 1)], dtype=torch.float64, device=device)
    loo = torch.tensor([row(x, 1) for x in range(n + 1)], dtype=torch.float64, device=device)
    return value, loo


def max_likelihood_value(rewards: Tensor, max_k: int | None = None) -> Tensor:
    """Unbiased estimate of J_K = sum_{k=1..K} pass@k / k (max@k for real rewards), K = max_k or G.

    = sum_k pass_at_k(rewards, k) / k, computed in one pass: with g sorted ascending,
    J_K = sum_i V(i-1) g_(i), V(x) = sum_{k=1..K} C(x, k-1) / (k C(G, k)). Cost O(G log G).

    rewards: [B, G], binary or real, 1 <= K <= G. Returns [B] in the rewards' dtype.
    """
    check_rewards(rewards)
    n = rewards.shape[-1]
    k = resolve_max_k(n, max_k)
    g = rewards.double().sort(dim=-1).values
    value, _ = _harmonic_tables(n, k, rewards.device)
    return (g * value[:n]).sum(-1).to(out_dtype(rewards))


def max_likelihood_weights(rewards: Tensor, max_k: int | None = None) -> Tensor:
    """Unbiased MaxRL weights to order K: sum_i w_i grad log pi(y_i) estimates grad J_K, J_K = sum_{k<=K} pass@k / k.

    w = mean_weights(r) / G + sum_{k=2..K} passk_weights(r, k, "loo-1") / k: every term on the U-statistic scale
    (the sum over the group is unbiased; the k = 1 term is RLOO divided by G). The loo-1 weights are linear in the
    table t_k(x) = C(x, k-1) / C(G, k), so the sum over k is the same sorted formula with the table
    T(x) = sum_{k=2..K} t_k(x) / k: w_(i) = T(L_i) g_(i) - sum_{j below i} beta_j g_(j), beta_j = (T(L_j + tau_j) -
    T(L_j)) / tau_j over tie groups (L = strictly lower rewards, tau = tie-group size): common.loo_minus_1_sorted,
    which passk_weights runs with t_k.
    One O(G log G) pass whatever K. Ties get bitwise-equal weights; all-equal groups exact zeros.

    Binary rewards, K = G, c >= 1 correct: correct samples 1/c - (c-1)/(G(G-1)), incorrect ones -c/(G(G-1)); i.e.
    G w_i = (r - mean r)/mean r + (1 - mean_{j != i} r_j): the peers' MaxRL advantage plus a leave-one-out
    baseline (docs/estimators.md derives it).

    rewards: [B, G], binary or real, G >= 2, 1 <= K <= G. Returns [B, G] in the rewards' dtype.
    """
    check_rewards(rewards)
    n = rewards.shape[-1]
    k = resolve_max_k(n, max_k)
    w = mean_weights(rewards.double()) / n
    if k >= 2:
        _, table = _harmonic_tables(n, k, rewards.device)
        order, lower, size, _ = tie_groups(rewards.double())
        g = rewards.double().gather(-1, order)
        w = w + unsort(loo_minus_1_sorted(g, lower, size, table), order)
    return w.to(out_dtype(rewards))
