"""PassPowK and MaxLikelihood: weights equal the estimator functions on the requested scale, metrics, state, checks."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from test_objectives import make_groups

from callbacks import MaxLikelihood, PassPowK
from callbacks.estimators import (
    max_likelihood_value,
    max_likelihood_weights,
    mean_weights,
    pass_pow_k,
    pass_pow_k_weights,
)


def test_pass_pow_weights_are_the_estimator_times_group_size_and_report_pass_pow_k():
    groups = make_groups()
    objective = PassPowK(k=3)
    assert torch.equal(objective.weights(groups, step=0), pass_pow_k_weights(groups.rewards, 3) * 8)
    assert objective.metrics() == {"objective/k": 3.0, "objective/value": float(pass_pow_k(groups.rewards, 3).mean())}
    assert torch.equal(PassPowK(k=3, scale="sum").weights(groups, 0), pass_pow_k_weights(groups.rewards, 3))
    assert torch.equal(PassPowK(k=1).weights(groups, 0), mean_weights(groups.rewards))  # k = 1: RLOO


def test_max_likelihood_defaults_to_order_g_and_scales_by_g():
    groups = make_groups()
    objective = MaxLikelihood()
    w = objective.weights(groups, step=0)
    assert objective.k == 8 and torch.equal(w, max_likelihood_weights(groups.rewards, 8) * 8)
    assert objective.metrics()["objective/value"] == float(max_likelihood_value(groups.rewards, 8).mean())
    w_sum = MaxLikelihood(max_k=3, scale="sum").weights(groups, 0)
    assert torch.equal(w_sum, max_likelihood_weights(groups.rewards, 3))
    # order 1 is the mean reward on the advantage scale
    assert torch.allclose(MaxLikelihood(max_k=1).weights(groups, 0), mean_weights(groups.rewards), atol=1e-15, rtol=0)


def test_state_roundtrip_and_state_keys_name_the_arguments():
    objective = MaxLikelihood()
    objective.weights(make_groups(), step=0)
    restored = MaxLikelihood()
    restored.load_state_dict(objective.state_dict())
    assert restored.k == 8
    assert MaxLikelihood(max_k=4).state_key != MaxLikelihood().state_key
    assert PassPowK(k=2).state_key != PassPowK(k=4).state_key


def test_group_size_checks_are_configuration_errors():
    PassPowK(k=4).check_group_size(4)
    MaxLikelihood().check_group_size(2)
    with pytest.raises(ValueError, match=r"model\.group\.size"):
        PassPowK(k=8).check_group_size(4)
    with pytest.raises(ValueError, match="max_k"):
        MaxLikelihood(max_k=8).check_group_size(4)
    with pytest.raises(ValueError, match="max_k must"):
        MaxLikelihood(max_k=0)
    with pytest.raises(ValueError, match="scale"):
        PassPowK(k=2, scale="mean")


def test_cli_parser_reads_the_arguments():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MaxLikelihood, "objective")
    assert parser.parse_args(["--objective.max_k", "4"]).objective.max_k == 4
    assert parser.parse_args([]).objective.max_k is None
