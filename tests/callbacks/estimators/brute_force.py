"""Slow references for callbacks.estimators: enumerate every k-subset (itertools.combinations) in exact
Fraction arithmetic. One group (a list of G values) at a time; f(I) is evaluated straight from its
definition (the table in docs/estimators.md), so these share no code or formulas with the fast versions.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction

Subset = tuple[int, ...]


def frac(x) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)  # floats convert exactly


def u_value(n: int, k: int, f: Callable[[Subset], Fraction]) -> Fraction:
    """(1 / C(n, k)) sum over k-subsets of f."""
    subsets = list(itertools.combinations(range(n), k))
    return sum((f(s) for s in subsets), Fraction(0)) / len(subsets)


def u_plain(n: int, k: int, f: Callable[[Subset], Fraction]) -> list[Fraction]:
    """s_i = (1 / C(n, k)) sum_{I containing i} f(I)."""
    out = [Fraction(0)] * n
    for s in itertools.combinations(range(n), k):
        v = f(s)
        for i in s:
            out[i] += v
    return [o / math.comb(n, k) for o in out]


def u_loo_minus_1(n: int, k: int, f: Callable[[Subset], Fraction]) -> list[Fraction]:
    """w_i = (1 / C(n, k)) sum_{I containing i} (f(I) - f(I without i))."""
    out = [Fraction(0)] * n
    for s in itertools.combinations(range(n), k):
        v = f(s)
        for i in s:
            out[i] += v - f(tuple(j for j in s if j != i))
    return [o / math.comb(n, k) for o in out]


def rloo(values: Sequence) -> list[Fraction]:
    """k = 1 convention: r_i - mean_{j != i} r_j."""
    v = [frac(x) for x in values]
    n = len(v)
    return [v[i] - (sum(v) - v[i]) / (n - 1) for i in range(n)]


# --- mean reward ----------------------------------------------------------------------------------------

def mean_weights(rewards: Sequence, normalize: str = "none", eps: float = 1e-6) -> list[float]:
    w = rloo(rewards)
    if normalize == "none":
        return [float(x) for x in w]
    r = [frac(x) for x in rewards]
    mean = sum(r) / len(r)
    std = math.sqrt(float(sum((x - mean) ** 2 for x in r) / (len(r) - 1)))  # sample std
    return [float(x) / (std + eps) for x in w]


# --- pass@k / max@k ---------------------------------------------------------------------------------------

def pass_at_k(rewards: Sequence, k: int) -> Fraction:
    g = [frac(x) for x in rewards]
    return u_value(len(g), k, lambda s: max(g[i] for i in s))


def passk_weights(rewards: Sequence, k: int, baseline: str = "loo-1") -> list[Fraction]:
    g = [frac(x) for x in rewards]
    n = len(g)
    if k == 1:
        return list(g) if baseline == "none" else rloo(g)
    fmax = lambda s: max(g[i] for i in s) if s else Fraction(0)  # noqa: E731
    if baseline == "none":
        return u_plain(n, k, fmax)
    if baseline == "loo-1":
        return u_loo_minus_1(n, k, fmax)
    s = u_plain(n, k, fmax)
    out = []
    for i in range(n):
        others = [g[j] for j in range(n) if j != i]
        out.append(s[i] - Fraction(k, n - 1) * pass_at_k(others, k))
    return out


def chen_weights(rewards: Sequence, k: int, eps: float = 1e-6) -> list[float]:
    """Chen et al. 2025 analytic advantages; the two ratios counted over subsets."""
    g = [int(x) for x in rewards]
    n = len(g)
    big_r = u_value(n, k, lambda s: Fraction(max(g[i] for i in s)))
    sigma = math.sqrt(float(big_r * (1 - big_r)))
    if sigma == 0:
        return [0.0] * n
    out = []
    for i in range(n):
        if g[i] == 1:
            out.append(float(1 - big_r) / (sigma + eps))
        else:
            others = [j for j in range(n) if j != i]
            all_wrong = sum(1 for s in itertools.combinations(others, k - 1) if not any(g[j] for j in s))
            out.append(float(1 - big_r - Fraction(all_wrong, math.comb(n - 1, k - 1))) / (sigma + eps))
    return out


# --- majority vote --------------------------------------------------------------------------------------------

def majority_f(answers: Sequence, correct: Sequence, s: Subset) -> Fraction:
    """Correctness of the modal answer among s; None/negative never votes; ties averaged; empty vote 0."""
    def votes_for(a) -> bool:
        return a is not None and not (isinstance(a, int) and a < 0)

    votes = Counter(answers[i] for i in s if votes_for(answers[i]))
    if not votes:
        return Fraction(0)
    top = max(votes.values())
    tied = [a for a, c in votes.items() if c == top]
    corr = {answers[i]: frac(correct[i]) for i in s}
    return sum((corr[a] for a in tied), Fraction(0)) / len(tied)


def majority_at_k(answers: Sequence, correct: Sequence, k: int) -> Fraction:
    return u_value(len(answers), k, lambda s: majority_f(answers, correct, s))


def majority_weights(answers: Sequence, correct: Sequence, k: int) -> list[Fraction]:
    n = len(answers)
    if k == 1:
        return rloo([majority_f(answers, correct, (i,)) for i in range(n)])
    return u_loo_minus_1(n, k, lambda s: majority_f(answers, correct, s))


def majority_by_counts(sizes: Sequence[int], correct: Sequence, n_invalid: int,
                       k: int) -> tuple[Fraction, list[Fraction]]:
    """Second reference for large G with few classes: sum over count compositions, each weighted by its
    number of subsets prod C(n_b, x_b). Returns (value, weight of a member of each class)."""
    n = sum(sizes) + n_invalid
    corr = [frac(c) for c in correct]

    def f_counts(xs):
        top = max(xs, default=0)
        if top == 0:
            return Fraction(0)
        tied = [corr[b] for b, x in enumerate(xs) if x == top]
        return sum(tied, Fraction(0)) / len(tied)

    def total(szs, s, forced=None):
        """sum of f over s-subsets of the population (class `forced` gets one extra fixed member)."""
        acc = Fraction(0)
        for xs in itertools.product(*[range(min(sz, s) + 1) for sz in szs]):
            rest = s - sum(xs)
            if rest < 0 or rest > n_invalid:
                continue
            ways = math.prod(math.comb(sz, x) for sz, x in zip(szs, xs)) * math.comb(n_invalid, rest)
            if ways:
                ys = list(xs)
                if forced is not None:
                    ys[forced] += 1
                acc += ways * f_counts(ys)
        return acc

    cnk = math.comb(n, k)
    value = total(list(sizes), k) / cnk
    weights = []
    for a in range(len(sizes)):
        less = list(sizes)
        less[a] -= 1
        weights.append((total(less, k - 1, forced=a) - total(less, k - 1)) / cnk)
    return value, weights


# --- best-of-N ----------------------------------------------------------------------------------------

def bon_f(rewards: Sequence, scores: Sequence, s: Subset) -> Fraction:
    """Reward of the highest-score sample of s; ties in score: the average reward of the tied top."""
    if not s:
        return Fraction(0)
    top = max(frac(scores[i]) for i in s)
    tied = [frac(rewards[i]) for i in s if frac(scores[i]) == top]
    return sum(tied, Fraction(0)) / len(tied)


def bon_at_k(rewards: Sequence, scores: Sequence, k: int) -> Fraction:
    return u_value(len(rewards), k, lambda s: bon_f(rewards, scores, s))


def bon_weights(rewards: Sequence, scores: Sequence, k: int) -> list[Fraction]:
    if k == 1:
        return rloo(rewards)
    return u_loo_minus_1(len(rewards), k, lambda s: bon_f(rewards, scores, s))


# --- budget selection ------------------------------------------------------------------------------------

def budget_selection_optimum(rewards: Sequence[Sequence], coef: Sequence[Sequence], q: float,
                             one_per_prompt: bool = False) -> Fraction:
    """Optimal LP value by enumerating vertices. Without the per-prompt cap a vertex has at most one
    fractional x (one general constraint); with it, at most one prompt splits its unit between two choices.
    rewards, coef: B lists of G values (coef = G+ indicator or cost); the constraint is sum x (coef - q) <= 0.
    """
    r = [[frac(v) for v in row] for row in rewards]
    m = [[v - sum(row) / len(row) for v in row] for row in r]
    a = [[frac(c) - frac(q) for c in row] for row in coef]
    items = [(b, i) for b in range(len(r)) for i in range(len(r[b]))]
    best = Fraction(0)
    if not one_per_prompt:
        for bits in itertools.product((0, 1), repeat=len(items)):
            base_h = sum(a[b][i] for (b, i), x in zip(items, bits) if x)
            base_v = sum(m[b][i] for (b, i), x in zip(items, bits) if x)
            if base_h <= 0:
                best = max(best, base_v)
            for j, (b, i) in enumerate(items):  # item j fractional, the others at their bits
                if bits[j] or a[b][i] == 0:
                    continue
                x = -base_h / a[b][i]
                if 0 <= x <= 1:
                    best = max(best, base_v + x * m[b][i])
        return best
    choices = [[None, *range(len(row))] for row in r]
    for pick in itertools.product(*choices):
        h = sum(a[b][i] for b, i in enumerate(pick) if i is not None)
        v = sum(m[b][i] for b, i in enumerate(pick) if i is not None)
        if h <= 0:
            best = max(best, v)
        for b, i in enumerate(pick):  # prompt b mixes its pick with another choice
            for alt in choices[b]:
                a_old = a[b][i] if i is not None else 0
                a_alt = a[b][alt] if alt is not None else 0
                if alt == i or a_alt == a_old:
                    continue
                # theta * old + (1 - theta) * alt with the constraint tight
                theta = (-(h - a_old) - a_alt) / (a_old - a_alt)
                if 0 <= theta <= 1:
                    m_old = m[b][i] if i is not None else 0
                    m_alt = m[b][alt] if alt is not None else 0
                    best = max(best, v - m_old + theta * m_old + (1 - theta) * m_alt)
    return best
