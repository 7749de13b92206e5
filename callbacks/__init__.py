"""Objective callbacks (what the policy is trained for) and helper callbacks; the pure estimator math is in
callbacks/estimators/ (the bottom layer, which modules/ may import). Names are imported on first use (PEP 562), so
importing `callbacks.estimators` does not load the callbacks (and through them modules/) as well."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"EvalReport": "callbacks.eval_report", "MeanReward": "callbacks.objectives",
            "BestOfN": "callbacks.objectives", "BudgetConstrained": "callbacks.objectives",
            "MajorityVote": "callbacks.objectives", "PassAtK": "callbacks.objectives",
            "MaxLikelihood": "callbacks.objectives", "PassPowK": "callbacks.objectives",
            "Groups": "datamodules.types", "Objective": "modules.objective", "SampleTable": "callbacks.sample_table",
            "TensorBoardExtras": "callbacks.tensorboard_extras", "SupervisedWarmStart": "callbacks.warm_start"}

__all__ = ["BestOfN", "BudgetConstrained", "EvalReport", "Groups", "MajorityVote", "MaxLikelihood", "MeanReward",
           "Objective", "PassAtK", "PassPowK", "SampleTable", "SupervisedWarmStart", "TensorBoardExtras"]

if TYPE_CHECKING:
    from callbacks.eval_report import EvalReport
    from callbacks.objectives import (
        BestOfN,
        BudgetConstrained,
        MajorityVote,
        MaxLikelihood,
        MeanReward,
        PassAtK,
        PassPowK,
    )
    from callbacks.sample_table import SampleTable
    from callbacks.tensorboard_extras import TensorBoardExtras
    from callbacks.warm_start import SupervisedWarmStart
    from datamodules.types import Groups
    from modules.objective import Objective


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
