"""Bias and variance of the k-sample gradient estimators on a toy softmax policy with an exact gradient.

The policy samples one of K = 5 outcomes (softmax of logits theta); each outcome has a reward (and, for
maj@k and bo@k, an answer class or a verifier score). With G samples per draw, an estimator's gradient is
g_hat = sum_i w_i grad log pi(y_i) = sum_i w_i (e_{y_i} - pi). The exact gradient of J_k = E[f(y_1..y_k)]
comes from enumerating all K^k k-tuples (f evaluated by the estimator functions on each k-tuple, G = k) and
autograd. Over D independent draws (vectorised, B = D) we report:
  rel. bias = |mean g_hat - grad J_k| / |grad J_k|, and its Monte-Carlo z-score |bias| / sqrt(tr Cov / D)
  cos       = cosine between mean g_hat and grad J_k
  scale     = <mean g_hat, grad J_k> / |grad J_k|^2 (1 when unbiased; Chen's depends on the prompt's p)
  tr Cov    = total variance of g_hat (sum over the K coordinates)
  1/SNR     = tr Cov / |mean g_hat|^2, a scale-free comparison (Chen's weights have another scale)
Estimators: the plain U-statistic "none" (no baseline), PKPO's "loo" and "loo-1" (Walder & Karkhanis 2025),
Chen et al. 2025's analytic advantages (binary pass@k only) and Tang et al. 2025 (n = k): the G samples split
into G/k disjoint groups of k, loo-1 inside each, weights times k/G so the sum stays unbiased at the same
sample budget. For maj@k and bo@k the plain weights are s_i = w_i(loo-1) + (k/G) f_hat_{k-1}(group without i).

    python bench/estimator_variance.py [--draws 200000] [--vote-draws 40000] [--group 8] [--k 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.estimators import (
    bon_at_k,
    bon_weights,
    chen_passk_weights,
    majority_at_k,
    majority_weights,
    pass_at_k,
    passk_weights,
)

D = torch.float64
Weights = Callable[[Tensor, int], Tensor]  # (outcomes [D, G], k) -> weights [D, G]
Value = Callable[[Tensor, int], Tensor]  # (outcomes [D, n], k) -> unbiased value estimate [D]


def exact_gradient(theta: Tensor, k: int, value: Value) -> Tensor:
    """grad_theta of J_k = sum over all k-tuples of prob(tuple) * f(tuple); f(tuple) = value(tuple, k)."""
    tuples = torch.tensor(list(itertools.product(range(len(theta)), repeat=k)))
    th = theta.clone().requires_grad_(True)
    pi = torch.softmax(th, 0)
    j = (pi[tuples].prod(-1) * value(tuples, k).to(D)).sum()
    return torch.autograd.grad(j, th)[0]


def tang(weights: Weights) -> Weights:
    """Tang et al. (n = k): disjoint groups of k, loo-1 inside each, times k/G."""
    def run(ys: Tensor, k: int) -> Tensor:
        d, g = ys.shape
        return weights(ys.reshape(d * (g // k), k), k).view(d, g) * (k / g)
    return run


def plain(weights: Weights, value: Value) -> Weights:
    """The baseline-free U-statistic s_i = (1/C(G,k)) sum_{I containing i} f(I), from the loo-1 weights plus
    the (k/G)-scaled (k-1)-sample value of the other samples (PKPO Eq. 33 read backwards)."""
    def run(ys: Tensor, k: int) -> Tensor:
        d, g = ys.shape
        others = torch.stack([torch.cat([ys[:, :i], ys[:, i + 1:]], 1) for i in range(g)], 1)  # [D, G, G-1]
        return weights(ys, k) + (k / g) * value(others.reshape(d * g, g - 1), k - 1).view(d, g)
    return run


def table(theta: Tensor, k: int, g: int, draws: int, value: Value, estimators: dict[str, Weights],
          gen: torch.Generator, chunk: int = 25_000) -> list[str]:
    pi = torch.softmax(theta, 0)
    exact = exact_gradient(theta, k, value)
    ys = torch.multinomial(pi, draws * g, replacement=True, generator=gen).view(draws, g)
    rows = []
    for name, fn in estimators.items():
        parts = []
        for block in ys.split(chunk):  # bounds the memory of the exact maj@k path
            score = torch.nn.functional.one_hot(block, len(pi)).to(D) - pi  # grad log pi(y) = e_y - pi, [d, G, K]
            parts.append((fn(block, k).to(D).unsqueeze(-1) * score).sum(1))
        est = torch.cat(parts)  # [D, K]
        mean, tr_cov = est.mean(0), float(est.var(0).sum())
        bias = float((mean - exact).norm())
        rows.append(f"| {name} | {bias / float(exact.norm()):.4f} | {bias / (tr_cov / draws) ** 0.5:.1f} | "
                    f"{float(torch.nn.functional.cosine_similarity(mean, exact, 0)):.4f} | "
                    f"{float(mean @ exact) / float(exact @ exact):.3f} | {tr_cov:.3e} | "
                    f"{tr_cov / float(mean.norm()) ** 2:.2f} |")
    return ["| estimator | rel. bias | bias z | cos | scale | tr Cov | 1/SNR |",
            "|---|---:|---:|---:|---:|---:|---:|", *rows]


def passk_estimators(reward: Tensor, binary: bool) -> tuple[Value, dict[str, Weights]]:
    value: Value = lambda ys, k: pass_at_k(reward[ys], k)  # noqa: E731
    loo1: Weights = lambda ys, k: passk_weights(reward[ys], k, "loo-1")  # noqa: E731
    out: dict[str, Weights] = {
        "none (plain)": lambda ys, k: passk_weights(reward[ys], k, "none"),
        "loo": lambda ys, k: passk_weights(reward[ys], k, "loo"),
        "loo-1 (default)": loo1,
        "Tang (groups of k)": tang(loo1),
    }
    if binary:
        out["Chen analytic"] = lambda ys, k: chen_passk_weights(reward[ys], k)
    return value, out


def majority_estimators(answer: Tensor, correct: Tensor) -> tuple[Value, dict[str, Weights]]:
    value: Value = lambda ys, k: majority_at_k(answer[ys], correct[ys], k, method="exact")  # noqa: E731
    loo1: Weights = lambda ys, k: majority_weights(answer[ys], correct[ys], k, method="exact")  # noqa: E731
    return value, {"none (plain)": plain(loo1, value), "loo-1 (default)": loo1, "Tang (groups of k)": tang(loo1)}


def bon_estimators(reward: Tensor, score: Tensor) -> tuple[Value, dict[str, Weights]]:
    value: Value = lambda ys, k: bon_at_k(reward[ys], score[ys], k)  # noqa: E731
    loo1: Weights = lambda ys, k: bon_weights(reward[ys], score[ys], k)  # noqa: E731
    return value, {"none (plain)": plain(loo1, value), "loo-1 (default)": loo1, "Tang (groups of k)": tang(loo1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200_000, help="draws per pass@k / max@k / bo@k policy")
    parser.add_argument("--vote-draws", type=int, default=40_000, help="draws for maj@k (its exact path is slower)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.group % args.k or args.k < 2:
        parser.error("--k must be >= 2 and divide --group (Tang's estimator uses disjoint groups of k)")
    torch.set_num_threads(1)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    k, g = args.k, args.group
    print(f"G={g}, k={k}, {args.draws} draws per policy ({args.vote_draws} for maj@k), seed {args.seed}\n")

    def show(title: str, theta: Tensor, draws: int, estimators: tuple[Value, dict[str, Weights]]) -> None:
        pi = [round(x, 3) for x in torch.softmax(theta, 0).tolist()]
        print(f"{title}, pi = {pi}\n\n" + "\n".join(table(theta, k, g, draws, *estimators, gen)) + "\n")

    # five outcomes, one correct (pass@k) with success probability p; the other four share 1 - p unevenly
    binary = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=D)
    for p in (0.05, 0.2, 0.5):
        theta = torch.cat([torch.tensor([p], dtype=D), torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=D) * (1 - p)]).log()
        show(f"pass@{k}, binary rewards {binary.tolist()}", theta, args.draws, passk_estimators(binary, True))
    graded = torch.tensor([1.0, 0.7, 0.4, 0.4, 0.0], dtype=D)
    theta = torch.tensor([-1.5, -0.5, 0.0, 0.3, 0.5], dtype=D)
    show(f"max@{k}, rewards {graded.tolist()}", theta, args.draws, passk_estimators(graded, False))
    # maj@k: outcome 0 answers A (correct), outcomes 1 and 2 the same wrong answer B, 3 answers C, 4 is unparsable
    answer, correct = torch.tensor([0, 1, 1, 2, -1]), torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=D)
    theta = torch.tensor([0.3, 0.15, 0.15, 0.25, 0.15], dtype=D).log()
    show(f"maj@{k}, answers [A, B, B, C, none], gold A", theta, args.vote_draws, majority_estimators(answer, correct))
    # bo@k: a noisy verifier that scores a wrong answer highest and ties a correct and a wrong one
    reward, score = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=D), torch.tensor([0.8, 0.9, 0.3, 0.3, 0.1], dtype=D)
    theta = torch.tensor([0.15, 0.2, 0.15, 0.2, 0.3], dtype=D).log()
    show(f"bo@{k}, rewards {reward.tolist()}, verifier scores {score.tolist()}", theta, args.draws,
         bon_estimators(reward, score))
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
