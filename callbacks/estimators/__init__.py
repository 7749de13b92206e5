"""Per-sample weights (sequence-level advantages) for k-sample objectives, and their value estimates: pure math
(torch and the standard library only), the bottom layer of the project with callbacks/estimators/common.py.

Shapes: B prompts x G samples; every function takes [B, G] tensors and works on all prompts at once.
One module per objective family: mean.py (k = 1, RLOO/GRPO), pass_at_k.py (pass@k, max@k), majority.py
(maj@k), best_of_n.py (bon@k), budget.py (IBPO's budget selection), pass_pow.py (pass^k, min@k), max_likelihood.py
(MaxRL to order K), best_of_majority.py (bom@k, evaluation only); docs/estimators.md has the formulas.
"""

from callbacks.estimators.best_of_majority import best_of_majority_at_k
from callbacks.estimators.best_of_n import bon_at_k, bon_weights
from callbacks.estimators.budget import budget_selection_weights, dual_update
from callbacks.estimators.majority import Method as MajorityMethod
from callbacks.estimators.majority import majority_at_k, majority_weights
from callbacks.estimators.majority import resolve_method as majority_method
from callbacks.estimators.max_likelihood import max_likelihood_value, max_likelihood_weights
from callbacks.estimators.mean import mean_weights
from callbacks.estimators.pass_at_k import (
    Baseline,
    chen_passk_weights,
    pass_at_k,
    passk_min_group_size,
    passk_weights,
)
from callbacks.estimators.pass_pow import pass_pow_k, pass_pow_k_weights

__all__ = [
    "Baseline",
    "MajorityMethod",
    "best_of_majority_at_k",
    "bon_at_k",
    "bon_weights",
    "budget_selection_weights",
    "chen_passk_weights",
    "dual_update",
    "majority_at_k",
    "majority_method",
    "majority_weights",
    "max_likelihood_value",
    "max_likelihood_weights",
    "mean_weights",
    "pass_at_k",
    "pass_pow_k",
    "pass_pow_k_weights",
    "passk_min_group_size",
    "passk_weights",
]
