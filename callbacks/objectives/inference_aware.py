"""Inference-aware objectives: pass@k, majority vote, best-of-N and an inference budget (Objective callbacks).

Each is a thin layer over callbacks.estimators (which holds the math and its tests) that picks the inputs
from `Groups`, keeps the state that must survive a checkpoint (k schedule position, dual variable) and
reports `objective/*` metrics.

Scale. MeanReward's weights are per-sample advantages r_i - mean_{j != i} r_j: the loss averages over
samples and that mean is unbiased. The k-sample estimators return U-statistics whose *sum* over the group is
unbiased (PKPO's normalisation), i.e. G times smaller. With scale="advantage" (the default) these
objectives multiply them by G, so every objective - and a k schedule that ends at k = 1 - feeds the loss on
the same scale (same learning rate and KL balance); scale="sum" returns the estimators' values unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from callbacks.estimators import (
    Baseline,
    MajorityMethod,
    bon_at_k,
    bon_weights,
    budget_selection_weights,
    chen_passk_weights,
    dual_update,
    majority_weights,
    mean_weights,
    pass_at_k,
    passk_min_group_size,
    passk_weights,
)
from callbacks.estimators.common import check_choice, check_positive_k, out_dtype
from datamodules.types import Groups
from modules.objective import Objective

Scale = Literal["advantage", "sum"]
PassAtKBaseline = Literal[Baseline, "chen"]  # the estimators' baselines plus Chen et al.'s analytic variant
ScoreSource = Literal["verifier", "value"]
CostKind = Literal["tokens", "group"]
BudgetSolver = Literal["primal_dual", "selection"]


def _to_scale(weights: Tensor, k: int, scale: str) -> Tensor:
    """U-statistic weights (k >= 2) or advantages (k = 1, mean_weights) -> the requested scale."""
    g = weights.shape[-1]
    if k == 1:
        return weights if scale == "advantage" else weights / g
    return weights * g if scale == "advantage" else weights


class PassAtK(Objective):
    """Train for pass@k (binary rewards) or max@k (real rewards): PKPO, Walder & Karkhanis 2025 (arXiv 2505.15201).

    Args:
        k: the number of samples the objective is evaluated on; the group size must be >= k (> k for "loo").
        baseline: "loo-1" (default, PKPO's lowest-variance unbiased weights), "loo", "none" (plain,
            unbiased, high variance), or "chen" (Chen et al. 2025's analytic advantages; binary rewards only;
            not an unbiased pass@k gradient across prompts).
        k_schedule: optional {step: k} annealing; each entry sets k from that training step on, e.g.
            {0: 8, 1500: 1} (PKPO: train pass@8, then pass@1). Steps before the first entry use `k`.
        scale: "advantage" (default; G times the unbiased-sum weights, the scale of MeanReward) or "sum".
    """

    def __init__(self, k: int = 8, baseline: PassAtKBaseline = "loo-1", k_schedule: dict[int, int] | None = None,
                 scale: Scale = "advantage") -> None:
        check_positive_k(k)
        check_choice(baseline, PassAtKBaseline, "baseline")
        check_choice(scale, Scale, "scale")
        schedule = dict(k_schedule or {})
        for step, value in schedule.items():
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise ValueError(f"k_schedule steps must be integers >= 0, got {step!r}")
            check_positive_k(value, f"k_schedule[{step}]")
        self.k_init = k
        self.k = k
        self.baseline = baseline
        self.k_schedule = dict(sorted(schedule.items()))
        self.scale = scale
        self._value = float("nan")

    def k_at(self, step: int) -> int:
        """The k in force at `step`: the latest schedule entry at or before it, else the constructor's k."""
        k = self.k_init
        for start, value in self.k_schedule.items():
            if start <= step:
                k = value
        return k

    def identity(self) -> dict:
        return {"k": self.k_init, "baseline": self.baseline, "k_schedule": self.k_schedule}

    def check_group_size(self, group_size: int) -> None:
        for k in sorted({self.k_init, *self.k_schedule.values()}):
            need = max(passk_min_group_size(k, "loo-1" if self.baseline == "chen" else self.baseline), 2)
            if group_size < need:
                raise ValueError(
                    f"PassAtK(baseline={self.baseline!r}) with k={k} needs at least {need} samples per prompt, "
                    f"but model.group.size is {group_size}; raise model.group.size or lower k")

    def weights(self, groups: Groups, step: int) -> Tensor:
        self.k = self.k_at(step)
        rewards = groups.rewards
        self._value = float(pass_at_k(rewards, self.k).mean())
        if self.baseline == "chen":  # already an advantage-scale variant; never rescaled
            return chen_passk_weights(rewards, self.k)
        return _to_scale(passk_weights(rewards, self.k, self.baseline), self.k, self.scale)


