"""Majority vote maj@k (Tang et al. 2025, arXiv 2503.19595): value and loo-1 weights, exact and sampled.

f(S) = correctness of the most frequent valid answer class in S; unparsable answers (id < 0) never vote; a
tie between modal classes counts as the average correctness of the tied classes (the expected value of a
uniform tie-break); a subset without any valid answer scores 0. Weights are the loo-1 U-statistic
w_i = (1/C(G,k)) sum_{|I|=k, i in I} (f(I) - f(I without i)) (PKPO, Walder & Karkhanis 2025, Eq. 33).

Exact path. f depends only on the class counts of a subset, so sums over subsets become coefficients of
generating polynomials in z (z^x = x members taken). For a modal count M the factor of class b is
  val_b = sum_{x<M} C(n_b, x) z^x + u C(n_b, M) z^M,   der_b = c_b C(n_b, M) z^M,
multiplied as dual numbers (val, der): the der part of the product is sum_a c_a K_a prod_{b!=a}(L_b + u K_b),
whose u^(t-1) coefficient collects modal class a with t-1 other classes tied at M; integrating u over
[0, 1] turns u^(t-1) into the tie average 1/t (exactly, by Gauss-Legendre with ceil(floor(k/M)/2) nodes).
Per-class leave-one-out products come from prefix/suffix products (no polynomial division, which would be
unstable). z is scaled by lambda = C(G,k)^(-1/k) so that coefficients stay O(1) in float64.
Cost: O(B * m * Q * (k+1)^2) multiply-adds for the weights (about 9 such passes), m = most distinct answers
in a group, Q = sum_M ceil(floor(k/M)/2) ~ (k/2) ln k; the value alone needs one pass.

Sampled path. The same U-statistic averaged over `num_subsets` uniformly drawn k-subsets per prompt:
w_i ~= (1/S) sum_s 1[i in I_s] (f(I_s) - f(I_s without i)), unbiased for the exact weight because the
subsets are drawn independently of the samples. Cost O(B * S * (G + k + m)).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import Tensor

from callbacks.estimators.common import check_choice, check_k, check_rewards, comb, out_dtype, take
from callbacks.estimators.mean import mean_weights

Method = Literal["auto", "exact", "sampled"]

#: auto picks the exact path while exact_cost = B * m * Q * (k+1)^2 stays below these. On one CPU thread
#: the exact weights take ~50 ms at cost 2e6 (B=256, G=64, k=8, 8 answers) and ~0.3-0.6 s at 1.6e7 (64
#: distinct answers), the 256-subset sampled path ~0.1-0.15 s; the value alone is about 4x cheaper
EXACT_COST_LIMIT = {"weights": 1e7, "value": 4e7}


def encode_classes(answer_ids: Tensor) -> tuple[Tensor, Tensor, int]:
    """Dense per-prompt answer classes. answer_ids: [B, G] long, < 0 = unparsable.

    Returns (cls [B, G] long with -1 for unparsable, sizes [B, m] float64, m >= 1).
    """
    if answer_ids.dim() != 2:
        raise ValueError(f"answer_ids must be [B, G], got {tuple(answer_ids.shape)}")
    if answer_ids.is_floating_point():
        raise ValueError("answer_ids must be an integer tensor (class ids, -1 = unparsable)")
    ids = answer_ids.long()
    valid = ids >= 0
    big = torch.iinfo(torch.long).max
    keys, order = torch.where(valid, ids, torch.full_like(ids, big)).sort(dim=-1)
    new = torch.ones_like(keys, dtype=torch.bool)
    new[:, 1:] = keys[:, 1:] != keys[:, :-1]
    dense_sorted = new.long().cumsum(-1) - 1
    dense = torch.empty_like(dense_sorted).scatter_(-1, order, dense_sorted)
    cls = torch.where(valid, dense, torch.full_like(dense, -1))
    m = max(int(cls.max()) + 1, 1) if cls.numel() else 1
    sizes = torch.zeros(ids.shape[0], m + 1, dtype=torch.float64, device=ids.device)
    sizes.scatter_add_(-1, torch.where(valid, cls, m), torch.ones_like(cls, dtype=torch.float64))
    return cls, sizes[:, :m], m


def class_correctness(cls: Tensor, correct: Tensor, m: int) -> Tensor:
    """[B, m] correctness per class: the mean over its members (equal answers share correctness)."""
    valid = cls >= 0
    idx = torch.where(valid, cls, m)
    tot = torch.zeros(cls.shape[0], m + 1, dtype=torch.float64, device=cls.device)
    cnt = torch.zeros_like(tot)
    tot.scatter_add_(-1, idx, torch.where(valid, correct.double(), torch.zeros_like(correct, dtype=torch.float64)))
    cnt.scatter_add_(-1, idx, valid.double())
    return (tot / cnt.clamp_min(1))[:, :m]


def _check_inputs(answer_ids: Tensor, correct: Tensor, k: int) -> None:
    check_rewards(correct, "correct")
    if answer_ids.shape != correct.shape:
        raise ValueError(f"answer_ids {tuple(answer_ids.shape)} and correct {tuple(correct.shape)} differ in shape")
    check_k(correct.shape[-1], k)


@functools.lru_cache(maxsize=64)
def _quadrature(k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(M, u, weight) for every Gauss-Legendre node on [0, 1] of every modal count M = 1..k."""
    ms, us, ws = [], [], []
    for big_m in range(1, k + 1):
        q = max(1, math.ceil((k // big_m) / 2))
        x, w = _gauss_legendre(q)
        ms += [big_m] * q
        us += x
        ws += w
    return torch.tensor(ms), torch.tensor(us, dtype=torch.float64), torch.tensor(ws, dtype=torch.float64)


def _gauss_legendre(q: int) -> tuple[list[float], list[float]]:
    """Nodes and weights on [0, 1] (Golub-Welsch); exact for polynomials of degree <= 2q - 1."""
    if q == 1:
        return [0.5], [1.0]
    j = torch.arange(1, q, dtype=torch.float64)
    off = j / torch.sqrt(4 * j * j - 1)
    jac = torch.diag(off, 1) + torch.diag(off, -1)
    x, v = torch.linalg.eigh(jac)
    return ((x + 1) / 2).tolist(), (v[0] ** 2).tolist()


@functools.lru_cache(maxsize=64)
def _scaled_binomials(n: int, k: int) -> tuple[Tensor, float]:
    """T[x, y] = C(x, y) * lam^y for x = 0..n, y = 0..k, lam = C(n, k)^(-1/k); returns (T, lam)."""
    log_lam = -math.log(comb(n, k)) / k
    rows = [[math.exp(math.log(comb(x, y)) + y * log_lam) if comb(x, y) else 0.0 for y in range(k + 1)]
            for x in range(n + 1)]
    return torch.tensor(rows, dtype=torch.float64), math.exp(log_lam)


def _pmul(a: Tensor, b: Tensor) -> Tensor:
    """Truncated product of polynomials (coefficients on the last axis, degree 0..D-1), broadcasting."""
    d = a.shape[-1]
    a, b = torch.broadcast_tensors(a, b)
    win = torch.nn.functional.pad(b, (d - 1, 0)).unfold(-1, d, 1)  # win[..., s, j] = b[s + j - (d-1)]
    return (win @ a.flip(-1).unsqueeze(-1)).squeeze(-1)


def _dual_mul(pv: Tensor, pd: Tensor, fv: Tensor, fd: Tensor) -> tuple[Tensor, Tensor]:
    """(pv + e pd)(fv + e fd) with e^2 = 0: the der part tracks 'one class is the modal one'."""
    out = _pmul(torch.stack([pv, pd, pv]), torch.stack([fv, fv, fd]))
    return out[0], out[1] + out[2]


def _coef(x: Tensor, y: Tensor, s: int) -> Tensor:
    """[z^s] of x * y."""
    return (x[..., : s + 1] * y[..., : s + 1].flip(-1)).sum(-1)


def exact_cost(batch: int, num_classes: int, k: int) -> float:
    """Multiply-adds of one pass of the exact path (the weights take about 9 passes)."""
    return float(batch) * num_classes * len(_quadrature(k)[0]) * (k + 1) ** 2


def check_method(method: str) -> None:
    check_choice(method, Method, "method")


def resolve_method(answer_ids: Tensor, k: int, method: Method = "auto", weights: bool = True) -> str:
    """Which path `method` runs on these answers: 'exact' or 'sampled'. auto compares exact_cost with
    EXACT_COST_LIMIT (for the weights, or for the value alone when weights=False)."""
    check_method(method)
    return _choose(method, answer_ids.shape[0], encode_classes(answer_ids)[2], k, weights)


def _choose(method: str, batch: int, num_classes: int, k: int, weights: bool) -> str:
    if method != "auto":
        return method
    limit = EXACT_COST_LIMIT["weights" if weights else "value"]
    return "exact" if exact_cost(batch, num_classes, k) <= limit else "sampled"


def _factors(sizes: Tensor, corr: Tensor, k: int, n: int, shift: int) -> tuple[Tensor, Tensor]:
    """Dual factors [B, m, Q, k+1] of each class for every (M, u) node.

    shift=0: the class as is; shift=-1: the class with one fixed member removed (n_b - 1);
    shift=+1: one fixed member forced in (counts x >= 1 choose the other x - 1 from n_b - 1).
    """
    table, lam = _scaled_binomials(n, k)
    table = table.to(sizes.device)
    big_m, u, _ = (t.to(sizes.device) for t in _quadrature(k))
    deg = torch.arange(k + 1, device=sizes.device)
    nb = sizes.long() - (0 if shift == 0 else 1)
    base = take(table, nb.clamp_min(0))  # [B, m, k+1]: C(nb, y) lam^y
    if shift == 1:  # C(nb, x-1) lam^x
        base = torch.nn.functional.pad(base[..., :-1], (1, 0)) * lam
    base = torch.where((nb >= 0).unsqueeze(-1), base, torch.zeros_like(base))
    less = (deg < big_m.unsqueeze(-1)).double()  # [Q, k+1]
    eq = (deg == big_m.unsqueeze(-1)).double()
    base = base.unsqueeze(-2)  # [B, m, 1, k+1]
    val = base * (less + u.unsqueeze(-1) * eq)
    der = base * eq * corr.unsqueeze(-1).unsqueeze(-1)
    return val, der


def _invalid_factor(n_invalid: Tensor, k: int, n: int, q: int) -> Tensor:
    """(1 + lam z)^n0 truncated: unparsable samples only fill the subset, [B, Q, k+1]."""
    table, _ = _scaled_binomials(n, k)
    return take(table.to(n_invalid.device), n_invalid).unsqueeze(-2).expand(-1, q, -1)


def _exact(cls: Tensor, sizes: Tensor, corr: Tensor, k: int, need_weights: bool) -> tuple[Tensor, Tensor | None]:
    _b, n = cls.shape
    m = sizes.shape[1]
    _, _, wq = (t.to(cls.device) for t in _quadrature(k))
    q = wq.shape[0]
    val, der = _factors(sizes, corr, k, n, 0)
    pv = _invalid_factor((cls < 0).sum(-1), k, n, q)
    pd = torch.zeros_like(pv)
    prefix_v, prefix_d = [], []
    for a in range(m):
        prefix_v.append(pv)
        prefix_d.append(pd)
        pv, pd = _dual_mul(pv, pd, val[:, a], der[:, a])
    value = (pd[..., k] * wq).sum(-1)
    if not need_weights:
        return value, None
    sv = torch.zeros_like(pv)
    sv[..., 0] = 1.0
    sd = torch.zeros_like(pv)
    suffix_v, suffix_d = [None] * m, [None] * m
    for a in range(m - 1, -1, -1):
        suffix_v[a], suffix_d[a] = sv, sd
        sv, sd = _dual_mul(sv, sd, val[:, a], der[:, a])
    rv, rd = _dual_mul(torch.stack(prefix_v, 1), torch.stack(prefix_d, 1), torch.stack(suffix_v, 1),
                       torch.stack(suffix_d, 1))  # rest_a = prod_{b != a}, [B, m, Q, k+1]
    av, ad = _factors(sizes, corr, k, n, 1)
    bv, bd = _factors(sizes, corr, k, n, -1)
    coef_a = ((_coef(rd, av, k) + _coef(rv, ad, k)) * wq).sum(-1)  # sum_{I containing i} f(I) / C(n,k)
    coef_b = ((_coef(rd, bv, k - 1) + _coef(rv, bd, k - 1)) * wq).sum(-1)  # sum_{|J|=k-1, i not in J} f(J) lam^(k-1)
    lam = _scaled_binomials(n, k)[1]
    w_class = coef_a - lam * coef_b
    w = torch.where(cls >= 0, w_class.gather(-1, cls.clamp_min(0)), torch.zeros_like(cls, dtype=torch.float64))
    return value, w


def subset_terms(cls: Tensor, corr: Tensor, m: int, subsets: Tensor) -> tuple[Tensor, Tensor]:
    """f(I) and f(I) - f(I without i) for given k-subsets.

    cls: [B, G] (-1 unparsable), corr: [B, m], subsets: [B, S, k] sample indices.
    Returns (f [B, S], diff [B, S, k]).
    """
    members = cls.gather(-1, subsets.flatten(1)).view_as(subsets)  # [B, S, k]
    valid = members >= 0
    idx = torch.where(valid, members, m)
    counts = torch.zeros(*subsets.shape[:2], m + 1, dtype=torch.float64, device=cls.device)
    counts.scatter_add_(-1, idx, valid.double())
    counts = counts[..., :m]
    c = corr.unsqueeze(1)  # [B, 1, m]
    top = counts.max(-1).values  # M
    at_top = (counts == top.unsqueeze(-1)) & (top.unsqueeze(-1) >= 1)
    t = at_top.sum(-1).double()
    sumc = (at_top * c).sum(-1)
    f = torch.where(top >= 1, sumc / t.clamp_min(1), torch.zeros_like(sumc))
    below = (counts == (top - 1).unsqueeze(-1)) & (top.unsqueeze(-1) >= 2)  # classes at M - 1
    t1, sumc1 = below.sum(-1).double(), (below * c).sum(-1)
    xa = counts.gather(-1, members.clamp_min(0))
    ca = corr.gather(-1, members.clamp_min(0).flatten(1)).view_as(members)
    top_, t_, sumc_, t1_, sumc1_, f_ = (z.unsqueeze(-1) for z in (top, t, sumc, t1, sumc1, f))
    # removing i changes f only when i's class is modal: drop it from a tie, or (alone at the top)
    # it falls to M - 1 and ties with the classes already there (no vote left when M was 1)
    alone = torch.where(top_ >= 2, (ca + sumc1_) / (1 + t1_), torch.zeros_like(ca))
    f_without = torch.where(xa < top_, f_, torch.where(t_ >= 2, (sumc_ - ca) / (t_ - 1).clamp_min(1), alone))
    diff = torch.where(valid, f_ - f_without, torch.zeros_like(f_without))
    return f, diff


def _sampled(cls: Tensor, corr: Tensor, m: int, k: int, num_subsets: int,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b, n = cls.shape
    value = torch.zeros(b, dtype=torch.float64, device=cls.device)
    w = torch.zeros(b, n, dtype=torch.float64, device=cls.device)
    chunk = max(1, 4_000_000 // max(1, b * n))  # bound the [B, S, G] random keys
    for start in range(0, num_subsets, chunk):
        s = min(chunk, num_subsets - start)
        gen_device = generator.device if generator is not None else cls.device
        keys = torch.rand(b, s, n, generator=generator, device=gen_device).to(cls.device)
        subsets = keys.topk(k, dim=-1).indices  # a uniformly random k-subset per (prompt, draw)
        f, diff = subset_terms(cls, corr, m, subsets)
        value += f.sum(-1)
        w.view(-1).scatter_add_(0, (subsets + n * torch.arange(b, device=cls.device).view(b, 1, 1)).flatten(),
                                diff.flatten())
    return value / num_subsets, w / num_subsets


def _run(answer_ids: Tensor, correct: Tensor, k: int, method: Method, num_subsets: int,
         generator: torch.Generator | None, info: dict | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
    _check_inputs(answer_ids, correct, k)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    cls, sizes, m = encode_classes(answer_ids)
    corr = class_correctness(cls, correct, m)
    check_method(method)
    path = _choose(method, answer_ids.shape[0], m, k, need_weights)
    if info is not None:
        info.update(method=path, num_subsets=num_subsets if path == "sampled" else None, num_classes=m)
    value, w = (_exact(cls, sizes, corr, k, need_weights) if path == "exact"
                else _sampled(cls, corr, m, k, num_subsets, generator))
    if info is not None:
        info["value"] = value.to(out_dtype(correct))
    return value, w


def majority_at_k(answer_ids: Tensor, correct: Tensor, k: int, method: Method = "auto", num_subsets: int = 256,
                  generator: torch.Generator | None = None, info: dict | None = None) -> Tensor:
    """Unbiased estimate of maj@k from G >= k samples (Tang et al. 2025, arXiv 2503.19595).

    answer_ids: [B, G] long, equal ids = equivalent answers, -1 = unparsable (never votes).
    correct: [B, G] correctness of each sample's answer (binary or real; a class uses its members' mean).
    method: "exact" (generating polynomials, see module doc), "sampled" (mean of f over `num_subsets`
    uniform k-subsets drawn with `generator`; unbiased), or "auto" (exact while its cost is small).
    info: if a dict is given, it receives "method" (the path that ran), "num_subsets", "num_classes" and
    "value" (the [B] estimate). Returns [B] in correct's dtype.
    """
    value, _ = _run(answer_ids, correct, k, method, num_subsets, generator, info, need_weights=False)
    return value.to(out_dtype(correct))


def majority_weights(answer_ids: Tensor, correct: Tensor, k: int, method: Method = "auto", num_subsets: int = 256,
                     generator: torch.Generator | None = None, info: dict | None = None) -> Tensor:
    """loo-1 weights for maj@k: w_i = (1/C(G,k)) sum_{|I|=k, i in I} (f(I) - f(I without i)).

    Tang et al. 2025 (arXiv 2503.19595) majority-vote objective with PKPO's loo-1 U-statistic (Walder &
    Karkhanis 2025, Eq. 33); G = k gives Tang's A_i = f(all) - f(all without i). Unparsable samples get 0.
    k = 1 returns mean_weights of (correct if parsable else 0), the RLOO weights of maj@1 = pass@1.
    Paths and cost as in majority_at_k (see the module doc); info["method"] says which ran and
    info["value"] holds the maj@k estimate [B] computed on the way.
    answer_ids: [B, G] long, correct: [B, G]. Returns [B, G] in correct's dtype.
    """
    if k == 1:
        _check_inputs(answer_ids, correct, k)
        f1 = torch.where(answer_ids >= 0, correct.double(), torch.zeros_like(correct, dtype=torch.float64))
        if info is not None:
            info.update(method="exact", num_subsets=None, value=f1.mean(-1).to(out_dtype(correct)))
        return mean_weights(f1).to(out_dtype(correct))
    _, w = _run(answer_ids, correct, k, method, num_subsets, generator, info, need_weights=True)
    return w.to(out_dtype(correct))
