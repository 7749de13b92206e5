"""Best-of-N bon@k (Chow et al. 2024, "Inference-Aware Fine-Tuning for Best-of-N Sampling", arXiv 2412.15287):
value estimate and loo-1 weights, ties in score averaged.

Shapes: B prompts x G samples; [B, G] tensors in, all prompts at once. docs/estimators.md has the formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from callbacks.estimators.common import (
    check_k,
    check_rewards,
    comb,
    comb_table,
    group_beta,
    group_sum,
    lower_sum,
    out_dtype,
    take,
    tie_groups,
    unsort,
)
from callbacks.estimators.mean import mean_weights


def _bon_parts(rewards: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Shared O(G log G) pieces of bon@k: returns (w_sorted, value, order)."""
    check_rewards(rewards)
    check_rewards(scores, "scores")
    if scores.shape != rewards.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and rewards {tuple(rewards.shape)} must have the same shape")
    n = rewards.shape[-1]
    check_k(n, k)
    order, lower, size, gid = tie_groups(scores.double())
    r = rewards.double().gather(-1, order)
    cnk = comb(n, k)
    t_k = comb_table(n, k, 1, cnk, r.device)
    # a sample with L lower scores and tau tied ones is the pick of (C(L+tau,k) - C(L,k))/tau subsets on
    # average over a uniform tie-break (hockey stick), which is the tie-averaged f
    pick = (take(t_k, lower + size.long()) - take(t_k, lower)) / size
    value = (pick * r).sum(-1)
    if k == 1:
        return r, value, order
    t_km1 = comb_table(n, k - 1, 1, cnk, r.device)
    tie_mean_others = torch.where(size > 1, (group_sum(r, gid) - r) / (size - 1).clamp_min(1), torch.zeros_like(r))
    w = pick * r - tie_mean_others * (pick - take(t_km1, lower)) - lower_sum(r, lower, group_beta(lower, size, k, n))
    return w, value, order


def bon_at_k(rewards: Tensor, scores: Tensor, k: int) -> Tensor:
    """Unbiased estimate of bon@k: the reward of the highest-score sample among k (Chow et al. 2024,
    "Inference-Aware Fine-Tuning for Best-of-N Sampling", arXiv 2412.15287); ties in score averaged.

    Sorted by score, a sample at rank m is the pick in C(m-1, k-1) of the C(G, k) subsets. O(G log G).
    rewards, scores: [B, G], G >= k. Returns [B] in the rewards' dtype. With scores = rewards: max@k.
    """
    return _bon_parts(rewards, scores, k)[1].to(out_dtype(rewards))


def bon_weights(rewards: Tensor, scores: Tensor, k: int) -> Tensor:
    """loo-1 weights for bon@k: w_i = (1/C(G,k)) sum_{|I|=k, i in I} (f(I) - f(I without i)),
    f(I) = reward of the argmax-score sample of I (ties in score: average reward of the tied top).

    Chow et al. 2024 (arXiv 2412.15287) objective with PKPO's loo-1 baseline (Walder & Karkhanis 2025).
    Closed form with score-sorted ranks, L = #lower scores, tau = tie-group size, C = C(G, k):
    w_i = P_i r_i - rbar_i (P_i - C(L, k-1)/C) - sum_{j lower} beta_j r_j, P_i = (C(L+tau,k) - C(L,k))/(tau C),
    rbar_i = mean reward of i's tie-mates, beta_j = (C(L_j+tau_j, k-1) - C(L_j, k-1))/(tau_j C).
    k = 1 returns mean_weights(rewards). O(G log G), vectorised over B.
    rewards, scores: [B, G], G >= k. Returns [B, G] in the rewards' dtype.
    """
    w, _, order = _bon_parts(rewards, scores, k)
    if k == 1:
        return mean_weights(rewards)
    return unsort(w, order).to(out_dtype(rewards))
