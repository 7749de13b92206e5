"""Objective callbacks (what the policy is trained for) and helper callbacks."""

from callbacks.eval_report import EvalReport
from callbacks.mean_reward import MeanReward
from callbacks.objective import Groups, Objective
from callbacks.objectives import BestOfN, BudgetConstrained, MajorityVote, PassAtK
from callbacks.sample_table import SampleTable
from callbacks.tensorboard_extras import TensorBoardExtras
from callbacks.warm_start import SupervisedWarmStart

__all__ = ["BestOfN", "BudgetConstrained", "EvalReport", "Groups", "MajorityVote", "MeanReward", "Objective",
           "PassAtK", "SampleTable", "SupervisedWarmStart", "TensorBoardExtras"]
