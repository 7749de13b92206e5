"""Mean reward (k = 1): the objective every inference-aware one is compared against."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from callbacks.estimators import mean_weights
from callbacks.objective import Groups, Objective


class MeanReward(Objective):
    """Maximise expected reward with leave-one-out baselines (RLOO; GRPO with `normalize="group_std"`).

    Args:
        normalize: "none" (RLOO, the default) or "group_std" (divide by the group's reward std, as GRPO does;
            this reweights prompts by how mixed their rewards are).
        eps: added to the std when normalising, so all-equal groups get zero weights, not NaN.
    """

    k = 1

    def __init__(self, normalize: Literal["none", "group_std"] = "none", eps: float = 1e-6) -> None:
        self.normalize = normalize
        self.eps = eps
        self._value = 0.0

    def identity(self) -> dict:
        return {"normalize": self.normalize}

    def weights(self, groups: Groups, step: int) -> Tensor:
        self._value = float(groups.rewards.float().mean())
        return mean_weights(groups.rewards, normalize=self.normalize, eps=self.eps)
