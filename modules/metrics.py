"""Evaluation metrics as torchmetrics Metrics, correct under DDP / FSDP2: every state is a float64 sum tensor
reduced with dist_reduce_fx="sum", so compute() on any number of processes equals one process on all prompts.

The estimators are callbacks.estimators' (one implementation for training weights and evaluation):
pass@k / max@k (`pass_at_k`), maj@k (`majority_at_k`), bon@k (`bon_at_k`), pass^k / min@k (`pass_pow_k`),
bom@k (`best_of_majority_at_k`). Each metric takes [B, n] tensors of
B prompts with n >= max(ks) samples each and sums the per-prompt unbiased estimates; compute() divides by the
number of prompts. `EvalMetrics` bundles them for the module's validation / test.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from callbacks import estimators
from callbacks.estimators import MajorityMethod
from datamodules.types import Groups


def check_ks(ks: Sequence[int]) -> list[int]:
    """Sorted distinct ks, all >= 1 (a ValueError naming the bad value otherwise)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty list of integers >= 1, got {ks}")
    return ks


class _PerKMetric(Metric):
    """Sums of a per-prompt estimate for each k in `ks`, and the number of prompts (float64 sum states)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = check_ks(ks)
        self.add_state("sums", torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prompts", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _check_n(self, values: Tensor) -> None:
        if values.dim() != 2:
            raise ValueError(f"{type(self).__name__}: expected [B, n] tensors, got shape {tuple(values.shape)}")
        if values.shape[1] < self.ks[-1]:
            raise ValueError(f"{type(self).__name__}: unbiased estimates at k = {self.ks[-1]} need n >= k samples "
                             f"per prompt, got n = {values.shape[1]}; lower the largest k or sample more")

    def _add(self, per_k: list[Tensor]) -> None:
        self.sums += torch.stack([v.double().sum() for v in per_k]).to(self.sums.device)
        self.prompts += per_k[0].shape[0]

    def compute(self) -> Tensor:
        """[len(ks)] mean over prompts of the estimate at each k (NaN when no prompt was seen)."""
        if self.prompts == 0:
            return torch.full_like(self.sums, float("nan"))
        return self.sums / self.prompts


class PassAtK(_PerKMetric):
    """Unbiased pass@k (binary rewards; max@k for real rewards) for each k in `ks`, mean over prompts.

    update(rewards): rewards [B, n], n >= max(ks). Per prompt: estimators.pass_at_k (Chen et al. 2021 /
    PKPO's rho_g). compute() -> [len(ks)].
    """

    def update(self, rewards: Tensor) -> None:
        self._check_n(rewards)
        self._add([estimators.pass_at_k(rewards.double(), k) for k in self.ks])


class MajorityAtK(_PerKMetric):
    """Unbiased maj@k (Tang et al. 2025 voting conventions: None never votes, ties averaged) for each k in `ks`.

    update(answer_ids, rewards): [B, n] answer classes (-1 = unparsable) and correctness. method: "exact" by
    default (deterministic); "auto" / "sampled" trade exactness for speed at very large n and k (the
    sampled path is unbiased but random; see callbacks.estimators.majority_at_k).
    """

    def __init__(self, ks: Sequence[int], method: MajorityMethod = "exact", **kwargs) -> None:
        super().__init__(ks, **kwargs)
        self.method = method

    def update(self, answer_ids: Tensor, rewards: Tensor) -> None:
        self._check_n(rewards)
        self._add([estimators.majority_at_k(answer_ids, rewards.double(), k, method=self.method) for k in self.ks])


class BestOfNAtK(_PerKMetric):
    """Unbiased bon@k: the true reward of the highest-score sample among k (ties in score averaged).

    update(rewards, scores): [B, n] each; scores None (a task without a verifier score) adds nothing, so every
    process can call update whatever its batch had; compute() is then NaN.
    """

    def update(self, rewards: Tensor, scores: Tensor | None) -> None:
        if scores is None:
            return
        self._check_n(rewards)
        self._add([estimators.bon_at_k(rewards.double(), scores.double(), k) for k in self.ks])


class PassPowAtK(_PerKMetric):
    """Unbiased pass^k (all of k samples correct; min@k for real rewards; Yao et al. 2024, tau-bench) for each k.

    update(rewards): rewards [B, n], n >= max(ks). Per prompt: estimators.pass_pow_k. compute() -> [len(ks)].
    """

    def update(self, rewards: Tensor) -> None:
        self._check_n(rewards)
        self._add([estimators.pass_pow_k(rewards.double(), k) for k in self.ks])


class BestOfMajorityAtK(_PerKMetric):
    """bom@k (Di et al. 2025): of all n samples keep the answers with frequency >= 1/(2k), submit the k with the
    highest verifier score, succeed if one is right (estimators.best_of_majority_at_k with N = n, exact).

    update(answer_ids, rewards, scores): [B, n]; rewards in [0, 1]; scores None adds nothing (compute() is then NaN).
    """

    def update(self, answer_ids: Tensor, rewards: Tensor, scores: Tensor | None) -> None:
        if scores is None:
            return
        self._check_n(rewards)
        self._add([estimators.best_of_majority_at_k(answer_ids, rewards.double(), scores.double(), k) for k in self.ks])


class ResponseStats(Metric):
    """Mean response length (generated tokens per sample) and the fraction of samples truncated at the limit.

    update(lengths, finished): [B, n] (or [N]) token counts and EOS flags. compute() -> [mean length, truncated frac].
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("truncated", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, lengths: Tensor, finished: Tensor) -> None:
        self.tokens += lengths.double().sum().to(self.tokens.device)
        self.truncated += (~finished.bool()).double().sum().to(self.tokens.device)
        self.samples += lengths.numel()

    def compute(self) -> Tensor:
        if self.samples == 0:
            return torch.full((2,), float("nan"), dtype=torch.float64, device=self.tokens.device)
        return torch.stack([self.tokens, self.truncated]) / self.samples


class SolveRateHistogram(Metric):
    """Counts of prompts by solve rate (the fraction of a prompt's samples with reward >= `threshold`).

    Fixed bins: `bins` equal intervals of [0, 1], the last one closed ([0, 0.1), ..., [0.9, 1.0] for 10), plus
    separate counts of never-solved (rate 0) and always-solved (rate 1) prompts, the ones with no learning
    signal. update(rewards [B, n]); compute() -> {"counts": [bins], "never": [], "always": []} (float64 tensors,
    reduced over processes); `edges` holds the bins + 1 edges.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, bins: int = 10, threshold: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if bins < 1:
            raise ValueError(f"SolveRateHistogram: bins must be >= 1, got {bins}")
        self.bins, self.threshold = bins, threshold
        self.edges = [i / bins for i in range(bins + 1)]
        self.add_state("counts", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("never", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("always", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rewards: Tensor) -> None:
        solved = (rewards >= self.threshold).long().sum(dim=-1).to(self.counts.device)
        n = rewards.shape[-1]
        index = (solved * self.bins // n).clamp(max=self.bins - 1)  # integer arithmetic: rate j/n lands exactly
        self.counts += torch.bincount(index, minlength=self.bins).double()
        self.never += (solved == 0).double().sum()
        self.always += (solved == n).double().sum()

    def compute(self) -> dict[str, Tensor]:
        return {"counts": self.counts.clone(), "never": self.never.clone(), "always": self.always.clone()}


class EvalMetrics(torch.nn.Module):
    """All evaluation metrics of one validation / test epoch (submodules, so they follow the module's device).

    update(groups, finished): one batch of verified groups (datamodules.types.Groups, [B, n]) and the EOS
    flags [B * n] or [B, n]. compute() -> {"pass@1": .., "pass@k": .., "maj@k": .., "bon@k": .. (with scores),
    "pass^k": .., "bom@k" and "bom@{pass_k}" (with scores), "response_len": .., "truncated_frac": ..,
    "pass@{k}" / "maj@{k}" / "bon@{k}" / "pass^{k}" for every k in ks}; a collective
    under DDP / FSDP2: call it on every process. histogram() -> {"edges", "counts", "never", "always"}.
    """

    def __init__(self, ks: Sequence[int], pass_k: int, majority_method: MajorityMethod = "exact",
                 histogram_bins: int = 10) -> None:
        super().__init__()
        self.ks = check_ks([*ks, 1, pass_k])
        self.pass_k = pass_k
        self.pass_at = PassAtK(self.ks)
        self.maj_at = MajorityAtK(self.ks, method=majority_method)
        self.bon_at = BestOfNAtK(self.ks)
        self.pass_pow_at = PassPowAtK(self.ks)
        self.bom_at = BestOfMajorityAtK([pass_k])  # one k: a Python loop over prompts, evaluation only
        self.responses = ResponseStats()
        self.solve_rate = SolveRateHistogram(bins=histogram_bins)

    def update(self, groups: Groups, finished: Tensor) -> None:
        self.pass_at.update(groups.rewards)
        self.maj_at.update(groups.answer_ids, groups.rewards)
        self.bon_at.update(groups.rewards, groups.scores)
        self.pass_pow_at.update(groups.rewards)
        self.bom_at.update(groups.answer_ids, groups.rewards, groups.scores)
        self.responses.update(groups.costs, finished.view(groups.rewards.shape))
        self.solve_rate.update(groups.rewards)

    def compute(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, metric in (("pass", self.pass_at), ("maj", self.maj_at), ("bon", self.bon_at)):
            per_k = metric.compute().reshape(-1).tolist()  # torchmetrics squeezes a 1-k result to a scalar
            if any(v != v for v in per_k):  # NaN: nothing seen (bon@k without verifier scores)
                continue
            by_k = dict(zip(self.ks, per_k))
            if name == "pass":
                values["pass@1"] = by_k[1]
            values[f"{name}@k"] = by_k[self.pass_k]
            values.update({f"{name}@{k}": v for k, v in by_k.items()})
        by_k = dict(zip(self.ks, self.pass_pow_at.compute().reshape(-1).tolist()))
        values["pass^k"] = by_k[self.pass_k]
        values.update({f"pass^{k}": v for k, v in by_k.items()})
        bom = float(self.bom_at.compute().reshape(-1)[0])  # torchmetrics squeezes a 1-element result
        if bom == bom:  # NaN without verifier scores
            values.update({"bom@k": bom, f"bom@{self.pass_k}": bom})
        length, truncated = self.responses.compute().tolist()
        values.update(response_len=length, truncated_frac=truncated)
        return values

    def histogram(self) -> dict[str, list[float] | float]:
        result = self.solve_rate.compute()
        return {"edges": self.solve_rate.edges, "counts": result["counts"].tolist(), "never": float(result["never"]),
                "always": float(result["always"])}

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
