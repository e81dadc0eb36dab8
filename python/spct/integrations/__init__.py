"""The GRM as the reward inside other trainers, called as those trainers call a reward.

In this process (spct.integrations.local): `GRMReward`, a TRL reward function over a `GenerativeRewardModel`, and
`compute_score`, verl's custom reward function, which loads the model once per process.

Over HTTP, from a `spct serve` server (spct.integrations.remote, docs/serve.md): `RemoteGRMReward` and
`AsyncRemoteGRMReward` (TRL; the trainer's batch is one request, with retries and balancing over several servers),
and `remote_compute_score` (verl). They give the local functions' rewards for the same model and settings.

For verl's `custom_reward_function.path`, name the file that holds the function: `<spct>/integrations/local.py`
(compute_score) or `<spct>/integrations/remote.py` (remote_compute_score).
"""

from spct.integrations.common import JUDGING
from spct.integrations.local import SETTINGS, GRMReward, compute_score
from spct.integrations.remote import AsyncRemoteGRMReward, RemoteGRMReward, remote_compute_score

__all__ = ["JUDGING", "SETTINGS", "AsyncRemoteGRMReward", "GRMReward", "RemoteGRMReward", "compute_score",
           "remote_compute_score"]
