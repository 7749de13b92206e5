"""The objective seam (the interface the module calls; the objectives themselves are in callbacks/objectives/):
a Lightning Callback that turns verified sample groups into per-sample weights.

The module finds exactly one Objective among `trainer.callbacks` at fit start and calls `weights()`
explicitly once per training step; nothing depends on hook order. An objective keeps its own state
(k schedule position, dual variable) in `state_dict()`, which Lightning saves in checkpoints under
`checkpoint["callbacks"][objective.state_key]`; the key names the class and the arguments that define the
objective (`identity()`), so two instances of one class keep separate states and a checkpoint's state is
only restored into an objective configured the same way (Lightning warns about the others).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch import Tensor

from datamodules.types import Groups
from modules.errors import ConfigError


class Objective(L.Callback):
    """Base class of objective callbacks. Subclasses implement `weights` (and extend `state_dict` if they keep more
    state than k)."""

    #: the k this objective trains for (1 for mean reward); the module also reports pass@k at this k
    k: int = 1

    def identity(self) -> dict:
        """The constructor arguments that define this objective (part of `state_key`; tuning knobs such as a
        step size are left out, so changing them keeps a checkpoint's state)."""
        return {"k": self.k}

    @property
    def state_key(self) -> str:
        """Key of this objective's state in `checkpoint["callbacks"]`, e.g. "PassAtK{'k': 8, ...}"."""
        # the format of Lightning's (private) Callback._generate_state_key, so older checkpoints still match
        return f"{type(self).__qualname__}{self.identity()!r}"

    def weights(self, groups: Groups, step: int) -> Tensor:
        """Per-sample weights [B, G] such that sum_i w_i grad log pi(y_i) estimates the objective's gradient."""
        raise NotImplementedError

    #: the latest step's estimate of the objective (set by `weights`)
    _value: float = float("nan")

    def metrics(self) -> dict[str, float]:
        """Scalars to log under `objective/` after each step (k, objective value; subclasses add lambda etc.)."""
        return {"objective/k": float(self.k), "objective/value": self._value}

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state_dict: dict) -> None:
        self.k = int(state_dict["k"])

    def check_group_size(self, group_size: int) -> None:
        """Raise a configuration error if G samples per prompt cannot serve this objective."""
        if group_size < max(self.k, 2):
            raise ValueError(
                f"{type(self).__name__} needs at least max(k, 2) = {max(self.k, 2)} samples per prompt, but "
                f"model.group.size is {group_size}; raise model.group.size or lower the objective's k")


def single_objective(callbacks: Sequence[L.Callback], group_size: int) -> Objective:
    """The one Objective among a trainer's callbacks, checked against G = `group_size`; ConfigError otherwise. Run by
    the module at fit start and by `inferl fit` before the logger makes its version folder."""
    objectives = [c for c in callbacks if isinstance(c, Objective)]
    if len(objectives) != 1:
        found = ", ".join(type(c).__name__ for c in objectives) or "none"
        raise ConfigError(f"exactly one objective callback is needed under trainer.callbacks (found: {found}); "
                          "add one, e.g. `- class_path: callbacks.MeanReward`, or remove the extras")
    try:
        objectives[0].check_group_size(group_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return objectives[0]
