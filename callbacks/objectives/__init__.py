"""The objectives (what the policy is trained for), each an Objective callback (the interface, modules/objective.py)
over the math in callbacks/estimators/: MeanReward (mean_reward.py) and the inference-aware PassAtK, MajorityVote,
BestOfN and BudgetConstrained (inference_aware.py), PassPowK and MaxLikelihood (reliability.py)."""

from callbacks.objectives.inference_aware import BestOfN, BudgetConstrained, MajorityVote, PassAtK
from callbacks.objectives.mean_reward import MeanReward
from callbacks.objectives.reliability import MaxLikelihood, PassPowK

__all__ = ["BestOfN", "BudgetConstrained", "MajorityVote", "MaxLikelihood", "MeanReward", "PassAtK", "PassPowK"]
