"""pass@k / max@k (Walder & Karkhanis 2025, PKPO, arXiv 2505.15201): value estimate and per-sample weights,
plus Chen et al. 2025's analytic pass@k advantages.

Shapes: B prompts x G samples; [B, G] tensors in, all prompts at once. docs/estimators.md has the formulas.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from callbacks.estimators.common import (
    check_choice,
    check_k,
    check_rewards,
    comb,
    comb_table,
    group_sum,
    loo_minus_1_sorted,
    out_dtype,
    take,
    tie_groups,
    unsort,
)
from callbacks.estimators.mean import mean_weights


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
    check_choice(baseline, Baseline, "baseline")
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

def _loo_minus_1_sorted(g: Tensor, lower: Tensor, size: Tensor, gid: Tensor, k: int, n: int, order: Tensor) -> Tensor:
    w = loo_minus_1_sorted(g, lower, size, comb_table(n, k - 1, 1, comb(n, k), g.device))
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
