"""pass^k / min@k: all k attempts succeed, the reliability metric of agent benchmarks (Yao et al. 2024,
"tau-bench", arXiv 2406.12045), as an unbiased value estimate and loo-1 policy-gradient weights.

f(y_1..y_k) = min_i r_i (pass^k for 0/1 rewards, min@k for real rewards). Because min(S) = -max(-S) for every
set S, the U-statistics of min are those of max on the negated rewards, term by term (f(I) and f(I without i)
alike), so both functions are the pass@k / max@k estimators of pass_at_k.py applied to -r and negated: one
implementation of the sorted O(G log G) formulas, the same conventions (loo-1 baseline, ties, exact binomials).

Shapes: B prompts x G samples; [B, G] tensors in, all prompts at once. docs/estimators.md has the formulas.
"""

from __future__ import annotations

from torch import Tensor

from callbacks.estimators.common import check_rewards, out_dtype
from callbacks.estimators.pass_at_k import pass_at_k, passk_weights


def _negated(rewards: Tensor) -> Tensor:
    """-rewards, exactly (integer and bool rewards become float64 first)."""
    check_rewards(rewards)
    return -(rewards if rewards.is_floating_point() else rewards.double())


def pass_pow_k(rewards: Tensor, k: int) -> Tensor:
    """Unbiased estimate of pass^k (binary rewards: all of k samples correct) or min@k (real rewards).

    (1 / C(G, k)) sum over k-subsets I of min_{i in I} r_i = -rho_g(-r, k); with g sorted ascending this is
    (1 / C(G, k)) sum_{i=1..G-k+1} C(G-i, k-1) g_(i), and for 0/1 rewards with c correct C(c, k) / C(G, k), the
    estimator of Yao et al. 2024 (tau-bench, arXiv 2406.12045). k = 1 is the mean reward. Cost O(G log G).

    rewards: [B, G], binary or real, G >= k (G < k raises ValueError). Returns [B] in the rewards' dtype.
    """
    return (0.0 - pass_at_k(_negated(rewards), k)).to(out_dtype(rewards))  # 0 - x: no -0.0


def pass_pow_k_weights(rewards: Tensor, k: int) -> Tensor:
    """Unbiased pass^k / min@k policy-gradient weights with PKPO's loo-1 baseline (Walder & Karkhanis 2025, Eq. 33).

    w_i = (1 / C(G, k)) sum_{|I| = k, i in I} (min_{j in I} r_j - min_{j in I without i} r_j)
        = -passk_weights(-r, k, "loo-1")_i.
    Sorted ascending (1-based ranks, no ties): w_(i) = (1/C) [C(G-i, k-1) g_(i) - sum_{j>i} C(G-j, k-2) g_(j)]:
    only the subsets where sample i is the minimum count, each with (its reward - the next smallest). Binary
    rewards with c correct: -C(c, k-1) / C(G, k) for an incorrect sample, 0 for a correct one; all-equal groups
    get exact zeros, tied rewards bitwise-equal weights. sum_i w_i grad log pi(y_i) is unbiased for grad pass^k
    (the baseline of sample i depends only on the other samples). k = 1 returns mean_weights(rewards) (RLOO,
    advantage scale), as passk_weights does. Cost O(G log G).

    rewards: [B, G], binary or real, G >= k (G < k raises ValueError). Returns [B, G] in the rewards' dtype.
    """
    return (0.0 - passk_weights(_negated(rewards), k, "loo-1")).to(out_dtype(rewards))
