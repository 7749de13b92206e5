"""The evaluation metrics pass^k and bom@k in EvalMetrics: the estimator functions averaged over prompts and
batches; bom@k only with verifier scores."""

from __future__ import annotations

import pytest
import torch
from test_metrics import random_groups

from callbacks.estimators import best_of_majority_at_k, pass_pow_k
from modules.metrics import EvalMetrics, PassPowAtK


def test_pass_pow_and_bom_are_the_estimators_averaged_over_all_prompts():
    batches = [random_groups(5, 8, seed=s) for s in (1, 2)]
    metrics = EvalMetrics(ks=[2, 8], pass_k=4)
    for groups, finished in batches:
        metrics.update(groups, finished)
    values = metrics.compute()
    rewards = torch.cat([g.rewards for g, _ in batches]).double()
    for k in (1, 2, 4, 8):
        assert values[f"pass^{k}"] == pytest.approx(float(pass_pow_k(rewards, k).mean()), abs=1e-12)
    assert values["pass^k"] == values["pass^4"] and values["pass^1"] == pytest.approx(values["pass@1"], abs=1e-12)
    bom = torch.cat([best_of_majority_at_k(g.answer_ids, g.rewards.double(), g.scores.double(), 4) for g, _ in batches])
    assert values["bom@k"] == values["bom@4"] == pytest.approx(float(bom.mean()), abs=1e-12)


def test_bom_is_left_out_without_scores_and_pass_pow_needs_n_at_least_k():
    groups, finished = random_groups(3, 4, seed=0)
    groups.scores = None
    metrics = EvalMetrics(ks=[4], pass_k=2)
    metrics.update(groups, finished)
    values = metrics.compute()
    assert "bom@k" not in values and "pass^k" in values and "pass^4" in values
    with pytest.raises(ValueError, match="need n >= k"):
        PassPowAtK([1, 8]).update(groups.rewards)
