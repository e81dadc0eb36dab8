"""The GRM as the reward inside other trainers (spct.integrations.local): `GRMReward` for TRL, `compute_score` for
verl."""

from spct.integrations.local import SETTINGS, GRMReward, compute_score

__all__ = ["SETTINGS", "GRMReward", "compute_score"]
