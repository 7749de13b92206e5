"""The objective callbacks: weights equal the estimator functions, k schedule, dual update, state, args."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser

from callbacks.estimators import (
    bon_weights,
    budget_selection_weights,
    chen_passk_weights,
    majority_weights,
    mean_weights,
    pass_at_k,
    passk_weights,
)
from callbacks.objectives import BestOfN, BudgetConstrained, MajorityVote, PassAtK
from datamodules.types import Groups

D = torch.float64


def make_groups(b: int = 4, g: int = 8, seed: int = 0, scores: bool = True, values: bool = False) -> Groups:
    gen = torch.Generator().manual_seed(seed)
    answers = torch.randint(-1, 3, (b, g), generator=gen)
    return Groups(rewards=(answers == 0).to(D), answer_ids=answers,
                  costs=torch.randint(100, 1000, (b, g), generator=gen).to(D),
                  scores=torch.rand(b, g, generator=gen, dtype=D) if scores else None,
                  values=torch.rand(b, g, generator=gen, dtype=D) if values else None)


# --- PassAtK -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("baseline", ["loo-1", "loo", "none"])
def test_passk_weights_are_the_estimator_times_group_size(baseline):
    groups = make_groups()
    w = PassAtK(k=4, baseline=baseline).weights(groups, step=0)
    assert torch.equal(w, passk_weights(groups.rewards, 4, baseline) * 8)
    w_sum = PassAtK(k=4, baseline=baseline, scale="sum").weights(groups, step=0)
    assert torch.equal(w_sum, passk_weights(groups.rewards, 4, baseline))


def test_passk_chen_baseline_is_chen_unscaled():
    groups = make_groups()
    assert torch.equal(PassAtK(k=4, baseline="chen").weights(groups, 0), chen_passk_weights(groups.rewards, 4))


def test_passk_metrics_report_k_and_the_pass_at_k_estimate():
    groups = make_groups()
    objective = PassAtK(k=4)
    objective.weights(groups, step=0)
    assert objective.metrics() == {"objective/k": 4.0, "objective/value": float(pass_at_k(groups.rewards, 4).mean())}


def test_k_schedule_switches_k_at_the_given_steps():
    objective = PassAtK(k=8, k_schedule={0: 8, 1500: 1})
    groups = make_groups()
    assert [objective.k_at(s) for s in (0, 1499, 1500, 10_000)] == [8, 8, 1, 1]
    objective.weights(groups, step=1499)
    assert objective.k == 8
    w = objective.weights(groups, step=1500)
    assert objective.k == 1 and objective.metrics()["objective/k"] == 1.0
    assert torch.equal(w, mean_weights(groups.rewards))  # k = 1 is RLOO, on the same (advantage) scale


def test_k_schedule_uses_k_before_its_first_entry():
    objective = PassAtK(k=2, k_schedule={100: 4})
    assert objective.k_at(0) == 2 and objective.k_at(100) == 4


def test_passk_state_roundtrip():
    objective = PassAtK(k=8, k_schedule={0: 8, 10: 2})
    objective.weights(make_groups(), step=12)
    restored = PassAtK(k=8, k_schedule={0: 8, 10: 2})
    restored.load_state_dict(objective.state_dict())
    assert restored.k == 2 and restored.state_dict() == objective.state_dict()


def test_passk_group_size_check_covers_the_schedule_and_loo():
    PassAtK(k=4).check_group_size(4)
    with pytest.raises(ValueError, match="k=16"):
        PassAtK(k=4, k_schedule={100: 16}).check_group_size(8)
    with pytest.raises(ValueError, match="loo"):
        PassAtK(k=4, baseline="loo").check_group_size(4)


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, "k must"), ({"baseline": "mean"}, "baseline"),
                                          ({"k_schedule": {-1: 2}}, "steps"), ({"k_schedule": {0: 0}}, "k_schedule"),
                                          ({"scale": "max"}, "scale")])
def test_passk_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PassAtK(**kwargs)


def test_cli_parser_rejects_a_bad_literal_choice_and_reads_docstrings():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PassAtK, "objective")
    assert parser.parse_args(["--objective.baseline", "loo"]).objective.baseline == "loo"
    with pytest.raises(ArgumentError):
        parser.parse_args(["--objective.baseline", "mean"])
    assert "lowest-variance" in parser.format_help()


# --- MajorityVote / BestOfN ------------------------------------------------------------------------------

def test_majority_weights_are_the_estimator_times_group_size_and_log_the_path():
    groups = make_groups()
    objective = MajorityVote(k=3)
    w = objective.weights(groups, step=5)
    assert torch.equal(w, majority_weights(groups.answer_ids, groups.rewards, 3) * 8)
    metrics = objective.metrics()
    assert metrics["objective/exact"] == 1.0 and metrics["objective/k"] == 3.0
    assert 0.0 <= metrics["objective/value"] <= 1.0


def test_majority_sampled_path_is_reproducible_per_step():
    groups = make_groups()
    a = MajorityVote(k=3, method="sampled", num_subsets=32, seed=1)
    b = MajorityVote(k=3, method="sampled", num_subsets=32, seed=1)
    assert torch.equal(a.weights(groups, 7), b.weights(groups, 7))
    assert a.metrics()["objective/exact"] == 0.0


@pytest.mark.parametrize("score", ["verifier", "value"])
def test_best_of_n_weights_use_the_chosen_score_source(score):
    groups = make_groups(values=True)
    source = groups.scores if score == "verifier" else groups.values
    w = BestOfN(k=4, score=score).weights(groups, step=0)
    assert torch.equal(w, bon_weights(groups.rewards, source, 4) * 8)


def test_best_of_n_without_scores_is_a_clear_error():
    with pytest.raises(ValueError, match="value head"):
        BestOfN(k=4, score="value").weights(make_groups(values=False), step=0)
    with pytest.raises(ValueError, match="no verifier scores"):
        BestOfN(k=4).weights(make_groups(scores=False), step=0)


def test_majority_and_best_of_n_state_roundtrip():
    for cls in (MajorityVote, BestOfN):
        restored = cls(k=2)
        restored.load_state_dict(cls(k=5).state_dict())
        assert restored.k == 5


# --- BudgetConstrained -------------------------------------------------------------------------------------

def test_primal_dual_weights_use_lambda_before_the_update():
    groups = make_groups()
    objective = BudgetConstrained(budget=300.0, lr=1e-4, lambda_init=1e-3)
    w = objective.weights(groups, step=0)
    assert torch.equal(w, mean_weights(groups.rewards - 1e-3 * groups.costs))


def test_lambda_rises_when_over_budget_and_falls_to_zero_under_it():
    groups = make_groups()  # mean cost ~550 tokens
    over = BudgetConstrained(budget=200.0, lr=1e-4)
    over.weights(groups, step=0)
    assert over.lam == pytest.approx(1e-4 * (float(groups.costs.mean()) - 200.0))
    lam_1 = over.lam
    over.weights(groups, step=1)
    assert over.lam > lam_1 and over.metrics()["objective/lambda"] == over.lam
    under = BudgetConstrained(budget=5000.0, lr=1e-4, lambda_init=0.01)
    for step in range(3):
        under.weights(groups, step)
    assert under.lam == 0.0


def test_budget_group_cost_uses_the_long_response_density():
    groups = make_groups()
    objective = BudgetConstrained(budget=0.1, cost="group", long_threshold=600.0, lr=0.5)
    objective.weights(groups, step=0)
    density = float((groups.costs > 600).to(D).mean())
    assert objective.metrics()["objective/cost"] == pytest.approx(density)
    assert objective.lam == pytest.approx(max(0.0, 0.5 * (density - 0.1)))


def test_budget_selection_weights_are_the_lp_selection_and_respect_the_constraint():
    groups = make_groups()
    objective = BudgetConstrained(budget=0.25, cost="group", long_threshold=600.0, solver="selection")
    w = objective.weights(groups, step=0)
    plus = groups.costs > 600
    assert torch.equal(w, budget_selection_weights(groups.rewards, (groups.costs > 600).to(D), plus, 0.25))
    assert float((w * plus).sum()) <= 0.25 * float(w.sum()) + 1e-12
    assert objective.metrics()["objective/lambda"] >= 0


def test_budget_state_roundtrip():
    objective = BudgetConstrained(budget=200.0, lr=1e-4)
    objective.weights(make_groups(), step=0)
    restored = BudgetConstrained(budget=200.0, lr=1e-4)
    restored.load_state_dict(objective.state_dict())
    assert restored.lam == objective.lam > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 2.0, "cost": "group", "long_threshold": 100.0}, "density"),
    ({"budget": 0.2, "cost": "group"}, "long_threshold"),
    ({"budget": -1.0}, "budget"),
    ({"budget": 100.0, "lr": -1.0}, "lr"),
    ({"budget": 100.0, "lambda_init": -0.1}, "lambda_init"),
    ({"budget": 100.0, "solver": "lagrange"}, "solver"),
])
def test_budget_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetConstrained(**kwargs)


# --- checkpoint state keys (Lightning stores callback state under Callback.state_key) --------------------

def test_state_keys_name_the_class_and_the_defining_arguments():
    assert PassAtK(k=4).state_key != PassAtK(k=8).state_key
    assert PassAtK(k=4).state_key != PassAtK(k=4, baseline="loo").state_key
    assert PassAtK(k=4).state_key == PassAtK(k=4).state_key
    assert MajorityVote(k=4).state_key != BestOfN(k=4).state_key
    assert BestOfN(k=4).state_key != BestOfN(k=4, score="value").state_key
    assert BudgetConstrained(budget=100.0).state_key != BudgetConstrained(budget=200.0).state_key
    # a tuning knob is not part of the identity: a resumed run may change it and keep lambda
    assert BudgetConstrained(budget=100.0, lr=1e-3).state_key == BudgetConstrained(budget=100.0, lr=1e-2).state_key


def test_passk_state_key_is_stable_while_the_schedule_moves_k():
    objective = PassAtK(k=8, k_schedule={0: 8, 10: 2})
    key = objective.state_key
    objective.weights(make_groups(), step=12)
    assert objective.k == 2 and objective.state_key == key


def test_two_objectives_keep_separate_states_through_a_lightning_checkpoint(tmp_path):
    import lightning
    from lightning.pytorch.demos.boring_classes import BoringModel

    def trainer(callbacks, steps):
        return lightning.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                                 limit_val_batches=0, num_sanity_val_steps=0)

    first, second = BudgetConstrained(budget=100.0), BudgetConstrained(budget=200.0)
    first.lam, second.lam = 0.25, 0.75
    fit = trainer([first, second], 1)
    fit.fit(BoringModel())
    path = tmp_path / "state.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert saved[first.state_key] == {"lambda": 0.25} and saved[second.state_key] == {"lambda": 0.75}
    restored = [BudgetConstrained(budget=200.0), BudgetConstrained(budget=100.0)]  # any order
    trainer(restored, 2).fit(BoringModel(), ckpt_path=path)
    assert [o.lam for o in restored] == [0.75, 0.25]
