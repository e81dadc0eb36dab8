"""Scale-out on Ray (the `ray` extra, `pip install 'spct[ray]'`): batch scoring across a cluster's actors, and the
reward server's replicas on Ray Serve.

    from spct.ray import connect, ScoreJob
    workers = connect(address=None, workers=2)    # a local Ray, or address="HOST:PORT" of `ray start --head`
    job = ScoreJob(model="smollm2-135m", dtype="bfloat16", workers=workers, params={"k": 4, "seed": 0})
    for shard, results, tokens in job.run([Shard([0, 1], [item0, item1])], on_failed):
        ...                                       # shards as they finish, in any order
    disconnect()

    serve_replicas(Spec(model="smollm2-135m"), replicas=2, cpus_per_replica=1, host="127.0.0.1", port=8000,
                   local=True)                    # `spct serve --replicas 2`: after connect, until SIGTERM

Nothing else in spct imports Ray; this package imports it only when a function here is called (and
spct.ray.router, which Ray imports by name in its processes, when imported).
"""

from __future__ import annotations

from spct.ray.batch import RAY_EXTRA, ScoreJob, Shard, connect, disconnect, import_ray
from spct.ray.serve import Spec, serve_replicas

__all__ = ["RAY_EXTRA", "ScoreJob", "Shard", "Spec", "connect", "disconnect", "import_ray", "serve_replicas"]
