"""bom@k (callbacks.estimators.best_of_majority): the generating-polynomial value against enumeration of every
N-subset and every score-consistent tie-break in exact arithmetic, plus the thresholds and errors."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction

import pytest
import torch
from estimator_testing import D, close

from callbacks.estimators import best_of_majority_at_k
from callbacks.estimators.best_of_majority import min_count


def class_means(answers: list[int], values: list) -> dict[int, Fraction]:
    members: dict[int, list[Fraction]] = {}
    for a, v in zip(answers, values):
        if a >= 0:
            members.setdefault(a, []).append(Fraction(v))
    return {a: sum(vs, Fraction(0)) / len(vs) for a, vs in members.items()}


def bom_f(answers, correct, scores, subset, k: int, m: int) -> Fraction:
    """Keep answers with >= m members in the subset, submit the k best-scored (every ordering of the kept answers by
    non-increasing score equally likely), succeed with 1 - prod(1 - correctness) over the submitted."""
    corr, score = class_means(answers, correct), class_means(answers, scores)
    counts = Counter(answers[i] for i in subset if answers[i] >= 0)
    kept = [a for a, c in counts.items() if c >= m]
    if not kept:
        return Fraction(0)
    orders = [p for p in itertools.permutations(kept) if all(score[x] >= score[y] for x, y in itertools.pairwise(p))]
    fail = Fraction(0)
    for p in orders:
        prod = Fraction(1)
        for a in p[:k]:
            prod *= 1 - corr[a]
        fail += prod
    return 1 - fail / len(orders)


def brute_bom(answers, correct, scores, k: int, big_n: int, m: int) -> Fraction:
    subsets = list(itertools.combinations(range(len(answers)), big_n))
    return sum((bom_f(answers, correct, scores, s, k, m) for s in subsets), Fraction(0)) / len(subsets)


def test_matches_enumeration_of_all_subsets_and_tie_breaks():
    rng = random.Random(0)
    for _ in range(120):
        n = rng.randint(1, 8)
        big_n, k = rng.randint(1, n), rng.randint(1, 4)
        alpha = rng.choice([0.1, 0.25, 0.34, 0.5, 1.0])
        answers = [rng.randint(-1, 3) for _ in range(n)]
        # mostly functions of the answer (as a verifier of answers gives), sometimes per sample
        corr_of = {a: rng.choice([0, 1, 0.5]) for a in range(-1, 4)}
        score_of = {a: rng.choice([0.1, 0.5, 0.5, 0.9]) for a in range(-1, 4)}
        correct = [corr_of[a] if rng.random() < 0.8 else rng.choice([0, 1]) for a in answers]
        scores = [score_of[a] if rng.random() < 0.8 else rng.choice([0.1, 0.5, 0.9]) for a in answers]
        got = best_of_majority_at_k(torch.tensor([answers]), torch.tensor([correct], dtype=D),
                                    torch.tensor([scores], dtype=D), k, big_n, alpha)
        close(got, [brute_bom(answers, correct, scores, k, big_n, min_count(big_n, alpha))])


def test_batch_rows_are_independent_and_n_defaults_to_g():
    gen = torch.Generator().manual_seed(1)
    answers = torch.randint(-1, 4, (5, 8), generator=gen)
    correct = (answers == 0).to(D)
    scores = torch.rand(5, 8, generator=gen, dtype=D)
    batch = best_of_majority_at_k(answers, correct, scores, 2)
    rows = torch.cat([best_of_majority_at_k(answers[i:i + 1], correct[i:i + 1], scores[i:i + 1], 2, 8)
                      for i in range(5)])
    assert torch.equal(batch, rows)


def test_frequency_filter_and_top_k_by_score():
    # answers A x3 (wrong, score 0.9), B x2 (right, 0.5), C x1 (right, 1.0); N = G = 6
    answers, correct = torch.tensor([[0, 0, 0, 1, 1, 2]]), torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=D)
    scores = torch.tensor([[0.9, 0.9, 0.9, 0.5, 0.5, 1.0]], dtype=D)
    # alpha = 1/3: only A (3 >= 2) and B (2 >= 2) are kept; C, the best-scored, is too rare
    assert float(best_of_majority_at_k(answers, correct, scores, 1, min_frequency=1 / 3)) == 0.0  # submits A
    assert float(best_of_majority_at_k(answers, correct, scores, 2, min_frequency=1 / 3)) == 1.0  # A and B
    assert float(best_of_majority_at_k(answers, correct, scores, 1, min_frequency=1 / 6)) == 1.0  # C kept, best


@pytest.mark.parametrize("kwargs,match", [({"num_samples": 0}, "num_samples"), ({"num_samples": 9}, "num_samples"),
                                          ({"min_frequency": 0.0}, "min_frequency"), ({"k": 0}, "k must")])
def test_bad_arguments_are_configuration_errors(kwargs, match):
    args = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        best_of_majority_at_k(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8), torch.zeros(1, 8), **args)
    assert min_count(10, 0.1) == 1 and min_count(8, 0.3) == 3
