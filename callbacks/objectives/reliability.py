"""Objectives beyond pass@k: pass^k, the reliability of k attempts (all must succeed), and MaxRL, the maximum
likelihood of success to order K. Thin layers over callbacks/estimators/pass_pow.py and max_likelihood.py, on the
same scales as PassAtK (see inference_aware.py)."""

from __future__ import annotations

from torch import Tensor

from callbacks.estimators import max_likelihood_value, max_likelihood_weights, pass_pow_k, pass_pow_k_weights
from callbacks.estimators.common import check_choice, check_positive_k
from callbacks.estimators.max_likelihood import resolve_max_k
from callbacks.objectives.inference_aware import Scale, _to_scale
from datamodules.types import Groups
from modules.objective import Objective


class PassPowK(Objective):
    """Train for pass^k (binary rewards: all of k attempts succeed; min@k for real rewards), the reliability metric
    of agent benchmarks (Yao et al. 2024, tau-bench, arXiv 2406.12045), with PKPO's loo-1 weights (Walder &
    Karkhanis 2025) for f = min: only the samples that are the minimum of some k-subset get weight (failures, for
    binary rewards: -C(c, k-1)/C(G, k) each).

    Args:
        k: the attempts that must all succeed; the group size must be >= k. k = 1 is the mean reward (RLOO).
        scale: "advantage" (default; G times the unbiased-sum weights, the scale of MeanReward) or "sum".
    """

    def __init__(self, k: int = 4, scale: Scale = "advantage") -> None:
        check_positive_k(k)
        check_choice(scale, Scale, "scale")
        self.k = k
        self.scale = scale
        self._value = float("nan")

    def weights(self, groups: Groups, step: int) -> Tensor:
        self._value = float(pass_pow_k(groups.rewards, self.k).mean())
        return _to_scale(pass_pow_k_weights(groups.rewards, self.k), self.k, self.scale)


class MaxLikelihood(Objective):
    """Maximum-likelihood RL to order K (MaxRL, Tajwar et al. 2026, arXiv 2602.02710), exactly: trains for
    J_K = sum_{k=1..K} pass@k / k, whose gradient for binary rewards is (1 - (1-p)^K) grad log p (p = the prompt's
    success rate), with the sum of PKPO's unbiased pass@k weights (max@k for real rewards). K = G gives the
    unbiased order-G estimator that the peers approximate with (r - mean r) / mean r (docs/estimators.md).

    Args:
        max_k: the order K, 1 <= K <= the group size; None (default) = the group size G. K = 1 is the mean reward.
        scale: "advantage" (default; G times the unbiased-sum weights, the scale of MeanReward) or "sum".
    """

    def __init__(self, max_k: int | None = None, scale: Scale = "advantage") -> None:
        if max_k is not None:
            check_positive_k(max_k, "max_k")
        check_choice(scale, Scale, "scale")
        self.max_k = max_k
        self.k = 1 if max_k is None else max_k  # the order in force; None resolves to G at the first step
        self.scale = scale
        self._value = float("nan")

    def identity(self) -> dict:
        return {"max_k": self.max_k}

    def check_group_size(self, group_size: int) -> None:
        need = max(self.max_k or 2, 2)
        if group_size < need:
            raise ValueError(f"MaxLikelihood(max_k={self.max_k}) needs at least {need} samples per prompt, but "
                             f"model.group.size is {group_size}; raise model.group.size or lower max_k")

    def weights(self, groups: Groups, step: int) -> Tensor:
        rewards = groups.rewards
        self.k = resolve_max_k(rewards.shape[-1], self.max_k)
        self._value = float(max_likelihood_value(rewards, self.k).mean())
        w = max_likelihood_weights(rewards, self.k)  # U-statistic scale for every K (its k = 1 term is RLOO / G)
        return w * rewards.shape[-1] if self.scale == "advantage" else w
