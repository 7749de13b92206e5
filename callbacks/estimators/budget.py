"""Inference-budget constraint (Yu et al. 2025, "IBPO", arXiv 2501.17974): per-batch selection and dual step.

Selection LP (one batch, items i = all B*G responses):
    maximise   sum_i x_i m_i                      m_i = r_i - mean of i's group (reward margin)
    subject to sum_i x_i c_i <= q sum_i x_i       c_i = 1[i in G+] (density constraint), or the cost
               0 <= x_i <= 1                      (and sum_{i in prompt b} x_i <= 1 with one_per_prompt)
With a_i = c_i - q the constraint is sum_i a_i x_i <= 0: a single linear constraint, so the LP optimum has
the greedy/ratio structure of a fractional knapsack. Lagrangian: for a multiplier mu >= 0 the best x takes
item i iff m_i - mu a_i > 0 (with one_per_prompt: the best such item of each prompt). The constraint value
h(mu) only decreases as mu grows past the ratios m_i / a_i (the breakpoints); the optimum sits at the first
breakpoint mu* where h <= 0, mixing the Lagrangian solutions just before and after mu* so that the
constraint is tight. Both are Lagrangian-optimal at mu*, so the mixture is LP-optimal (at most the items
switching exactly at mu* get fractional weights). Cost O(N log N) for N = B*G; one_per_prompt walks each
prompt's upper envelope (a Python loop over prompts, O(G * #distinct costs) each).
Since m_i is only rescaled by G/(G-1) when it is taken leave-one-out, the selection is the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from callbacks.estimators.common import check_rewards, out_dtype


def dual_update(lam: float, mean_cost: float, budget: float, lr: float) -> float:
    """Projected dual ascent for E[c] <= budget: lambda <- max(0, lambda + lr * (mean cost - budget)).

    Primal-dual solver of the budget objective (IBPO, Yu et al. 2025, arXiv 2501.17974, Sec. 5):
    the policy maximises r - lambda * c, lambda grows while the batch overspends and decays to 0 otherwise.
    """
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return max(0.0, float(lam) + float(lr) * (float(mean_cost) - float(budget)))


def budget_selection_weights(rewards: Tensor, costs: Tensor, in_group_plus: Tensor | None, q: float,
                             one_per_prompt: bool = False, info: dict | None = None) -> Tensor:
    """Exact LP optimum x in [0, 1]^(B x G) of the IBPO per-batch constrained selection (see module doc).

    rewards: [B, G] (G >= 2). in_group_plus: [B, G] bool membership of the expensive group G+ (constraint
    sum x_i [i in G+] <= q sum x_i, q in [0, 1]); when None the constraint is on `costs` [B, G] instead:
    sum x_i c_i <= q sum x_i (q = budget on the mean cost of the selected responses). one_per_prompt adds
    sum_{i in prompt} x_i <= 1. info (optional dict) receives mu (the multiplier), the objective and the
    constraint value. Returns x [B, G] in the rewards' dtype; weighted fine-tuning uses x as sample weights.
    """
    check_rewards(rewards)
    if rewards.shape[-1] < 2:
        raise ValueError(f"the reward margin needs a group size G >= 2, got G={rewards.shape[-1]}")
    if in_group_plus is not None:
        if in_group_plus.shape != rewards.shape:
            raise ValueError(f"in_group_plus {tuple(in_group_plus.shape)} must match rewards {tuple(rewards.shape)}")
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"density budget q must lie in [0, 1], got {q}")
        c = in_group_plus.double()
    else:
        check_rewards(costs, "costs")
        if costs.shape != rewards.shape:
            raise ValueError(f"costs {tuple(costs.shape)} must match rewards {tuple(rewards.shape)}")
        c = costs.double()
    r = rewards.double()
    margin = r - r.mean(-1, keepdim=True)
    a = c - float(q)
    x, mu = (_select_one_per_prompt if one_per_prompt else _select)(margin, a)
    if info is not None:
        info.update(mu=mu, objective=float((x * margin).sum()), constraint=float((x * a).sum()))
    return x.to(out_dtype(rewards))


def _select(margin: Tensor, a: Tensor) -> tuple[Tensor, float]:
    """No per-prompt cap: threshold rule x_i = 1[m_i > mu a_i], mixed at the critical breakpoint."""
    m, aa = margin.flatten(), a.flatten()
    x = (m > 0).double()
    h0 = float((x * aa).sum())
    if h0 <= 0:
        return x.view_as(margin), 0.0
    # consumers (a > 0, taken) switch off at m/a; providers (a < 0, not taken, m <= 0) switch on at m/a
    consumer = (aa > 0) & (m > 0)
    provider = (aa < 0) & (m <= 0)
    ev = (consumer | provider).nonzero().squeeze(-1)
    mu = m[ev] / aa[ev]
    mu, perm = mu.sort(stable=True)
    ev = ev[perm]
    delta = torch.where(consumer[ev], -aa[ev], aa[ev])  # both decrease h
    h_after = h0 + delta.cumsum(0)
    last_of_run = torch.ones_like(mu, dtype=torch.bool)
    last_of_run[:-1] = mu[1:] != mu[:-1]
    # first run after which the constraint holds; one always exists (all consumers off, all providers on)
    ok = (h_after <= 1e-12 * max(1.0, h0)) & last_of_run
    end = int(ok.nonzero()[0])
    mu_star = float(mu[end])
    start = int((mu == mu_star).nonzero()[0])
    h_before = h0 if start == 0 else float(h_after[start - 1])
    h_end = min(float(h_after[end]), 0.0)
    theta = -h_end / (h_before - h_end) + 0.0  # (+0.0: no -0.0) weight of the solution just before mu*
    done, crit = ev[:start], ev[start:end + 1]
    one = torch.ones((), dtype=torch.float64, device=x.device)
    x[done] = torch.where(consumer[done], 0.0 * one, one)
    x[crit] = torch.where(consumer[crit], theta * one, (1.0 - theta) * one)  # float64, not the default dtype
    return x.view_as(margin), mu_star


def _envelope(m: list[float], a: list[float]) -> tuple[int, list[tuple[float, int, int]]]:
    """Upper envelope over mu >= 0 of the lines m_i - mu a_i and the 'take nothing' line 0 (index -1).

    Returns (choice at mu = 0, [(mu, old, new), ...] switches in increasing mu).
    """
    lines = [(0.0, 0.0, -1)] + [(mi, ai, i) for i, (mi, ai) in enumerate(zip(m, a))]
    # at mu = 0 take the best margin, preferring 'nothing' and then the smallest cost among ties
    cur = max(lines, key=lambda ln: (ln[0], ln[2] == -1, -ln[1]))
    first, events, mu = cur[2], [], 0.0
    while True:
        best = None
        for ln in lines:
            if ln[1] < cur[1]:  # only flatter-cost (steeper-rising) lines can overtake as mu grows
                cross = max(mu, (cur[0] - ln[0]) / (cur[1] - ln[1]))
                if best is None or (cross, ln[1]) < (best[0], best[1][1]):
                    best = (cross, ln)
        if best is None:
            return first, events
        mu = best[0]
        events.append((mu, cur[2], best[1][2]))
        cur = best[1]


def _select_one_per_prompt(margin: Tensor, a: Tensor) -> tuple[Tensor, float]:
    """At most one unit of mass per prompt: walk each prompt's envelope, merge the switches by mu."""
    b, g = margin.shape
    x = torch.zeros(b, g, dtype=torch.float64)
    m_rows, a_rows = margin.cpu().tolist(), a.cpu().tolist()
    events, h0 = [], 0.0
    for p in range(b):
        first, ev = _envelope(m_rows[p], a_rows[p])
        if first >= 0:
            x[p, first] = 1.0
            h0 += a_rows[p][first]
        events += [(mu, p, old, new) for mu, old, new in ev]
    if h0 <= 0:
        return x.to(margin.device), 0.0
    events.sort(key=lambda e: e[0])
    h, i = h0, 0
    while i < len(events):
        j = i
        while j < len(events) and events[j][0] == events[i][0]:
            j += 1
        run = events[i:j]
        h_after = h + sum((a_rows[p][new] if new >= 0 else 0.0) - (a_rows[p][old] if old >= 0 else 0.0)
                          for _, p, old, new in run)
        if h_after <= 1e-12 * max(1.0, h0):
            h_after = min(h_after, 0.0)
            theta = -h_after / (h - h_after) + 0.0
            for _, p, old, new in run:
                x[p].zero_()
                if old >= 0:
                    x[p, old] = theta
                if new >= 0:
                    x[p, new] = 1.0 - theta
            return x.to(margin.device), run[0][0]
        for _, p, _old, new in run:
            x[p].zero_()
            if new >= 0:
                x[p, new] = 1.0
        h, i = h_after, j
    return x.to(margin.device), events[-1][0] if events else 0.0
