"""Mean reward (k = 1): the leave-one-out RLOO/GRPO weights every k-sample objective is compared against.

Shapes: B prompts x G samples; [B, G] tensors in, all prompts at once. docs/estimators.md has the formulas.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from callbacks.estimators.common import check_rewards, out_dtype


def mean_weights(rewards: Tensor, normalize: Literal["none", "group_std"] = "none", eps: float = 1e-6) -> Tensor:
    """Leave-one-out mean-reward weights (k = 1): w_i = r_i - mean_{j != i} r_j.

    This is the single RLOO/GRPO advantage of the project (Ahmadian et al. 2024, "Back to Basics", RLOO;
    Shao et al. 2024, DeepSeekMath, GRPO). With normalize="group_std" the weights are divided by
    (std + eps) where std is the *sample* standard deviation of the group's rewards (Bessel-corrected,
    divisor G - 1, as torch.std and TRL's GRPO). Normalising changes the per-prompt weighting (it is not an
    unbiased gradient of the mean reward across prompts), so it is off by default.
    Scale: these are per-sample advantages, the *mean* (1/G) sum_i w_i grad log pi(y_i) is unbiased for
    grad E[r]; the k >= 2 weights below are U-statistics whose *sum* is unbiased for grad J_k (PKPO's
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