class MajorityVote(Objective):
    """Train for maj@k, the correctness of the majority answer among k samples (Tang et al. 2025, arXiv 2503.19595).

    Unparsable answers never vote; modal ties count as the average correctness of the tied answers. Weights
    are the loo-1 U-statistic (PKPO), computed exactly over answer-count compositions when affordable and
    otherwise from `num_subsets` uniformly drawn k-subsets (unbiased); objective/exact logs which path ran.

    Args:
        k: number of votes; the group size must be >= k.
        method: "auto" (exact while cheap), "exact" or "sampled".
        num_subsets: k-subsets per prompt for the sampled path.
        seed: seeds the subset draws (plus the step), so runs are reproducible.
        scale: "advantage" (default; the scale of MeanReward) or "sum" (the unbiased-sum U-statistic).
    """

    def __init__(self, k: int = 8, method: MajorityMethod = "auto", num_subsets: int = 256, seed: int = 0,
                 scale: Scale = "advantage") -> None:
        check_positive_k(k)
        check_choice(method, MajorityMethod, "method")
        check_choice(scale, Scale, "scale")
        if num_subsets < 1:
            raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
        self.k = k
        self.method = method
        self.num_subsets = num_subsets
        self.seed = seed
        self.scale = scale
        self._value = float("nan")
        self._exact = float("nan")

    def weights(self, groups: Groups, step: int) -> Tensor:
        info: dict = {}
        gen = torch.Generator(device=groups.rewards.device).manual_seed(self.seed + step)
        w = majority_weights(groups.answer_ids, groups.rewards, self.k, method=self.method,
                             num_subsets=self.num_subsets, generator=gen, info=info)
        self._value = float(info["value"].mean())
        self._exact = float(info["method"] == "exact")
        return _to_scale(w, self.k, self.scale)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "objective/exact": self._exact}


class BestOfN(Objective):
    """Train for bon@k: the true reward of the sample a verifier picks among k (Chow et al. 2024, arXiv 2412.15287).

    Ties in the verifier score count as the average reward of the tied samples. loo-1 weights (PKPO),
    O(G log G) per prompt.

    Args:
        k: N, the samples the verifier chooses from; the group size must be >= k.
        score: "verifier" (the task's cheaper check, `Groups.scores`) or "value" (the critic's last-token value,
            `Groups.values`, which predicts the objective's weight; needs `model.critic.kind` shared or separate).
        scale: "advantage" (default; the scale of MeanReward) or "sum" (the unbiased-sum U-statistic).
    """

    def __init__(self, k: int = 8, score: ScoreSource = "verifier", scale: Scale = "advantage") -> None:
        check_positive_k(k)
        check_choice(score, ScoreSource, "score")
        check_choice(scale, Scale, "scale")
        self.k = k
        self.score = score
        self.scale = scale
        self._value = float("nan")

    def identity(self) -> dict:
        return {"k": self.k, "score": self.score}

    def weights(self, groups: Groups, step: int) -> Tensor:
        scores = groups.scores if self.score == "verifier" else groups.values
        if scores is None:
            source = ("the task provides no verifier scores" if self.score == "verifier"
                      else "the model has no value head")
            raise ValueError(f"BestOfN(score={self.score!r}) has no scores: {source}; pick the other score source")
        scores = scores.detach().to(groups.rewards.device)
        self._value = float(bon_at_k(groups.rewards, scores, self.k).mean())
        return _to_scale(bon_weights(groups.rewards, scores, self.k), self.k, self.scale)


