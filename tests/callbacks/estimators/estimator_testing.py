"""Small helpers shared by the estimator tests."""

from __future__ import annotations

from fractions import Fraction

import torch

TOL = 1e-9
D = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


def exact(items) -> list[float]:
    return [float(Fraction(x["exact"])) for x in items]


def close(actual, expected, tol: float = TOL) -> None:
    a = torch.as_tensor(actual, dtype=D).flatten()
    e = torch.tensor([float(x) for x in expected], dtype=D).flatten()
    assert a.shape == e.shape, (a, e)
    assert torch.allclose(a, e, atol=tol, rtol=0), f"\nactual   {a.tolist()}\nexpected {e.tolist()}"
