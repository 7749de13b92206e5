"""Per-sample weights (sequence-level advantages) for k-sample objectives, and their value estimates.

Shapes: B prompts x G samples; every function takes [B, G] tensors and works on all prompts at once.
See shared/docs/objectives.md for the conventions; docs/estimators.md for formulas and benchmarks.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import torch
from torch import Tensor

from callbacks._estimators_common import (
    check_k,
    check_rewards,
    comb,
    comb_table,
    group_sum,
    out_dtype,
    take,
    tie_groups,
    unsort,
)


def mean_weights(rewards: Tensor, normalize: Literal["none", "group_std"] = "none", eps: float = 1e-6) -> Tensor:
    """Leave-one-out mean-reward weights (k = 1): w_i = r_i - mean_{j != i} r_j.

    This is the single RLOO/GRPO advantage of the project (Ahmadian et al. 2024, "Back to Basics", RLOO;
    Shao et al. 2024, DeepSeekMath, GRPO). With normalize="group_std" the weights are divided by
    (std + eps) where std is the *sample* standard deviation of the group's rewards (Bessel-corrected,
    divisor G - 1, as torch.std and TRL's GRPO). Normalising changes the per-prompt weighting (it is not an
    unbiased gradient of the mean reward across prompts), so it is off by default.
    Scale: these are per-sample advantages, the *mean* (1/G) sum_i w_i grad log pi(y_i) is unbiased for
    grad E[r]; the k >= 2 weights below are U-statistics whose *sum* is unbiased for grad J_k (the spec's
    formulas for both), so they are G times smaller for the same signal (see docs/estimators.md).

    rewards: [B, G] with G >= 2. Returns [B, G] in the rewards' dtype (float default for int rewards).
    """
    check_rewards(rewards)
    if normalize not in ("none", "group_std"):
        raise ValueError(f"normalize must be 'none' or 'group_std', got {normalize!r}")
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError(f"leave-one-out weights need a group size G >= 2, got G={n}")
    r = rewards.double()
    # (n r_i - sum_j r_j) / (n - 1): one expression, so tied rewards get bitwise-equal weights
    w = (n * r - r.sum(-1, keepdim=True)) / (n - 1)
    if normalize == "group_std":
        w = w / (r.std(dim=-1, keepdim=True, correction=1) + eps)
    return w.to(out_dtype(rewards))


def pass_at_k(rewards: Tensor, k: int) -> Tensor:
    """Unbiased estimate of pass@k (binary rewards) or max@k (real rewards) from G >= k samples.

    rho_g(G, k) = (1 / C(G, k)) * sum_{i=k..G} C(i-1, k-1) * g_(i), with g sorted ascending; for 0/1
    rewards this equals Chen et al. 2021's 1 - C(G-c, k)/C(G, k) (Walder & Karkhanis 2025, PKPO,
    arXiv 2505.15201). Cost O(G log G) per prompt.

    rewards: [B, G]. Returns [B] in the rewards' dtype.
    """
    check_rewards(rewards)
    n = rewards.shape[-1]
    check_k(n, k)
    g = rewards.double().sort(dim=-1).values
    # coef[i-1] = C(i-1, k-1) / C(G, k) for ranks i = 1..G
    coef = comb_table(n - 1, k - 1, 1, comb(n, k), rewards.device)
    return (g * coef).sum(-1).to(out_dtype(rewards))


Baseline = Literal["none", "loo", "loo-1"]


def passk_min_group_size(k: int, baseline: Baseline = "loo-1") -> int:
    """The smallest G that passk_weights accepts for this k: k; k + 1 for "loo" with k >= 2 (Eq. 29 needs
    k-subsets of the G - 1 other samples); 2 for the k = 1 leave-one-out weights ("loo", "loo-1")."""
    if k == 1:
        return 1 if baseline == "none" else 2
    return k + 1 if baseline == "loo" else k


def passk_weights(rewards: Tensor, k: int, baseline: Baseline = "loo-1") -> Tensor:
    """Unbiased pass@k / max@k policy-gradient weights (Walder & Karkhanis 2025, PKPO, arXiv 2505.15201).

    f(y_1..y_k) = max_i r_i. With g sorted ascending (1-based ranks) and C = C(G, k):
    - "none" (plain): s_(i) = [C(i-1, k-1) g_(i) + sum_{j>i} C(j-2, k-2) g_(j)] / C.
    - "loo" (Eq. 29): s_i - (k / (G-1)) * rho_g(g without i, k); needs G > k.
    - "loo-1" (default, Eq. 33): s_i - (k / G) * rho_g(g without i, k-1)
        = [C(i-1, k-1) g_(i) - sum_{j<i} C(j-1, k-2) g_(j)] / C; binary: C(G-c, k-1)/C for correct
        samples, 0 for incorrect ones; all-equal groups get exact zeros. With G = k this is Tang et al.
        2025's leave-one-out (the best sample gets r_(1) - r_(2), the rest 0).
    sum_i w_i grad log pi(y_i) is unbiased for grad E[max of k samples] under every baseline.
    k = 1: "loo" and "loo-1" return mean_weights(rewards) (RLOO, on the advantage scale: G times the
    U-statistic scale of k >= 2); "none" returns the rewards themselves.
    Ties: tied rewards get bitwise-equal weights (averaged over the tie group). Cost O(G log G).

    rewards: [B, G], binary or real, G >= k. Returns [B, G] in the rewards' dtype.
    """
    check_rewards(rewards)
    if baseline not in get_args(Baseline):
        raise ValueError(f"baseline must be one of {', '.join(map(repr, get_args(Baseline)))}, got {baseline!r}")
    n = rewards.shape[-1]
    check_k(n, k)
    if baseline == "loo" and n == k:
        raise ValueError(f"baseline 'loo' is undefined for G == k (G={n}, k={k}); use 'loo-1' or raise G")
    if k == 1:
        if baseline == "none":
            return rewards.to(out_dtype(rewards))
        return mean_weights(rewards)
    dev = rewards.device
    order, lower, size, gid = tie_groups(rewards.double())
    g = rewards.double().gather(-1, order)
    cnk = comb(n, k)
    if baseline == "loo-1":
        # per tie group: r * C(L, k-1)/C minus the exact expected lower sum; tie-mates share L, so the
        # weights are equal and an all-equal group gives exact zeros (C(0, k-1) = 0)
        return _loo_minus_1_sorted(g, lower, size, gid, k, n, order).to(out_dtype(rewards))
    a = comb_table(n - 1, k - 1, 1, cnk, dev)  # a[i-1] = C(i-1, k-1) / C
    zero = torch.zeros(1, dtype=torch.float64, device=dev)
    b = torch.cat([zero, comb_table(n - 2, k - 2, 1, cnk, dev)])  # b[j-1] = C(j-2, k-2) / C
    above = _exclusive_rev_cumsum(b * g)
    s = a * g + above
    if baseline == "loo":
        den = (n - 1) * comb(n - 1, k)
        c_low = comb_table(n - 1, k - 1, k, den, dev)  # k/(n-1) * C(j-1, k-1) / C(n-1, k), ranks j < i
        c_high = torch.cat([zero, comb_table(n - 2, k - 1, k, den, dev)])  # ... C(j-2, k-1) ..., ranks j > i
        below = _exclusive_cumsum(c_low * g)
        above_k = _exclusive_rev_cumsum(c_high * g)
        s = s - below - above_k
    # tied rewards have equal weights in exact arithmetic; averaging makes them bitwise equal
    s = group_sum(s, gid) / size
    return unsort(s, order).to(out_dtype(rewards))


def _exclusive_cumsum(x: Tensor) -> Tensor:
    """y[..., i] = sum_{j < i} x[..., j]."""
    return x.cumsum(-1) - x


def _exclusive_rev_cumsum(x: Tensor) -> Tensor:
    """y[..., i] = sum_{j > i} x[..., j]."""
    return x.flip(-1).cumsum(-1).flip(-1) - x


def _lower_sum(values: Tensor, lower: Tensor, beta: Tensor) -> Tensor:
    """sum over elements strictly below each element (sorted positions < lower) of beta * values."""
    csum = torch.nn.functional.pad((beta * values).cumsum(-1), (1, 0))
    return csum.gather(-1, lower)


def _group_beta(lower: Tensor, size: Tensor, k: int, n: int) -> Tensor:
    """Expected C(pos-1, k-2)/C(n,k) over a uniformly random order of each tie group:
    (C(L+tau, k-1) - C(L, k-1)) / tau / C(n, k) by the hockey-stick identity."""
    t = comb_table(n, k - 1, 1, comb(n, k), lower.device)
    return (take(t, lower + size.long()) - take(t, lower)) / size


def _loo_minus_1_sorted(g: Tensor, lower: Tensor, size: Tensor, gid: Tensor, k: int, n: int, order: Tensor) -> Tensor:
    t_km1 = comb_table(n, k - 1, 1, comb(n, k), g.device)
    w = g * take(t_km1, lower) - _lower_sum(g, lower, _group_beta(lower, size, k, n))
    return unsort(w, order)


def chen_passk_weights(rewards: Tensor, k: int, eps: float = 1e-6) -> Tensor:
    """Analytic pass@k advantages of Chen et al. 2025 ("Pass@k Training", arXiv 2508.10751), binary only.

    R = rho(G, c, k) = 1 - C(G-c, k)/C(G, k), sigma = sqrt(R (1 - R));
    correct: (1 - R) / (sigma + eps); incorrect: (1 - R - C(G-c-1, k-1)/C(G-1, k-1)) / (sigma + eps);
    all zero when sigma = 0. NOT an unbiased pass@k gradient across prompts (dividing by sigma
    over-weights easy and hard prompts); a named variant, not the default.

    rewards: [B, G] with values in {0, 1}, G >= k. Returns [B, G] in the rewards' dtype.
    """
    check_rewards(rewards)
    n = rewards.shape[-1]
    check_k(n, k)
    r = rewards.double()
    if not bool(((r == 0) | (r == 1)).all()):
        raise ValueError("chen_passk_weights needs binary rewards (0/1); use passk_weights for real rewards")
    c = r.sum(-1).long()
    dev = rewards.device
    fail_k, fail_km1 = _chen_tables(n, k, dev)
    big_r = 1.0 - take(fail_k, c)
    sigma = (big_r * (1.0 - big_r)).clamp_min(0).sqrt()
    pos = (1.0 - big_r) / (sigma + eps)
    neg = (1.0 - big_r - take(fail_km1, c)) / (sigma + eps)
    w = torch.where(r == 1, pos.unsqueeze(-1), neg.unsqueeze(-1))
    w = torch.where((sigma == 0).unsqueeze(-1), torch.zeros_like(w), w)
    return w.to(out_dtype(rewards))


@functools.lru_cache(maxsize=64)
def _chen_tables(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """C(G-c, k)/C(G, k) and C(G-c-1, k-1)/C(G-1, k-1) over c = 0..G (exact ints, one rounding each)."""
    fail_k = [comb(n - c, k) / comb(n, k) for c in range(n + 1)]
    fail_km1 = [comb(n - c - 1, k - 1) / comb(n - 1, k - 1) for c in range(n + 1)]
    return (torch.tensor(fail_k, dtype=torch.float64, device=device),
            torch.tensor(fail_km1, dtype=torch.float64, device=device))


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
    w = pick * r - tie_mean_others * (pick - take(t_km1, lower)) - _lower_sum(r, lower, _group_beta(lower, size, k, n))
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


# re-exported: maj@k lives in its own module to keep files small
from callbacks._estimators_majority import (  # noqa: E402
    Method as MajorityMethod,
    majority_at_k,
    majority_weights,
    resolve_method as majority_method,
)
from callbacks._estimators_budget import budget_selection_weights, dual_update  # noqa: E402

__all__ = [
    "Baseline",
    "MajorityMethod",
    "bon_at_k",
    "bon_weights",
    "budget_selection_weights",
    "chen_passk_weights",
    "dual_update",
    "majority_at_k",
    "majority_method",
    "majority_weights",
    "mean_weights",
    "pass_at_k",
    "passk_min_group_size",
    "passk_weights",
]
