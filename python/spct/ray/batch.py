"""Batch scoring on Ray actors: shards of items go to `workers` actors, each holding one GRM, and come back as they
finish. A shard whose actor dies (its process killed, its node lost) or that fails is tried again, on a new actor
in the first case; after `tries` failed tries a shard of several items is cut into single items, each tried as often,
and an item that fails on every try is handed to `on_failed` with the reason: the job always ends.

An item whose scoring raises `spct.items.ItemError` (its prompt does not fit the model, say) fails at once, without
retries: the same item fails the same way anywhere.

Why plain actors and not Ray Data (`map_batches` over an actor pool): the driver writes each finished shard at once
through `spct score`'s resumable output, so it must know which items a result covers, try a failed shard again on
purpose and name an item that fails on every try; Ray Data's retries are per task, without the items' identity, and
it brings pyarrow and pandas. Each actor loads the model once, as an actor pool would.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from spct.items import ItemError

RAY_EXTRA = "pip install 'spct[ray]'"
CONNECT_SECONDS = 5.0  # how long an --address may take to accept a connection
TRIES = 3
START_SECONDS = 600.0  # how long an actor may take to start and load its model (else the cluster lacks room for it)


def import_ray(flag: str = "--ray"):
    """The ray module, or a RuntimeError that says how to install it (`flag`: the option that needs it)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"{flag} needs Ray, which is not installed here ({exc}); install it with: {RAY_EXTRA}") \
            from None
    return ray


def _reachable(address: str) -> None:
    """A ValueError unless something accepts connections at HOST:PORT within CONNECT_SECONDS (ray.init would wait
    for minutes)."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"--address {address!r} is not HOST:PORT (as `ray start --head` prints it, e.g. "
                         "10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        why = f"no answer in {CONNECT_SECONDS:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ValueError(f"--address {address}: no Ray cluster answers there ({why}); start one with `ray start "
                         "--head` on that machine, or leave --address out for a local Ray") from None


def connect(address: str | None, workers: int | None, cpus_per_worker: int = 1,
            options: tuple[str, str, str] = ("--ray", "--workers", "--cpus-per-worker")) -> int:
    """Joins the Ray cluster at `address` (HOST:PORT or "auto"), or starts a local one (None); returns the number of
    actors to run: `workers`, checked against the cluster's CPUs (actors short of CPUs would wait forever), or as
    many as its CPUs hold (None). `options` name the flags in errors: the one that needs Ray, the count, the CPUs."""
    flag, count, per = options
    ray = import_ray(flag)
    if address not in (None, "auto"):
        _reachable(address)
    init = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
            "ignore_reinit_error": True}
    if address is None:
        init["num_cpus"] = max((workers or 1) * cpus_per_worker, os.cpu_count() or 1)
    try:
        ray.init(address=address, **init)
    except ConnectionError as exc:
        raise ValueError(f"--address {address}: {str(exc).splitlines()[0]}") from None
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if workers is None:
        workers = cpus // cpus_per_worker
    if workers < 1 or cpus < workers * cpus_per_worker:
        ray.shutdown()
        raise ValueError(f"{count} {workers} of {per} {cpus_per_worker} need "
                         f"{max(1, workers) * cpus_per_worker} CPUs and the Ray cluster has {cpus}: give fewer, or "
                         "add nodes (`ray start --address HOST:PORT` on each)")
    return workers


def disconnect() -> None:
    """Leaves the cluster (and stops the local Ray that `connect` started)."""
    import_ray().shutdown()


class ScoreWorker:
    """An actor's state: one GRM (and Meta RM), loaded once."""

    def __init__(self, model: str, dtype: str, meta_rm: str | None, threads: int):
        import torch

        import spct

        torch.set_num_threads(threads)
        self.grm = spct.GenerativeRewardModel.from_pretrained(model, dtype=dtype)
        self.meta_rm = None if meta_rm is None else spct.MetaRewardModel.from_pretrained(meta_rm, dtype=dtype)

    def pid(self) -> int:
        return os.getpid()

    def score(self, numbers: list[int], items: list[dict], params: dict) -> tuple[list, int]:
        """([(rewards, best, num_valid)] per item, tokens prefilled and decoded)."""
        judged, tokens = self._judged(numbers, items, params)
        return [(list(j.rewards), j.best, j.num_valid) for j in judged], tokens

    def judge(self, numbers: list[int], items: list, params: dict) -> tuple[list, int]:
        """As `score`, but per item what voting reads ({"rewards", "samples": [{"scores", "valid", "meta_score"}]}),
        for `spct eval --ray`, which votes again at smaller k."""
        judged, tokens = self._judged(numbers, items, params)
        return [{"rewards": list(j.rewards), "samples": [
            {"scores": list(x.scores), "valid": bool(x.valid), "meta_score": x.meta_score} for x in j.samples]}
            for j in judged], tokens

    def _judged(self, numbers: list[int], items: list, params: dict) -> tuple[list, int]:
        """score_batch's judgements of the items (seeded by their numbers) and the tokens it prefilled and decoded."""
        tokens = [0]

        def count(n: int) -> None:
            tokens[0] += n

        judged = self.grm.score_batch(items, indices=numbers, meta_rm=self.meta_rm, progress=count, **params)
        return judged, tokens[0]