class BudgetConstrained(Objective):
    """Maximise expected reward under an inference budget (IBPO, Yu et al. 2025, arXiv 2501.17974).

    cost="tokens": the constraint is E[generated tokens] <= budget. cost="group": responses longer than
    `long_threshold` tokens form the expensive group G+ and the constraint is the density E[1{y in G+}] <= budget.
    solver="primal_dual": RLOO weights (mean_weights) on r - lambda * c; after each step
        lambda <- max(0, lambda + lr * (mean batch cost - budget)); lambda is logged and checkpointed.
    solver="selection": the per-batch LP of IBPO; the weights are the selection x in [0, 1] (weighted
        fine-tuning), objective/lambda then logs the LP's multiplier of the budget constraint.

    Args:
        budget: B (tokens per response) for cost="tokens", or q in [0, 1] for cost="group".
        cost: "tokens" or "group".
        solver: "primal_dual" or "selection".
        lr: dual step size eta (reward per unit of cost per unit of overspend).
        lambda_init: starting dual variable, >= 0.
        long_threshold: tokens above which a response belongs to G+ (required for cost="group").
        one_per_prompt: selection solver only: at most one unit of weight per prompt.
    """

    def __init__(self, budget: float, cost: CostKind = "tokens", solver: BudgetSolver = "primal_dual", lr: float = 1e-3,
                 lambda_init: float = 0.0, long_threshold: float | None = None, one_per_prompt: bool = False) -> None:
        check_choice(cost, CostKind, "cost")
        check_choice(solver, BudgetSolver, "solver")
        if cost == "group" and not 0.0 <= budget <= 1.0:
            raise ValueError(f"with cost='group' the budget is a density q in [0, 1], got {budget}")
        if cost == "tokens" and budget <= 0:
            raise ValueError(f"the token budget must be > 0, got {budget}")
        if cost == "group" and long_threshold is None:
            raise ValueError("cost='group' needs long_threshold: the token count above which a response is 'long' (G+)")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if lambda_init < 0:
            raise ValueError(f"lambda_init must be >= 0, got {lambda_init}")
        self.budget = float(budget)
        self.cost = cost
        self.solver = solver
        self.lr = float(lr)
        self.lam = float(lambda_init)
        self.long_threshold = long_threshold
        self.one_per_prompt = one_per_prompt
        self._value = float("nan")
        self._mean_cost = float("nan")

    def identity(self) -> dict:
        return {"budget": self.budget, "cost": self.cost, "solver": self.solver, "long_threshold": self.long_threshold}

    def costs(self, groups: Groups) -> tuple[Tensor, Tensor | None]:
        """([B, G] cost of each response, [B, G] bool membership of G+ or None): cost="tokens" gives the generated
        tokens and no G+; cost="group" gives 1.0 for members of G+ (longer than long_threshold) and G+ itself."""
        tokens = groups.costs.to(groups.rewards.device).double()
        if self.cost == "tokens":
            return tokens, None
        plus = tokens > self.long_threshold
        return plus.double(), plus

    def weights(self, groups: Groups, step: int) -> Tensor:
        rewards, (c, plus) = groups.rewards, self.costs(groups)
        self._value = float(rewards.double().mean())
        self._mean_cost = float(c.mean())
        if self.solver == "selection":
            info: dict = {}
            w = budget_selection_weights(rewards, c, plus, self.budget, one_per_prompt=self.one_per_prompt, info=info)
            self.lam = float(info["mu"])
            return w
        w = mean_weights(rewards.double() - self.lam * c).to(out_dtype(rewards))
        self.lam = dual_update(self.lam, self._mean_cost, self.budget, self.lr)  # used from the next step on
        return w

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "objective/lambda": self.lam,
                "objective/cost": self._mean_cost}

    def state_dict(self) -> dict:
        return {"lambda": self.lam}

    def load_state_dict(self, state_dict: dict) -> None:
        self.lam = float(state_dict["lambda"])
