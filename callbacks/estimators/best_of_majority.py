"""Best-of-majority bom@k (Di et al. 2025, "Best-of-Majority: Minimax-Optimal Strategy for Pass@k Inference
Scaling", arXiv 2510.03199): from N samples keep the answers whose frequency is at least alpha, submit the k of
them with the highest verifier score, succeed if a submitted answer is correct.

The exact value over N-subsets. f(S) for an N-subset S of the G samples: the answer classes with at least
m = ceil(alpha N) members in S are kept (unparsable samples, id < 0, never); the min(k, #kept) kept classes with
the highest scores are submitted (a score tie at the boundary: a uniform tie-break, averaged);
f(S) = 1 - E_tiebreak[prod over submitted classes of (1 - c_b)], which for 0/1 correctness is "some submitted
answer is correct" (a real c_b in [0, 1] counts as that answer's success probability). The estimate is the
U-statistic (1 / C(G, N)) sum_S f(S), unbiased for bom@k with budget N when the class correctness c_b and score s_b
are functions of the answer (the verifier judges answers, as in the paper's r(y)); they are read as the mean
correctness and mean score of the class's members over all G samples, so when scores vary inside a class the
estimate uses those means (stated, not hidden).

Computation: f depends on S only through the class counts, so sum_S f(S) is a coefficient of generating
polynomials in z (z^x: x members taken). Class b contributes K_b = sum_{x >= m} C(n_b, x) z^x when kept and
D_b = sum_{x < m} C(n_b, x) z^x when not. Score tie groups are processed from the highest score down with the
number j of submitted classes as state; inside a tie group a small recursion tracks (kept a, chosen u) with the
elementary symmetric sums of (1 - c_b) over chosen classes, and the tie-break average is e_q / C(a, q),
q = min(k - j, a). Every term is >= 0, so float64 has no cancellation until the final 1 - F / C(G, N).
Cost per prompt: O(m' (k+1) (N+1)^2) with m' the classes that can reach the threshold; a Python loop over
prompts (evaluation only).

Shapes: B prompts x G samples; [B, G] tensors in, [B] out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from callbacks.estimators.common import check_positive_k, check_rewards, comb, out_dtype
from callbacks.estimators.majority import class_correctness, encode_classes


def default_min_frequency(k: int) -> float:
    """alpha = 1 / (2k): at most 2k answers can be that frequent, so the verifier still chooses among them."""
    return 1.0 / (2 * k)


def min_count(num_samples: int, min_frequency: float) -> int:
    """The members an answer needs among N samples to be kept: ceil(alpha N), at least 1 (alpha N rounded to 9
    decimals first, so that alpha = 0.1 with N = 10 asks for 1 member, not 2 through binary rounding)."""
    if not 0.0 < min_frequency <= 1.0:
        raise ValueError(f"min_frequency must be in (0, 1], got {min_frequency!r}")
    return max(1, math.ceil(round(min_frequency * num_samples, 9)))


def best_of_majority_at_k(answer_ids: Tensor, correct: Tensor, scores: Tensor, k: int,
                          num_samples: int | None = None, min_frequency: float | None = None) -> Tensor:
    """Exact U-statistic estimate of bom@k with budget N over all N-subsets of the G samples (module docstring).

    answer_ids: [B, G] integer answer classes (-1 = unparsable); correct: [B, G] in [0, 1]; scores: [B, G]
    verifier scores; k >= 1 submissions; num_samples N in 1..G (None: G, the estimate is then f of all G samples);
    min_frequency alpha in (0, 1] (None: 1 / (2k)). Returns [B] in correct's dtype.
    """
    check_rewards(correct, "correct")
    check_rewards(scores, "scores")
    check_positive_k(k)
    if answer_ids.shape != correct.shape or scores.shape != correct.shape:
        raise ValueError(f"answer_ids {tuple(answer_ids.shape)}, correct {tuple(correct.shape)} and scores "
                         f"{tuple(scores.shape)} must have the same [B, G] shape")
    if bool(((correct < 0) | (correct > 1)).any()):
        raise ValueError("best_of_majority_at_k needs correctness in [0, 1] (a success probability per answer)")
    n = correct.shape[-1]
    big_n = n if num_samples is None else num_samples
    if not isinstance(big_n, int) or not 1 <= big_n <= n:
        raise ValueError(f"num_samples must be an integer in 1..G={n}, got {num_samples!r}")
    threshold = min_count(big_n, default_min_frequency(k) if min_frequency is None else min_frequency)
    cls, sizes, m = encode_classes(answer_ids.to(correct.device))
    corr = class_correctness(cls, correct, m).tolist()
    score = class_correctness(cls, scores.to(correct.device), m).tolist()
    sizes_list = sizes.long().tolist()
    values = [_bom_one_prompt(sizes_list[b], corr[b], score[b], n, big_n, threshold, k) for b in range(len(corr))]
    return torch.tensor(values, dtype=torch.float64, device=correct.device).to(out_dtype(correct))


def _times(a: Tensor, p: Tensor) -> Tensor:
    """Polynomial products truncated at degree N: a [..., N+1] times the polynomial p [N+1]."""
    d = p.shape[0]
    # toeplitz[e, deg] = p[deg - e] (0 for deg < e): rows of the zero-padded p, read backwards
    toeplitz = torch.cat([p.new_zeros(d - 1), p]).unfold(0, d, 1).flip(0)
    return a @ toeplitz


def _bom_one_prompt(sizes: list[int], corr: list[float], score: list[float], n: int, big_n: int, threshold: int,
                    k: int) -> float:
    """(1 / C(n, N)) sum over N-subsets of f, for one prompt's classes (sizes, correctness, score)."""
    def poly(coefs: list[float]) -> Tensor:
        return torch.tensor(coefs, dtype=torch.float64)

    # classes that can never reach the threshold behave like unparsable samples: only (1 + z)^(their members)
    candidates = [(s, 1.0 - c, size) for size, c, s in zip(sizes, corr, score) if size >= threshold]
    others = n - sum(size for _, _, size in candidates)
    outer = torch.zeros(k + 1, big_n + 1, dtype=torch.float64)
    outer[0, 0] = 1.0
    candidates.sort(key=lambda item: -item[0])
    start = 0
    while start < len(candidates):
        end = start
        while end < len(candidates) and candidates[end][0] == candidates[start][0]:
            end += 1
        group = candidates[start:end]
        start = end
        # inner[a, u]: a kept classes of the tie group, u of them chosen, weighted by prod of (1 - c) of the chosen
        inner = torch.zeros(len(group) + 1, k + 1, big_n + 1, dtype=torch.float64)
        inner[0, 0, 0] = 1.0
        for _, fail, size in group:
            kept = poly([comb(size, x) if x >= threshold else 0 for x in range(big_n + 1)])
            dropped = poly([comb(size, x) if x < threshold else 0 for x in range(big_n + 1)])
            new = _times(inner, dropped)
            taken = _times(inner[:-1], kept)
            new[1:] += taken
            new[1:, 1:] += fail * taken[:, :-1]
            inner = new
        # j submitted before the group, a kept in it: q = min(k - j, a) of them submitted (tie-break average
        # e_q / C(a, q)); j <= k - a moves to j + a, larger j fill up to k
        new_outer = torch.zeros_like(outer)
        for a in range(min(len(group), k) + 1):
            new_outer[a:] += _times(outer[:k + 1 - a], inner[a, a])
        for a in range(1, len(group) + 1):
            for j in range(max(k + 1 - a, 0), k + 1):
                new_outer[k] += _times(outer[j], inner[a, k - j]) / comb(a, k - j)
        outer = new_outer
    rest = poly([comb(others, x) for x in range(big_n + 1)])
    fail_sum = float(_times(outer.sum(0), rest)[big_n])
    return 1.0 - fail_sum / comb(n, big_n)
