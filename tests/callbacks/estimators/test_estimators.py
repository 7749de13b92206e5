"""callbacks.estimators against the shared exact vectors, brute-force enumeration of all k-subsets, and
configuration errors. Unbiasedness on a toy policy and stability at G = 512: test_estimator_properties.py."""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import brute_force as bf
import pytest
import torch
from estimator_testing import D, close, exact, t

from callbacks.estimators import (
    bon_at_k,
    bon_weights,
    budget_selection_weights,
    chen_passk_weights,
    dual_update,
    majority_at_k,
    majority_method,
    majority_weights,
    mean_weights,
    pass_at_k,
    passk_min_group_size,
    passk_weights,
)

# the repo root is parents[3]; shared/ lies beside it (in CI too, where the repo is cloned elsewhere)
VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors" / "objectives.json"

TESTED_VECTOR_KEYS = {"pkpo_binary", "pkpo_continuous", "tang_passk_n_eq_k", "tang_majvote_n_eq_k", "chen_analytic",
                      "majority_vote_loo_minus_1", "bon_loo_minus_1"}


def all_vectors() -> dict:
    if not VECTORS.is_file():
        pytest.fail(f"the shared exact test vectors are missing: expected {VECTORS} (shared/ beside the repository "
                    "root, as in the project layout); these tests must not pass without them", pytrace=False)
    return json.loads(VECTORS.read_text())


def vectors(key: str) -> list[dict]:
    cases = all_vectors()[key]
    assert cases, f"no cases under {key!r} in {VECTORS}"
    return cases


