"""`spct serve --replicas N`: the reward server on N Ray Serve replicas behind one address.

    from spct.ray import connect, serve_replicas
    connect(None, 2, 1, ("--replicas", "--replicas", "--cpus-per-replica"))
    serve_replicas(Spec(model="smollm2-135m", config=Config(k=4)), replicas=2, host="127.0.0.1", port=8000)

Two deployments, one application (`APP`):
- `Replica`, N of them with `cpus_per_replica` CPUs each, loads the GRM once and runs the very app of `spct serve`
  (`spct.serve.create_app`) in its process: every route, limit, key check and error of docs/serve.md is that app's,
  and each response carries the header `x-spct-replica` (the replica's id).
- `Ingress`, one without CPUs, takes each request from Ray Serve's HTTP proxy, reads its routing key (`routing_key`)
  and hands method, path, headers and body to a replica. When that replica dies under the request (Ray starts another
  in its place), the request goes to another replica, up to `TRIES` times: a judgement depends only on its request
  and seed, so a retry answers what the first try would have.

Routing (`rank`, run by `spct.ray.router.PrefixRouter` inside Ray): rendezvous hashing of the key over the replicas'
ids, so requests with the same prompt reach the same replica and its prefix cache; when a replica dies only its
keys move. Locality yields to load when the chosen replica has `BALANCE` more requests in progress than the least
loaded one (the threshold idea of SGLang's cache-aware router and Ray Serve LLM's prefix-aware router; a plain
hash needs no shared prefix tree, and the prompts of a GRM repeat whole).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import threading
from dataclasses import dataclass, field

from spct.ray.batch import import_ray
from spct.serve import Config
from spct.serve.guard import error_body

__all__ = ["APP", "BALANCE", "Spec", "rank", "routing_key", "serve_replicas"]

APP = "spct"
BALANCE = 8  # requests in progress beyond the least loaded replica's, past which load beats locality
TRIES = 3
RETRY_S = 0.5  # the ingress's wait before trying a request again, times the tries so far
REPLICA_HEADER = b"x-spct-replica"


@dataclass
class Spec:
    """What each replica loads and serves: `spct serve`'s model flags, its Config and its API key."""

    model: str = "smollm2-135m"
    dtype: str = "bfloat16"
    max_batch: int = 256
    kv_cache_mb: float | None = None
    meta_rm: str | None = None
    config: Config = field(default_factory=Config)
    api_key: str | None = None
    threads: int = 1


def routing_key(path: str, body: bytes) -> str | None:
    """A short hash of the request's prompt: the first item's query (/v1/score), the first prompt (/get_reward), the
    messages (/v1/chat/completions); None for other routes and bodies that are not such JSON (they go to the least
    loaded replica, whose app answers them)."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    value = None
    if path == "/v1/score" and isinstance(doc.get("items"), list) and doc["items"]:
        first = doc["items"][0]
        value = first.get("query") if isinstance(first, dict) else None
    elif path == "/get_reward" and isinstance(doc.get("prompts"), list) and doc["prompts"]:
        value = doc["prompts"][0]
    elif path == "/v1/chat/completions":
        value = doc.get("messages")
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _weight(key: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{key}/{replica}".encode(), digest_size=8).digest()


def rank(replicas: list[str], key: str | None, loads: dict[str, int | None], balance: int = BALANCE) -> list[list[str]]:
    """Groups of replica ids, best first, for a request with routing key `key`; `loads` are their requests in
    progress as last seen (None: not known, taken as 0). Ray takes the least loaded replica of the first group that
    has room, then tries the next group.

    With a key: one replica a group, in rendezvous order; but all in one group when the first has `balance` more in
    progress than the least loaded. Without a key: all in one group."""
    def load(r: str) -> int:
        return loads.get(r) or 0

    if key is None or not replicas:
        return [list(replicas)] if replicas else []
    order = sorted(replicas, key=lambda r: _weight(key, r), reverse=True)
    if load(order[0]) - min(load(r) for r in replicas) > balance:
        return [sorted(replicas, key=load)]
    return [[r] for r in order]


async def asgi_call(app, method: str, path: str, query: bytes, headers: list, body: bytes) -> tuple[int, list, bytes]:
    """(status, headers, body) of one HTTP request run through the ASGI `app` in this process. Cancelling the call
    cancels the request (the app then cancels its samples), as a client that hangs up would."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    sent = asyncio.Event()
    started: dict = {}
    chunks: list[bytes] = []

    async def receive() -> dict:
        if not sent.is_set():
            sent.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected; a cancel ends the wait

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return started.get("status", 500), list(started.get("headers", [])), b"".join(chunks)


