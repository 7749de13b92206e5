"""Loss pieces of the policy update, as pure functions of tensors (torch only).

Shapes: N sequences, L completion tokens. `mask` is 1 on real completion tokens.
References: PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with asymmetric clipping
(DAPO, Yu et al. 2025, arXiv 2503.14476); KL estimators k1/k2/k3 (Schulman 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossAggregation = Literal["token-mean", "sequence-mean"]
KLEstimator = Literal["k1", "k2", "k3"]


def clipped_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float,
                        clip_high: float) -> tuple[Tensor, Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, 1-clip_low, 1+clip_high) A) and where clipping bit.

    logprobs, old_logprobs: [N, L]; advantages: [N] (sequence-level weights) or [N, L] (per token).
    Returns loss [N, L] and a float mask [N, L] of tokens whose clipped term was the one used.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi. [N, L] -> [N, L].

    k1 = log r^-1 (unbiased, high variance, can be negative); k2 = (log r)^2 / 2; k3 = r - 1 - log r
    (unbiased, non-negative), with r = pi_ref / pi.
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


def aggregate(values: Tensor, mask: Tensor, mode: LossAggregation, total_tokens: float | None = None,
              total_sequences: float | None = None) -> Tensor:
    """Reduce per-token values [N, L] to a scalar.

    token-mean: sum over all tokens / number of tokens (long answers weigh more; DAPO's choice).
    sequence-mean: mean over sequences of each sequence's token mean (GRPO's original choice).
    `total_tokens` / `total_sequences` give the denominator of the whole minibatch when N is a micro-batch
    of it, so that accumulated micro-batch gradients equal the minibatch gradient.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / (total_tokens if total_tokens is not None else mask.sum().clamp(min=1))
    if mode == "sequence-mean":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_sequence.sum() / (total_sequences if total_sequences is not None else values.shape[0])
    raise ValueError(f"unknown loss aggregation {mode!r}; choose token-mean or sequence-mean")


# ------------------------------------------------------------------------------------------------- critic (PPO)
# GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
# arXiv 1506.02438. Clipped value loss: the PPO2 reference implementation (OpenAI baselines), as in TRL and veRL.


def terminal_rewards(weights: Tensor, mask: Tensor) -> Tensor:
    """Per-token rewards [N, L]: each sequence's weight [N] on its last real token (mask [N, L]), 0 elsewhere.

    The objective's per-sample weight is the sequence's reward, so GAE works under every objective."""
    mask = mask.to(weights.dtype)
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    return torch.where(last, weights[:, None].expand_as(mask), torch.zeros_like(mask))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and value targets over tokens.

    rewards, values, mask: [N, L] (right-padded; V(s_t) predicted before token t). With delta_t = r_t +
    gamma V(s_{t+1}) - V(s_t) (V after the last real token is 0), A_t = delta_t + gamma lam A_{t+1}.
    Returns advantages [N, L] and returns A + V [N, L], both 0 outside the mask. gamma = lam = 1 and V = 0 give
    A_t = the sequence's reward at every token (the critic-free weighting).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(values - mean) / std over the masked entries of values [N, L] (0 outside the mask); std is unbiased."""
    mask = mask.to(values.dtype)
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    variance = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor,
                       clip: float | None) -> tuple[Tensor, Tensor]:
    """Per-token value loss 0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2) and where the clipped term
    was the larger; clip None = plain 0.5 (V - R)^2. All [N, L]."""
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped)
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns).square()
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def truncated_importance_weights(trainer_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor,
                                 cap: float) -> Tensor:
    """Truncated importance sampling (TIS) weights of a rollout engine's samples: min(pi_trainer / pi_engine, cap)
    per token, 0 on padding. [N, L] -> [N, L] (no gradient: a correction of the sampling distribution).

    A fast engine (vLLM) samples from slightly other probabilities than the trainer computes for the same weights
    (kernels, precision); the policy gradient over engine samples is then biased. Weighing each token's loss by the
    ratio removes the bias; capping it bounds the variance (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training", https://fengyao.notion.site/off-policy-rl; veRL's TIS).
    trainer_logprobs: the trainer's log-probs of the sampled tokens before the update; engine_logprobs: the
    engine's, for the same tokens; mask: 1 on completion tokens; cap: C >= 1.
    """
    if cap < 1:
        raise ValueError(f"the importance-weight cap must be >= 1, got {cap}")
    log_ratio = (trainer_logprobs - engine_logprobs).detach()
    return torch.exp(log_ratio).clamp(max=cap) * mask
