"""Scale-out on Ray (the `ray` extra, `pip install 'spct[ray]'`): batch scoring across a cluster's actors.

    from spct.ray import connect, ScoreJob
    workers = connect(address=None, workers=2)    # a local Ray, or address="HOST:PORT" of `ray start --head`
    job = ScoreJob(model="smollm2-135m", dtype="bfloat16", workers=workers, params={"k": 4, "seed": 0})
    for shard, results, tokens in job.run([Shard([0, 1], [item0, item1])], on_failed):
        ...                                       # shards as they finish, in any order
    disconnect()

Nothing else in spct imports Ray; this package imports it only when a function here is called.
"""

from __future__ import annotations

from spct.ray.batch import RAY_EXTRA, ScoreJob, Shard, connect, disconnect, import_ray

__all__ = ["RAY_EXTRA", "ScoreJob", "Shard", "connect", "disconnect", "import_ray"]
