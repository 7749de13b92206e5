"""Finding non-finite values (NaN, +-inf) in named tensors: the test of the divergence guard
(callbacks.RunGuard) and of the checkpoint writer and reader (modules.checkpoint_io)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor


def nonfinite_names(named: Iterable[tuple[str, Tensor | None]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity, in the given order (None and integer
    tensors are skipped; a DTensor is checked on its local shard). One host sync per device, not per tensor."""
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
    order: list[str] = []
    for name, tensor in named:
        if tensor is None or not tensor.is_floating_point():
            continue
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        by_device.setdefault(tensor.device, []).append((name, tensor.detach()))
        order.append(name)
    bad: set[str] = set()
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in items]).tolist()
        bad.update(name for (name, _), ok in zip(items, finite) if not ok)
    return [name for name in order if name in bad]


def checkpoint_tensors(checkpoint: Mapping[str, Any]) -> Iterator[tuple[str, Tensor]]:
    """The weights (`state_dict`) and optimizer-state tensors of a Lightning checkpoint, with readable names."""
    yield from (checkpoint.get("state_dict") or {}).items()
    for index, optimizer in enumerate(checkpoint.get("optimizer_states") or []):
        for param, state in (optimizer.get("state") or {}).items():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    yield f"optimizer_states[{index}].state[{param}].{key}", value


def summarize(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 18 more`: a few names for a one-line message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
