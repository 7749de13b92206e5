"""modules.metrics against brute-force enumeration of k-subsets, and DDP reduction over 2 CPU processes (gloo)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datamodules.types import Groups
from modules.metrics import BestOfNAtK, EvalMetrics, MajorityAtK, PassAtK, SolveRateHistogram

_spec = importlib.util.spec_from_file_location(
    "brute_force", Path(__file__).resolve().parents[1] / "callbacks" / "estimators" / "brute_force.py")
bf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bf)


def random_groups(batch: int, n: int, seed: int, binary: bool = True) -> tuple[Groups, torch.Tensor]:
    """Random verified groups with ties in scores, unparsable answers and a few answer classes; EOS flags [B*n]."""
    g = torch.Generator().manual_seed(seed)
    def draw(*shape):
        values = torch.rand(*shape, generator=g)
        return (values < 0.4).float() if binary else values.round(decimals=1)

    answers = torch.randint(-1, 3, (batch, n), generator=g)
    # equal answers are equally correct (as a verifier judges them); unparsable ones get their own reward
    rewards = torch.where(answers >= 0, draw(batch, 3).gather(1, answers.clamp_min(0)), draw(batch, n))
    scores = torch.randint(0, 3, (batch, n), generator=g).float()  # few values: many ties
    costs = torch.randint(1, 9, (batch, n), generator=g).float()
    finished = torch.rand(batch * n, generator=g) < 0.7
    return Groups(rewards=rewards, answer_ids=answers, costs=costs, scores=scores), finished


def brute_mean(rows: list, fn) -> float:
    return float(sum(fn(*row) for row in rows)) / len(rows)


@pytest.mark.parametrize("binary", [True, False])
def test_per_k_metrics_equal_brute_force_over_several_updates(binary):
    ks, n = [1, 2, 3, 5, 7], 7
    batches = [random_groups(b, n, seed, binary) for seed, b in enumerate([3, 1, 4])]
    pass_at, maj_at, bon_at = PassAtK(ks), MajorityAtK(ks), BestOfNAtK(ks)
    for groups, _ in batches:
        pass_at.update(groups.rewards)
        maj_at.update(groups.answer_ids, groups.rewards)
        bon_at.update(groups.rewards, groups.scores)
    rewards = torch.cat([g.rewards for g, _ in batches]).tolist()
    answers = torch.cat([g.answer_ids for g, _ in batches]).tolist()
    scores = torch.cat([g.scores for g, _ in batches]).tolist()
    for i, k in enumerate(ks):
        expected_pass = brute_mean([(r, k) for r in rewards], bf.pass_at_k)
        assert pass_at.compute()[i].item() == pytest.approx(expected_pass, abs=1e-12)
        expected_maj = brute_mean([(a, r, k) for a, r in zip(answers, rewards)], bf.majority_at_k)
        assert maj_at.compute()[i].item() == pytest.approx(expected_maj, abs=1e-12)
        expected_bon = brute_mean([(r, s, k) for r, s in zip(rewards, scores)], bf.bon_at_k)
        assert bon_at.compute()[i].item() == pytest.approx(expected_bon, abs=1e-12)


def test_eval_metrics_names_lengths_truncation_and_histogram():
    groups, finished = random_groups(6, 8, seed=3)
    metrics = EvalMetrics(ks=[2, 8], pass_k=4, histogram_bins=4)
    metrics.update(groups, finished)
    values = metrics.compute()
    assert metrics.ks == [1, 2, 4, 8]
    rewards = groups.rewards.tolist()
    assert values["pass@k"] == values["pass@4"] == pytest.approx(brute_mean([(r, 4) for r in rewards], bf.pass_at_k))
    assert values["pass@1"] == pytest.approx(groups.rewards.mean().item())
    assert values["maj@k"] == values["maj@4"] and values["bon@k"] == values["bon@4"]
    assert values["response_len"] == pytest.approx(groups.costs.mean().item())
    assert values["truncated_frac"] == pytest.approx((~finished).float().mean().item())
    solved = groups.rewards.sum(dim=1).long()
    expected = [sum(int(c) * 4 // 8 == b or (b == 3 and c == 8) for c in solved) for b in range(4)]
    histogram = metrics.histogram()
    assert histogram["counts"] == expected and histogram["edges"] == [0, 0.25, 0.5, 0.75, 1.0]
    assert histogram["never"] == int((solved == 0).sum()) and histogram["always"] == int((solved == 8).sum())
    metrics.reset()
    metrics.update(groups, finished)
    assert metrics.compute() == values  # reset starts over


def test_one_sample_a_prompt_and_k_1_only_is_a_valid_evaluation():
    groups, finished = random_groups(3, 1, seed=1)  # greedy evaluation: n = 1, ks = [1]
    values = EvalMetrics(ks=[1], pass_k=1)
    values.update(groups, finished)
    values = values.compute()
    assert values["pass@1"] == values["pass@k"] == values["pass^1"] == pytest.approx(groups.rewards.mean().item())


def test_bon_is_left_out_without_scores_and_too_few_samples_is_an_error():
    groups, finished = random_groups(2, 4, seed=0)
    groups.scores = None
    metrics = EvalMetrics(ks=[4], pass_k=2)
    metrics.update(groups, finished)
    values = metrics.compute()
    assert "bon@k" not in values and "bon@4" not in values and "pass@4" in values
    with pytest.raises(ValueError, match="need n >= k"):
        PassAtK([1, 8]).update(groups.rewards)
    with pytest.raises(ValueError, match=">= 1"):
        PassAtK([0, 2])


def test_solve_rate_bins_are_exact_at_bin_edges():
    histogram = SolveRateHistogram(bins=10)
    rewards = torch.tensor([[1.0] * j + [0.0] * (10 - j) for j in range(11)])  # rates 0, 0.1, ..., 1.0
    histogram.update(rewards)
    assert histogram.compute()["counts"].tolist() == [1.0] * 9 + [2.0]  # the last bin is closed


# --- DDP: 2 processes, each with part of the data ------------------------------------------------------------

def all_batches() -> list[tuple[Groups, torch.Tensor]]:
    return [random_groups(b, 8, seed=10 + i) for i, b in enumerate([3, 2, 4, 1, 2])]


def evaluate(batches) -> dict:
    metrics = EvalMetrics(ks=[1, 2, 4, 8], pass_k=4, histogram_bins=5)
    for groups, finished in batches:
        metrics.update(groups, finished)
    return {"values": metrics.compute(), "histogram": metrics.histogram()}


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batches = all_batches()
        mine = batches[:3] if rank == 0 else batches[3:]  # unequal halves: 9 prompts and 3 prompts
        torch.save(evaluate(mine), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_reduction_over_two_processes_equals_one_process(tmp_path):
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = evaluate(all_batches())
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert result["histogram"] == single["histogram"]
        assert result["values"].keys() == single["values"].keys()
        for name, value in single["values"].items():
            assert result["values"][name] == pytest.approx(value, abs=1e-12), name
    local = evaluate(all_batches()[:3])["values"]
    assert local["pass@4"] != pytest.approx(single["values"]["pass@4"])  # the reduction did something


def test_eval_ks_default_and_bad_values():
    from modules import ConfigError, EvalSettings

    assert EvalSettings(pass_k=4, samples=32).curve_ks == [1, 2, 4, 8, 16, 32]
    assert EvalSettings(pass_k=3, samples=12).curve_ks == [1, 2, 3, 4, 8]
    assert EvalSettings(ks=[6], pass_k=3, samples=8).curve_ks == [1, 3, 6]  # 1 and pass_k always (val/pass@1, @k)
    with pytest.raises(ConfigError, match=r"model\.evaluation\.ks .* model\.evaluation\.samples = 8"):
        EvalSettings(ks=[4, 16], pass_k=3, samples=8)
    with pytest.raises(ConfigError, match=r"model\.evaluation\.pass_k must be between 1 and"):
        EvalSettings(pass_k=9, samples=8)
