"""Milliseconds per call of the estimators for a batch of B prompts x G samples on CPU (median of repeats).

For maj@k each row also says which path ran (exact over answer-count compositions, or sampled k-subsets) and
its cost, as `method="auto"` would decide it.

    python bench/estimator_speed.py [--batch 256] [--group 64] [--k 8] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.estimators import (
    best_of_majority_at_k,
    bon_at_k,
    bon_weights,
    budget_selection_weights,
    chen_passk_weights,
    majority_at_k,
    majority_method,
    majority_weights,
    max_likelihood_value,
    max_likelihood_weights,
    mean_weights,
    pass_at_k,
    pass_pow_k,
    pass_pow_k_weights,
    passk_weights,
)
from callbacks.estimators.majority import encode_classes, exact_cost

TARGET_MS = 50.0


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: caches binomial tables and quadrature nodes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def majority_note(answers: torch.Tensor, k: int, method: str, weights: bool, subsets: int = 256) -> str:
    """Which path runs and what it costs: exact = B m Q (k+1)^2 multiply-adds per pass (~9 passes for the
    weights, 1 for the value), sampled = B S (G + k + m) element operations."""
    path = majority_method(answers, k, method, weights=weights)
    b, g = answers.shape
    m = encode_classes(answers)[2]
    if path == "exact":
        passes = 9 if weights else 1
        return f"exact: {passes} x {exact_cost(b, m, k):.1e} multiply-adds (m = {m} answers)"
    return f"sampled: {subsets} subsets, ~{b * subsets * (g + k + m):.1e} element ops (m = {m} answers)"


def cases(b: int, g: int, k: int, classes: int) -> dict[str, tuple]:
    """name -> (call, note) on random inputs of B prompts x G samples."""
    gen = torch.Generator().manual_seed(0)
    binary = (torch.rand(b, g, generator=gen) < torch.rand(b, 1, generator=gen)).float()
    real = torch.rand(b, g, generator=gen)
    scores = torch.rand(b, g, generator=gen)
    answers = torch.randint(-1, classes, (b, g), generator=gen)
    correct = (answers == 0).float()
    distinct = torch.arange(g).repeat(b, 1)  # worst case for the exact path: every answer differs
    costs = torch.randint(50, 2000, (b, g), generator=gen).float()
    plus = costs > 1000
    sub = torch.Generator().manual_seed(1)
    maj = lambda a, method, w: majority_note(a, k, method, w)  # noqa: E731
    return {
        "mean_weights": (lambda: mean_weights(real), ""),
        "pass_at_k": (lambda: pass_at_k(binary, k), ""),
        "passk_weights loo-1 (binary)": (lambda: passk_weights(binary, k), ""),
        "passk_weights loo-1 (real)": (lambda: passk_weights(real, k), ""),
        "passk_weights loo": (lambda: passk_weights(real, k, "loo"), ""),
        "passk_weights none": (lambda: passk_weights(real, k, "none"), ""),
        "chen_passk_weights": (lambda: chen_passk_weights(binary, k), ""),
        "pass_pow_k": (lambda: pass_pow_k(binary, k), ""),
        "pass_pow_k_weights (binary)": (lambda: pass_pow_k_weights(binary, k), ""),
        "pass_pow_k_weights (real)": (lambda: pass_pow_k_weights(real, k), ""),
        "max_likelihood_value (K = G)": (lambda: max_likelihood_value(binary), ""),
        "max_likelihood_weights (K = G, binary)": (lambda: max_likelihood_weights(binary), ""),
        "max_likelihood_weights (K = G, real)": (lambda: max_likelihood_weights(real), ""),
        "bon_at_k": (lambda: bon_at_k(real, scores, k), ""),
        "bon_weights": (lambda: bon_weights(real, scores, k), ""),
        f"majority_at_k auto ({classes} answers)": (lambda: majority_at_k(answers, correct, k),
                                                    maj(answers, "auto", False)),
        f"majority_weights auto ({classes} answers)": (lambda: majority_weights(answers, correct, k),
                                                       maj(answers, "auto", True)),
        "majority_at_k sampled": (lambda: majority_at_k(answers, correct, k, method="sampled", generator=sub),
                                  maj(answers, "sampled", False)),
        "majority_weights sampled": (lambda: majority_weights(answers, correct, k, method="sampled", generator=sub),
                                     maj(answers, "sampled", True)),
        f"majority_weights exact ({g} distinct answers)": (
            lambda: majority_weights(distinct, correct, k, method="exact"), maj(distinct, "exact", True)),
        f"majority_weights auto ({g} distinct answers)": (lambda: majority_weights(distinct, correct, k, generator=sub),
                                                          maj(distinct, "auto", True)),
        f"best_of_majority_at_k ({classes} answers, N = G)": (
            lambda: best_of_majority_at_k(answers, correct, scores, k), "evaluation only: a Python loop over prompts"),
        "budget_selection_weights": (lambda: budget_selection_weights(real, costs, plus, 0.3), ""),
        "budget_selection_weights one_per_prompt": (
            lambda: budget_selection_weights(real, costs, plus, 0.3, one_per_prompt=True), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 avoids measuring contention on a shared machine")
    parser.add_argument("--classes", type=int, default=8, help="distinct answers per prompt for maj@k")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"B={args.batch}, G={args.group}, k={args.k}, float32 inputs, torch {torch.__version__}, "
          f"{args.threads} CPU threads, median of {args.repeats}\n")
    print("| function | ms / call | path and cost |")
    print("|---|---:|---|")
    slow: list[str] = []
    for name, (fn, note) in cases(args.batch, args.group, args.k, args.classes).items():
        ms = median_ms(fn, args.repeats)
        print(f"| {name} | {ms:.2f} | {note} |")
        if ms > TARGET_MS and name.startswith(("pass", "max_likelihood")):
            slow.append(name)
    # the issue-15 target for the training estimators of pass@k, pass^k and MaxRL at B = 256, G = 64
    print(f"\npass@k, pass^k and MaxRL estimators under {TARGET_MS:.0f} ms each: "
          + ("yes" if not slow else "NO: " + ", ".join(slow)))


if __name__ == "__main__":
    main()
