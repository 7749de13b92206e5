"""Shared helpers of the estimator modules: input checks, exact binomial-ratio tables, tie groups and the
hockey-stick sums over them (used by pass@k and bon@k).

Only torch, math and the standard library, so the estimators stay importable anywhere.
Binomial ratios are computed from exact Python integers (`math.comb`, the product form) and one
correctly-rounded integer division into float64, so G up to several thousand neither overflows nor loses
precision; tables depend only on (G, k) and are cached.
"""

from __future__ import annotations

import functools
import math
from typing import Any, get_args

import torch
from torch import Tensor


def check_rewards(rewards: Tensor, name: str = "rewards") -> None:
    """Raise a clear error unless `rewards` is a finite [B, G] tensor."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"{name} must be a [B, G] tensor (B prompts x G samples), got {shape}")
    if rewards.is_floating_point() and not bool(torch.isfinite(rewards).all()):
        raise ValueError(f"{name} contains NaN or inf")


def check_positive_k(k: int, name: str = "k") -> None:
    """Raise unless k is an integer >= 1 (`name`: the setting's name in the message, e.g. "k_schedule[100]")."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")


def check_k(group_size: int, k: int) -> None:
    """n < k has no unbiased estimator: a configuration error, never a silent fallback."""
    check_positive_k(k)
    if group_size < k:
        raise ValueError(
            f"group size G={group_size} is smaller than k={k}: no unbiased estimator of a k-sample objective "
            f"exists from fewer than k samples; raise the group size to at least {k} or lower k")


def check_choice(value: Any, literal: Any, name: str) -> None:
    """Raise unless `value` is one of the values of the Literal type `literal` (`name`: the setting's name)."""
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def out_dtype(rewards: Tensor) -> torch.dtype:
    """Weights come back in the rewards' dtype; integer/bool rewards give the default float dtype."""
    return rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()


def comb(a: int, b: int) -> int:
    """C(a, b) with the convention C(a, b) = 0 when b < 0 or b > a (also for a < 0)."""
    if b < 0 or a < 0 or b > a:
        return 0
    return math.comb(a, b)


@functools.lru_cache(maxsize=256)
def _comb_table_cpu(xmax: int, j: int, num: int, den: int) -> Tensor:
    # int / int true division is correctly rounded in Python, even for huge integers
    return torch.tensor([comb(x, j) * num / den for x in range(xmax + 1)], dtype=torch.float64)


@functools.lru_cache(maxsize=256)
def comb_table(xmax: int, j: int, num: int, den: int, device: torch.device) -> Tensor:
    """Tensor t[x] = C(x, j) * num / den for x = 0..xmax, float64 on `device`; cached per device so that
    repeated calls do no host-to-device copies. Callers must not modify it."""
    return _comb_table_cpu(xmax, j, num, den).to(device)


def take(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a 1-D table (or rows of a 2-D one) via index_select, which is far faster on CPU
    than advanced indexing (measured ~1000x for a [256, 64] index)."""
    out = table.index_select(0, index.reshape(-1))
    return out.view(*index.shape, *table.shape[1:])


def tie_groups(keys: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sort each row ascending and describe its tie groups.

    keys: [B, n]. Returns (order, lower, size, gid), all [B, n] and indexed by sorted position:
    order = the sorting permutation, lower = number of elements strictly below (the group's start),
    size = the size of the element's tie group, gid = tie-group index 0.. within the row.
    """
    sk, order = keys.sort(dim=-1, stable=True)
    n = keys.shape[-1]
    pos = torch.arange(n, device=keys.device).expand_as(sk)
    new = torch.ones_like(sk, dtype=torch.bool)
    new[:, 1:] = sk[:, 1:] != sk[:, :-1]
    lower = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    gid = new.long().cumsum(dim=-1) - 1
    size = torch.zeros_like(sk, dtype=torch.float64).scatter_add_(-1, gid, torch.ones_like(sk, dtype=torch.float64))
    return order, lower, size.gather(-1, gid), gid


def group_sum(values: Tensor, gid: Tensor) -> Tensor:
    """Sum of `values` over each element's tie group (values, gid: [B, n] in sorted order)."""
    return torch.zeros_like(values).scatter_add_(-1, gid, values).gather(-1, gid)


def unsort(sorted_values: Tensor, order: Tensor) -> Tensor:
    """Put values computed in sorted order back at the samples' original positions."""
    return torch.empty_like(sorted_values).scatter_(-1, order, sorted_values)


def lower_sum(values: Tensor, lower: Tensor, beta: Tensor) -> Tensor:
    """sum over elements strictly below each element (sorted positions < lower) of beta * values."""
    csum = torch.nn.functional.pad((beta * values).cumsum(-1), (1, 0))
    return csum.gather(-1, lower)


def group_beta(lower: Tensor, size: Tensor, k: int, n: int) -> Tensor:
    """Expected C(pos-1, k-2)/C(n,k) over a uniformly random order of each tie group:
    (C(L+tau, k-1) - C(L, k-1)) / tau / C(n, k) by the hockey-stick identity."""
    return table_beta(lower, size, comb_table(n, k - 1, 1, comb(n, k), lower.device))


def table_beta(lower: Tensor, size: Tensor, table: Tensor) -> Tensor:
    """(t(L + tau) - t(L)) / tau per element (L = its tie group's start, tau = the group's size) for a 1-D table t."""
    return (take(table, lower + size.long()) - take(table, lower)) / size


def loo_minus_1_sorted(g: Tensor, lower: Tensor, size: Tensor, table: Tensor) -> Tensor:
    """PKPO's loo-1 weights of max@k in sorted order from the table t[x] = C(x, k-1)/C(n, k):
    w = g t(L) - sum over lower elements j of table_beta_j g_j (tie-mates share L, so their weights are equal).
    Linear in t: a mixture of orders (MaxRL: sum_k w_k / k) is this function of the mixed table."""
    return g * take(table, lower) - lower_sum(g, lower, table_beta(lower, size, table))