class Replica:
    """One replica: the GRM and the app of `spct serve`."""

    def __init__(self, spec: Spec):
        import torch
        from ray import serve

        from spct.serve import create_app, load

        torch.set_num_threads(spec.threads)
        grm, meta_rm = load(spec.model, dtype=spec.dtype, max_batch=spec.max_batch, kv_cache_mb=spec.kv_cache_mb,
                            meta_rm=spec.meta_rm)
        self.engine = grm.engine
        self.app = create_app(grm, spec.config, meta_rm=meta_rm, api_key=spec.api_key)
        self.name = serve.get_replica_context().replica_id.unique_id.encode()

    async def handle(self, key: str | None, method: str, path: str, query: bytes, headers: list,
                     body: bytes) -> tuple[int, list, bytes]:
        """The app's answer; `key` is read by the router only."""
        status, out, content = await asgi_call(self.app, method, path, query, headers, body)
        return status, out + [(REPLICA_HEADER, self.name)], content

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class Ingress:
    """The HTTP entry: each request to a replica chosen by its routing key, tried again on another when its replica
    dies."""

    def __init__(self, replicas):
        self.replicas = replicas

    async def __call__(self, request):
        from ray.exceptions import RayActorError
        from starlette.responses import JSONResponse, Response

        body = await request.body()
        key = routing_key(request.url.path, body)
        args = (key, request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body)
        reason = ""
        for attempt in range(TRIES):
            try:
                status, headers, content = await self.replicas.handle.remote(*args)
            except RayActorError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                await asyncio.sleep(RETRY_S * (attempt + 1))  # Ray takes the dead replica out of the routing
                continue
            response = Response(content, status_code=status)
            response.raw_headers = headers
            return response
        message = f"the request's replica died on {TRIES} tries (the last: {reason}); try again when Ray has " \
                  "restarted it"
        return JSONResponse(error_body(503, message), status_code=503)


def serve_replicas(spec: Spec, replicas: int, cpus_per_replica: int, host: str, port: int, local: bool,
                   shutdown_timeout: float = 30.0, on_ready=None) -> None:
    """Deploys `APP` on the connected Ray cluster with Serve's HTTP proxy on host:port, calls on_ready() once every
    replica has loaded its model, and serves until SIGTERM or Ctrl-C; then deletes the application (and stops Serve
    when `local`: the Ray cluster is this process's own)."""
    import_ray("--replicas")
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        router = RequestRouterConfig(request_router_class="spct.ray.router:PrefixRouter")
        replica = serve.deployment(Replica, name="Replica").options(
            num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
            max_ongoing_requests=spec.config.max_queue, request_router_config=router,
            graceful_shutdown_timeout_s=shutdown_timeout)
        ingress = serve.deployment(Ingress, name="Ingress").options(
            num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=replicas * spec.config.max_queue)
        try:
            serve.run(ingress.bind(replica.bind(spec)), name=APP, route_prefix="/", blocking=False)
        except RuntimeError as exc:
            raise RuntimeError(f"the replicas did not start: {_why_not_started(serve) or exc}") from None
        if on_ready is not None:
            on_ready()
        while not stop.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if local:
            serve.shutdown()
        else:
            serve.delete(APP)


def _why_not_started(serve) -> str | None:
    """The last line of the error a replica raised while starting (Ray keeps it in the deployment's status)."""
    try:
        message = serve.status().applications[APP].deployments["Replica"].message
    except Exception:  # noqa: BLE001 - no status to read: the caller shows Ray's own error
        return None
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else None
