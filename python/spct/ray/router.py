"""The request router of `spct serve --replicas` (Ray Serve's alpha `RequestRouter` API), which Ray imports by name
in the process that sends requests to the replicas: the order of `spct.ray.serve.rank`, the key being the first
argument of the request (`Ingress` puts the routing key there). Importing this module imports Ray."""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from spct.ray.serve import rank

__all__ = ["PrefixRouter"]


class PrefixRouter(RequestRouter):
    """Rendezvous hashing on the prompt, yielding to load (spct.ray.serve)."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = None
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # back off when every replica is full
            key = pending_request.args[0] if pending_request.args else None
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        cache = self.replica_queue_len_cache
        loads = {name: cache.get(r.replica_id) for name, r in by_id.items()}
        return [[by_id[name] for name in group] for group in rank(list(by_id), key, loads)]