def ids_of(answers: list, gold: set) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer strings -> per-group class ids (None -> -1) and correctness."""
    table: dict = {}
    ids = [-1 if a is None else table.setdefault(a, len(table)) for a in answers]
    return torch.tensor([ids]), t([[1.0 if a in gold else 0.0 for a in answers]])


# ---------------------------------------------------------------------------------------------------- (1)

def test_every_vector_set_in_the_shared_file_is_tested():
    assert set(all_vectors()) - {"_about"} == TESTED_VECTOR_KEYS


def test_estimator_modules_import_only_torch_math_and_the_standard_library():
    import ast

    allowed = {"torch", "math", "functools", "typing", "__future__", "callbacks"}
    root = Path(__file__).resolve().parents[3] / "callbacks" / "estimators"
    files = sorted(root.glob("*.py"))
    assert len(files) >= 6, f"expected the estimator modules under {root}"
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in allowed, f"callbacks/estimators/{path.name} imports {module}"
                if top == "callbacks":
                    assert module.startswith("callbacks.estimators"), module


@pytest.mark.parametrize("key", ["pkpo_binary", "pkpo_continuous"])
def test_pkpo_vectors_value_and_all_three_baselines(key):
    for case in vectors(key):
        r, k = t([case["rewards"]]), case["k"]
        close(pass_at_k(r, k), [Fraction(case["rho"])])
        close(passk_weights(r, k, "none"), exact(case["s"]))
        close(passk_weights(r, k, "loo"), exact(case["s_loo"]))
        close(passk_weights(r, k, "loo-1"), exact(case["s_loo_minus_1"]))


def test_tang_passk_vectors_are_loo_minus_1_with_g_equal_k():
    for case in vectors("tang_passk_n_eq_k"):
        close(passk_weights(t([case["rewards"]]), case["k"], "loo-1"), exact(case["A"]))


def test_tang_majority_vectors_with_g_equal_k():
    for case in vectors("tang_majvote_n_eq_k"):
        ids, correct = ids_of(case["answers"], {case["correct"]})
        k = len(case["answers"])
        close(majority_at_k(ids, correct, k, method="exact"), [Fraction(case["f"])])
        close(majority_weights(ids, correct, k, method="exact"), exact(case["A"]))


def test_chen_vectors():
    for case in vectors("chen_analytic"):
        r, k = t([case["rewards"]]), case["k"]
        # the stored floats are rounded to 9 decimals
        close(chen_passk_weights(r, k, eps=case["eps"]), case["A"], tol=1e-9 + 5e-10)
        rbar = pass_at_k(r, k)
        close(rbar, [case["Rbar"]], tol=1e-9 + 5e-10)
        close((rbar * (1 - rbar)).sqrt(), [case["sigma"]], tol=1e-9 + 5e-10)


def test_majority_vote_vectors_value_and_loo_minus_1_weights():
    for case in vectors("majority_vote_loo_minus_1"):
        ids, correct = ids_of(case["answers"], set(case["correct_answers"]))
        close(majority_at_k(ids, correct, case["k"], method="exact"), [Fraction(case["value"]["exact"])])
        close(majority_weights(ids, correct, case["k"], method="exact"), exact(case["w_loo_minus_1"]))


def test_bon_vectors_value_and_loo_minus_1_weights():
    for case in vectors("bon_loo_minus_1"):
        r, v, k = t([case["rewards"]]), t([case["verifier_scores"]]), case["k"]
        close(bon_at_k(r, v, k), [Fraction(case["value"]["exact"])])
        close(bon_weights(r, v, k), exact(case["w_loo_minus_1"]))


def test_brute_force_references_reproduce_the_vectors_exactly():
    dec = lambda xs: [Fraction(str(x)) for x in xs]  # noqa: E731  decimal inputs, so fractions compare exactly
    fr = lambda items: [Fraction(x["exact"]) for x in items]  # noqa: E731
    for case in vectors("pkpo_binary") + vectors("pkpo_continuous"):
        r, k = dec(case["rewards"]), case["k"]
        assert bf.pass_at_k(r, k) == Fraction(case["rho"])
        for name, key in (("none", "s"), ("loo", "s_loo"), ("loo-1", "s_loo_minus_1")):
            assert bf.passk_weights(r, k, name) == fr(case[key])
    for case in vectors("majority_vote_loo_minus_1"):
        gold = set(case["correct_answers"])
        correct = [int(a in gold) for a in case["answers"]]
        assert bf.majority_at_k(case["answers"], correct, case["k"]) == Fraction(case["value"]["exact"])
        assert bf.majority_weights(case["answers"], correct, case["k"]) == fr(case["w_loo_minus_1"])
    for case in vectors("bon_loo_minus_1"):
        r, v, k = dec(case["rewards"]), dec(case["verifier_scores"]), case["k"]
        assert bf.bon_at_k(r, v, k) == Fraction(case["value"]["exact"])
        assert bf.bon_weights(r, v, k) == fr(case["w_loo_minus_1"])


# ---------------------------------------------------------------------------------------------------- (2)

def random_groups(seed: int, count: int = 25, max_g: int = 8):
    """Groups covering binary, real, heavy ties, all-correct, none-correct, G = k and k = 1."""
    rng = random.Random(seed)
    kinds = ["binary", "real", "ties", "all_correct", "none_correct"]
    for j in range(count):
        g = rng.randint(2, max_g)
        k = [1, g, rng.randint(1, g)][j % 3]
        kind = kinds[j % len(kinds)]
        if kind == "binary":
            r = [float(rng.random() < 0.4) for _ in range(g)]
        elif kind == "real":
            r = [round(rng.random(), 3) for _ in range(g)]
        elif kind == "ties":
            r = [rng.choice([0.0, 0.25, 0.5]) for _ in range(g)]
        else:
            r = [1.0 if kind == "all_correct" else 0.0] * g
        yield r, k


@pytest.mark.parametrize("normalize", ["none", "group_std"])
def test_mean_weights_matches_brute_force(normalize):
    for r, _ in random_groups(0):
        close(mean_weights(t([r]), normalize=normalize, eps=1e-6), bf.mean_weights(r, normalize, 1e-6), tol=1e-9)


def test_pass_at_k_matches_brute_force():
    for r, k in random_groups(1):
        close(pass_at_k(t([r]), k), [bf.pass_at_k(r, k)])


@pytest.mark.parametrize("baseline", ["none", "loo", "loo-1"])
def test_passk_weights_match_brute_force(baseline):
    for r, k in random_groups(2):
        if baseline == "loo" and k == len(r):
            continue
        close(passk_weights(t([r]), k, baseline), bf.passk_weights(r, k, baseline))


def test_passk_weights_batched_rows_equal_single_rows():
    rows = [[0.1, 0.5, 0.5, 0.0, 1.0, 0.3], [1.0, 0.0, 0.0, 1.0, 1.0, 0.0], [0.2] * 6]
    for baseline in ("none", "loo", "loo-1"):
        batched = passk_weights(t(rows), 3, baseline)
        for i, row in enumerate(rows):
            assert torch.equal(batched[i], passk_weights(t([row]), 3, baseline)[0])


@pytest.mark.parametrize("baseline", ["none", "loo", "loo-1"])
def test_tied_rewards_get_bitwise_equal_weights(baseline):
    r = t([[0.1, 0.7, 0.1, 0.3, 0.7, 0.7, 0.1, 0.3]])
    w = passk_weights(r, 3, baseline)[0]
    for value in (0.1, 0.3, 0.7):
        tied = w[r[0] == value]
        assert torch.all(tied == tied[0])


def test_loo_minus_1_gives_exact_zeros_for_all_correct_and_all_wrong_groups():
    for value in (0.0, 1.0, 0.3):
        w = passk_weights(torch.full((2, 7), value, dtype=D), 3, "loo-1")
        assert torch.all(w == 0)


def test_loo_minus_1_binary_closed_form():
    r = t([[1, 0, 0, 1, 0, 0, 1, 0, 0, 0]])
    n, c, k = 10, 3, 4
    w = passk_weights(r, k)[0]
    close(w[r[0] == 1], [Fraction(math.comb(n - c, k - 1), math.comb(n, k))] * c, tol=1e-15)
    assert torch.all(w[r[0] == 0] == 0)


def test_chen_matches_brute_force():
    for r, k in random_groups(3):
        if any(x not in (0.0, 1.0) for x in r):
            continue
        close(chen_passk_weights(t([r]), k), bf.chen_weights(r, k))


def random_answers(seed: int, count: int = 25, max_g: int = 8):
    """Answer classes with unparsable samples (-1), modal ties and one-class groups."""
    rng = random.Random(seed)
    for j in range(count):
        g = rng.randint(2, max_g)
        k = [1, g, rng.randint(1, g)][j % 3]
        classes = rng.randint(1, 4)
        ids = [rng.choice(list(range(classes)) + [-1] * (j % 2)) for _ in range(g)]
        gold = {c: float(rng.random() < 0.5) if j % 4 else round(rng.random(), 2) for c in range(classes)}
        yield ids, [gold.get(i, 0.0) for i in ids], k


def test_majority_exact_matches_brute_force():
    for ids, correct, k in random_answers(4):
        info: dict = {}
        close(majority_at_k(torch.tensor([ids]), t([correct]), k, method="exact", info=info),
              [bf.majority_at_k(ids, correct, k)])
        assert info["method"] == "exact"
        close(majority_weights(torch.tensor([ids]), t([correct]), k, method="exact"),
              bf.majority_weights(ids, correct, k))


MAJORITY_EDGE_GROUPS = {
    "all correct": ([0, 0, 0, 0, 0], [1.0] * 5),
    "none correct": ([0, 1, 2, 0, 1], [0.0] * 5),
    "only the correct class parsable": ([-1, 0, -1, 0, -1], [0.0, 1.0, 0.0, 1.0, 0.0]),
    "all unparsable": ([-1] * 5, [0.0] * 5),
    "all distinct (every subset a tie)": ([0, 1, 2, 3, 4], [1.0, 0.0, 0.0, 0.0, 0.0]),
    "graded correctness": ([0, 1, 1, 2, -1], [0.5, 1.0, 1.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("name", sorted(MAJORITY_EDGE_GROUPS))
def test_majority_edge_groups_match_brute_force_for_every_k(name):
    ids, correct = MAJORITY_EDGE_GROUPS[name]
    for k in range(1, len(ids) + 1):  # k = 1 .. G (G = k included)
        close(majority_at_k(torch.tensor([ids]), t([correct]), k, method="exact"), [bf.majority_at_k(ids, correct, k)])
        close(majority_weights(torch.tensor([ids]), t([correct]), k, method="exact"),
              bf.majority_weights(ids, correct, k))


def test_majority_unparsable_samples_get_zero_weight():
    ids, correct = torch.tensor([[0, -1, 0, 1, -1, 1, 2]]), t([[1, 0, 1, 0, 0, 0, 0]])
    w = majority_weights(ids, correct, 3, method="exact")
    assert torch.all(w[ids == -1] == 0)


def test_majority_without_any_valid_vote_is_zero():
    ids, correct = torch.full((1, 5), -1), t([[0.0] * 5])
    assert majority_at_k(ids, correct, 3).item() == 0
    assert torch.all(majority_weights(ids, correct, 3) == 0)


def test_majority_sampled_terms_averaged_over_all_subsets_equal_exact():
    """The sampled path averages the per-subset terms below over random k-subsets; averaged over every
    k-subset they give the exact weights, so the uniform sample average is unbiased."""
    from callbacks.estimators.majority import class_correctness, encode_classes, subset_terms

    for ids, correct, k in random_answers(5, count=12):
        if k == 1:
            continue
        g = len(ids)
        cls, _, m = encode_classes(torch.tensor([ids]))
        corr = class_correctness(cls, t([correct]), m)
        subsets = torch.tensor([list(itertools.combinations(range(g), k))])
        f, diff = subset_terms(cls, corr, m, subsets)
        w = torch.zeros(g, dtype=D).index_add_(0, subsets.flatten(), diff.flatten()) / subsets.shape[1]
        close(f.mean(), [bf.majority_at_k(ids, correct, k)])
        close(w, bf.majority_weights(ids, correct, k))


def test_majority_sampled_path_reports_itself_and_estimates_the_exact_weights():
    ids, correct = torch.tensor([[0, 0, 1, 2, 1, 0, -1, 1]]), t([[1, 1, 0, 0, 0, 1, 0, 0]])
    info: dict = {}
    gen = torch.Generator().manual_seed(0)
    w = majority_weights(ids, correct, 4, method="sampled", num_subsets=4000, generator=gen, info=info)
    assert info["method"] == "sampled" and info["num_subsets"] == 4000
    exact_w = majority_weights(ids, correct, 4, method="exact")
    assert torch.allclose(w, exact_w, atol=0.03)
    again = majority_weights(ids, correct, 4, method="sampled", num_subsets=4000,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, again)  # reproducible with a seeded generator


def test_majority_auto_picks_exact_when_cheap_and_sampled_when_costly():
    small = torch.randint(0, 4, (8, 16))
    assert majority_method(small, 4) == "exact"
    large = torch.arange(512).repeat(64, 1)
    assert majority_method(large, 128) == "sampled"
    info: dict = {}
    majority_at_k(small, torch.ones(8, 16, dtype=D), 4, info=info)
    assert info["method"] == "exact"


def bon_groups(seed: int, count: int = 25):
    """Score ties with different rewards, reward ties, binary and real rewards."""
    rng = random.Random(seed)
    for j in range(count):
        g = rng.randint(2, 8)
        k = [1, g, rng.randint(1, g)][j % 3]
        scores = [rng.choice([0.1, 0.5, 0.9]) if j % 2 else round(rng.random(), 3) for _ in range(g)]
        rewards = [float(rng.random() < 0.5) if j % 3 else rng.choice([0.0, 0.3, 1.0]) for _ in range(g)]
        yield rewards, scores, k


def test_bon_matches_brute_force_with_score_ties():
    for rewards, scores, k in bon_groups(6):
        close(bon_at_k(t([rewards]), t([scores]), k), [bf.bon_at_k(rewards, scores, k)])
        close(bon_weights(t([rewards]), t([scores]), k), bf.bon_weights(rewards, scores, k))


BON_EDGE_GROUPS = {
    "all correct": ([1.0] * 5, [0.3, 0.9, 0.1, 0.9, 0.5]),
    "none correct": ([0.0] * 5, [0.3, 0.9, 0.1, 0.9, 0.5]),
    "all scores tied": ([1.0, 0.0, 0.0, 1.0, 0.5], [0.5] * 5),
    "the best score is wrong": ([0.0, 1.0, 1.0, 0.0, 1.0], [0.9, 0.1, 0.2, 0.8, 0.3]),
}


@pytest.mark.parametrize("name", sorted(BON_EDGE_GROUPS))
def test_bon_edge_groups_match_brute_force_for_every_k(name):
    rewards, scores = BON_EDGE_GROUPS[name]
    for k in range(1, len(rewards) + 1):
        close(bon_at_k(t([rewards]), t([scores]), k), [bf.bon_at_k(rewards, scores, k)])
        close(bon_weights(t([rewards]), t([scores]), k), bf.bon_weights(rewards, scores, k))


def test_bon_with_scores_equal_to_rewards_is_max_at_k():
    r = t([[0.2, 0.9, 0.4, 0.9, 0.0, 0.4]])
    close(bon_weights(r, r, 3), passk_weights(r, 3).flatten().tolist())
    close(bon_at_k(r, r, 3), pass_at_k(r, 3).tolist())


def budget_batches(seed: int, count: int = 12):
    rng = random.Random(seed)
    for _ in range(count):
        b, g = rng.randint(1, 3), rng.randint(2, 3)
        rewards = [[rng.choice([0.0, 0.5, 1.0]) for _ in range(g)] for _ in range(b)]
        plus = [[rng.random() < 0.5 for _ in range(g)] for _ in range(b)]
        yield rewards, plus, rng.choice([0.0, 0.25, 0.5, 1.0])


@pytest.mark.parametrize("one_per_prompt", [False, True])
def test_budget_selection_is_the_lp_optimum_and_feasible(one_per_prompt):
    for rewards, plus, q in budget_batches(7):
        r, gp = t(rewards), torch.tensor(plus)
        x = budget_selection_weights(r, None, gp, q, one_per_prompt=one_per_prompt)
        margin = r - r.mean(-1, keepdim=True)
        assert torch.all((x >= 0) & (x <= 1))
        assert float((x * gp).sum()) <= q * float(x.sum()) + 1e-12
        if one_per_prompt:
            assert torch.all(x.sum(-1) <= 1 + 1e-12)
        best = bf.budget_selection_optimum(rewards, [[float(p) for p in row] for row in plus], q, one_per_prompt)
        assert abs(float((x * margin).sum()) - float(best)) < 1e-12


def test_budget_selection_with_costs_matches_brute_force():
    rng = random.Random(8)
    for _ in range(8):
        rewards = [[rng.random() for _ in range(3)] for _ in range(2)]
        costs = [[rng.choice([100.0, 300.0, 800.0]) for _ in range(3)] for _ in range(2)]
        x = budget_selection_weights(t(rewards), t(costs), None, 400.0)
        assert float((x * t(costs)).sum()) <= 400.0 * float(x.sum()) + 1e-9
        margin = t(rewards) - t(rewards).mean(-1, keepdim=True)
        assert abs(float((x * margin).sum()) - float(bf.budget_selection_optimum(rewards, costs, 400.0))) < 1e-9


def test_dual_update_raises_lambda_when_over_budget_and_floors_at_zero():
    assert dual_update(0.5, mean_cost=300.0, budget=200.0, lr=1e-3) == pytest.approx(0.6)
    assert dual_update(0.5, mean_cost=100.0, budget=200.0, lr=1e-3) == pytest.approx(0.4)
    assert dual_update(0.05, mean_cost=100.0, budget=200.0, lr=1e-3) == 0.0


# ---------------------------------------------------------------------------------------------------- (5)

@pytest.mark.parametrize("call", [
    lambda r, k: pass_at_k(r, k),
    lambda r, k: passk_weights(r, k),
    lambda r, k: chen_passk_weights(r, k),
    lambda r, k: bon_at_k(r, r, k),
    lambda r, k: bon_weights(r, r, k),
    lambda r, k: majority_at_k(torch.zeros_like(r, dtype=torch.long), r, k),
    lambda r, k: majority_weights(torch.zeros_like(r, dtype=torch.long), r, k),
])
def test_group_smaller_than_k_is_a_clear_error(call):
    with pytest.raises(ValueError, match=r"G=3.*k=4"):
        call(t([[1, 0, 1]]), 4)


@pytest.mark.parametrize("baseline", ["none", "loo", "loo-1"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_passk_min_group_size_is_the_smallest_group_passk_weights_accepts(baseline, k):
    need = passk_min_group_size(k, baseline)
    assert torch.isfinite(passk_weights(t([[1.0, 0.0] * need])[:, :need], k, baseline)).all()
    if need > 1:
        with pytest.raises(ValueError):
            passk_weights(t([[1.0, 0.0] * need])[:, :need - 1], k, baseline)


def test_chen_rejects_non_binary_rewards():
    with pytest.raises(ValueError, match="binary"):
        chen_passk_weights(t([[1.0, 0.5, 0.0]]), 2)


def test_loo_baseline_with_g_equal_k_is_an_error():
    with pytest.raises(ValueError, match="loo"):
        passk_weights(t([[1, 0, 1]]), 3, "loo")


def test_unknown_options_are_errors():
    with pytest.raises(ValueError, match="baseline"):
        passk_weights(t([[1, 0, 1]]), 2, "mean")
    with pytest.raises(ValueError, match="normalize"):
        mean_weights(t([[1, 0, 1]]), normalize="std")
    with pytest.raises(ValueError, match="method"):
        majority_at_k(torch.zeros(1, 3, dtype=torch.long), t([[1, 0, 1]]), 2, method="fast")