@dataclass
class Shard:
    """Items to score together: their numbers (the seeding's) and records; `tries` so far."""

    numbers: list[int]
    items: list[dict]
    tries: int = 0


class ScoreJob:
    """`workers` actors scoring shards with score_batch's keyword arguments `params` (k, seed, max_new_tokens...).
    Call `connect` first."""

    def __init__(self, model: str, dtype: str, workers: int, params: dict, meta_rm: str | None = None,
                 cpus_per_worker: int = 1, tries: int = TRIES):
        self.model, self.dtype, self.meta_rm, self.params = model, dtype, meta_rm, params
        self.workers, self.cpus, self.tries = workers, cpus_per_worker, tries
        self.restarts = 0  # actors started to replace dead ones
        self._actor_class = None
        self._ready: list = []  # started actors, not yet running shards

    def start(self) -> None:
        """Starts the actors and waits for their models to load (`run` does it when not done before)."""
        while len(self._ready) < self.workers:
            self._ready.append(self._start())

    def _start(self):
        """A new actor, once its model is loaded (a RuntimeError if it cannot load it)."""
        ray = import_ray()
        if self._actor_class is None:
            self._actor_class = ray.remote(num_cpus=self.cpus, max_restarts=0, max_task_retries=0)(ScoreWorker)
        actor = self._actor_class.remote(self.model, self.dtype, self.meta_rm, self.cpus)
        try:
            ray.get(actor.pid.remote(), timeout=START_SECONDS)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise RuntimeError(f"a Ray worker did not start within {START_SECONDS:g} s: the cluster has no free "
                               f"{self.cpus} CPU(s) for it (a node lost?) or its model load hangs") from None
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"a Ray worker could not load --model {self.model}: {_reason(exc)}") from None
        return actor

    def run(self, shards: list[Shard], on_failed: Callable[[int, dict, str], None], params: dict | None = None,
            method: str = "score", keep: bool = False) -> Iterator[tuple]:
        """Yields (shard, results, tokens) as shards finish, in any order; on_failed(number, item, reason) for an
        item that failed on every try. `method` is the ScoreWorker method ("score", or "judge" for the samples),
        `params` override the job's. The actors are stopped when the iteration ends, unless `keep` and it ran to
        its end: then the next `run` uses them, and `close` stops them."""
        ray = import_ray()
        self.start()
        idle, self._ready = self._ready, []
        pending, running = deque(shards), {}
        params = self.params if params is None else params
        try:
            while pending or running:
                while pending and idle:
                    actor, shard = idle.pop(), pending.popleft()
                    call = getattr(actor, method)
                    running[call.remote(shard.numbers, shard.items, params)] = (actor, shard)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, shard = running.pop(ref)
                try:
                    results, tokens = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the actor's process is gone: a new one takes over
                    self.restarts += 1
                    idle.append(self._start())
                    self._again(shard, pending, on_failed, f"its Ray worker died ({_reason(exc)})")
                except ray.exceptions.RayTaskError as exc:
                    idle.append(actor)
                    self._failed(shard, exc, pending, on_failed)
                else:
                    idle.append(actor)
                    yield shard, results, tokens
        finally:
            if keep and not pending and not running:
                self._ready, idle = idle, []
            for actor in idle + [a for a, _ in running.values()]:
                ray.kill(actor)

    def close(self) -> None:
        """Stops the actors kept by `run(keep=True)` or started by `start`."""
        ray = import_ray()
        for actor in self._ready:
            ray.kill(actor)
        self._ready = []

    def _failed(self, shard: Shard, exc: Exception, pending: deque, on_failed) -> None:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ItemError) and 0 <= cause.index < len(shard.items):
            i = cause.index
            on_failed(shard.numbers[i], shard.items[i], cause.detail)
            rest = Shard(shard.numbers[:i] + shard.numbers[i + 1:], shard.items[:i] + shard.items[i + 1:], shard.tries)
            if rest.items:
                pending.appendleft(rest)
            return
        self._again(shard, pending, on_failed, _reason(exc))

    def _again(self, shard: Shard, pending: deque, on_failed, reason: str) -> None:
        """Another try for a failed shard; after the last, its items one by one; an item alone fails for good."""
        shard.tries += 1
        if shard.tries < self.tries:
            pending.appendleft(shard)
        elif len(shard.items) > 1:
            pending.extendleft(Shard([n], [item]) for n, item in reversed(list(zip(shard.numbers, shard.items))))
        else:
            on_failed(shard.numbers[0], shard.items[0], f"failed on {shard.tries} tries, the last: {reason}")


def _reason(exc: BaseException) -> str:
    """One line for a Ray error: its cause's message where it has one."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
