"""The GRM as the reward inside other trainers, called as those trainers call a reward.

In this process (spct.integrations.local): `GRMReward`, a TRL reward function over a `GenerativeRewardModel`, and
`compute_score`, verl's custom reward function, which loads the model once per process.

For verl's `custom_reward_function.path`, name the file that holds the function: `<spct>/integrations/local.py`.
"""

from spct.integrations.common import JUDGING
from spct.integrations.local import SETTINGS, GRMReward, compute_score

__all__ = ["JUDGING", "SETTINGS", "GRMReward", "compute_score"]
