"""The server's side of the engine: its settings, submitting work off the event loop, waiting for it with a timeout
and the client's disconnect in view, and the response groups of `/get_reward --group-size G`.

Tokenizing (chat templates) runs in a worker thread under one lock, so the event loop never stalls on it and the
tokenizer is never used by two request threads at once; the engine's own step thread only decodes.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass

from spct.engine.online import RequestCancelled
from spct.engine.threads import release_pool

__all__ = ["Config", "Disconnected", "Groups", "ServeError", "State", "reward_value"]

POLL_S = 0.25  # how often a waiting request checks whether its client is still there


@dataclass
class Config:
    """The server's flags (`spct serve --help`): defaults of the scoring settings, and the limits."""

    model_name: str = "smollm2-135m"
    k: int = 1
    temperature: float | None = None
    max_new_tokens: int = 512
    force_scores: bool = False
    seed: int = 0
    reduce: str = "sum"
    invalid_reward: float = 0.0
    max_items: int = 256
    max_k: int = 64
    max_tokens: int = 4096
    max_body_bytes: int = 8 << 20
    max_queue: int = 512
    request_timeout: float = 600.0
    group_size: int = 1
    group_timeout: float = 2.0


class ServeError(Exception):
    """An error answered with its status: message names the field (param) and what is allowed."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class Disconnected(Exception):
    """The client went away; its work was cancelled."""


class State:
    """What the routes share: the GRM (its engine and tokenizer), the optional Meta RM, the config, the count of
    requests in progress, whether the server is draining, the metrics (set by the app)."""

    def __init__(self, grm, config: Config, meta_rm=None):
        self.grm, self.engine, self.config, self.meta_rm = grm, grm.engine, config, meta_rm
        self.tokenizer_lock = threading.Lock()
        self.in_progress = 0
        self.draining = False
        self.metrics = None
        self.groups = Groups(self) if config.group_size > 1 else None

    async def tokenizing(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a worker thread, holding the tokenizer lock."""
        def locked():
            with self.tokenizer_lock:
                return fn(*args, **kwargs)

        return await asyncio.to_thread(_freeing_pool, locked)

    async def wait(self, handles: list, cancel, request=None, timeout: float | None = None) -> list:
        """The results of the engine handles, in order. On timeout (504) or the client's disconnect, cancel() is
        called and the handles' samples stop. An engine shutdown is a 503."""
        timeout = self.config.request_timeout if timeout is None else timeout
        gathered = asyncio.gather(*(_awaited(h) for h in handles))
        gathered.add_done_callback(_retrieved)
        watch = asyncio.ensure_future(_disconnect(request)) if request is not None else None
        waiting = {gathered} | ({watch} if watch is not None else set())
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the handler itself was cancelled (server shutdown past its grace period)
            cancel()
            gathered.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if gathered in done:
            try:
                return gathered.result()
            except RequestCancelled:
                raise ServeError(503, "the server is shutting down; the request was cancelled") from None
        cancel()
        gathered.cancel()
        if watch is not None and watch in done:
            raise Disconnected()
        raise ServeError(504, f"the request took longer than {timeout:g} s (--request-timeout); its samples were "
                              "cancelled", None)

    async def score(self, items: list, request=None, timeout: float | None = None, **settings):
        """GRM judgements of items (`GenerativeRewardModel.submit_batch` keyword arguments) and the pending batch
        (for its token counts)."""
        pending = await self.tokenizing(self.grm.submit_batch, items, meta_rm=self.meta_rm, **settings)
        outs = await self.wait(pending.handles, pending.cancel, request, timeout)
        judged = await asyncio.to_thread(_freeing_pool, pending.finish, outs)
        return judged, pending


def _freeing_pool(fn, *args):
    """fn(*args) in a worker thread, which then frees the OpenMP pool that fn's native ops (extraction, the vote)
    gave it: while any other pool lives, the engine's step loop sleeps at every barrier (spct/engine/threads.py)."""
    try:
        return fn(*args)
    finally:
        release_pool()


def _retrieved(future: asyncio.Future) -> None:
    """Reads a finished gather's outcome, so a cancelled one is not reported as an exception never retrieved."""
    if not future.cancelled():
        future.exception()


async def _awaited(handle):
    return await handle


async def _disconnect(request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(POLL_S)


class Groups:
    """`/get_reward --group-size G`: responses collected by prompt, across requests, until G of a prompt are in or
    `group_timeout` passed since its first; then they are judged as one listwise item, in arrival order. A group's
    judging is shared by the requests in it, so one client's disconnect does not cancel it."""

    def __init__(self, state: State):
        self.state = state
        self.pending: dict[str, list[tuple[str, asyncio.Future]]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task] = set()

    async def reward(self, prompt: str, response: str) -> tuple[float, int, int]:
        """(the response's reward (NaN: no valid sample), samples voted, the group's size)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entries = self.pending.setdefault(prompt, [])
        entries.append((response, future))
        if len(entries) == 1:
            self.timers[prompt] = loop.call_later(self.state.config.group_timeout, self._flush, prompt)
        if len(entries) >= self.state.config.group_size:
            self._flush(prompt)
        return await asyncio.shield(future)

    def _flush(self, prompt: str) -> None:
        entries = self.pending.pop(prompt, None)
        timer = self.timers.pop(prompt, None)
        if timer is not None:
            timer.cancel()
        if entries:
            task = asyncio.ensure_future(self._judge(prompt, entries))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _judge(self, prompt: str, entries: list) -> None:
        c = self.state.config
        try:
            judged, _ = await self.state.score([(prompt, [r for r, _ in entries])], indices=[0], k=c.k,
                                               temperature=c.temperature, seed=c.seed, max_new_tokens=c.max_new_tokens,
                                               force_scores=c.force_scores, reduce=c.reduce)
            j = judged[0]
            for i, (_, future) in enumerate(entries):
                if not future.done():
                    future.set_result((j.rewards[i], j.num_valid, len(entries)))
        except Exception as e:  # noqa: BLE001 - every request of the group gets the error
            for _, future in entries:
                if not future.done():
                    future.set_exception(e)


def reward_value(reward: float, invalid_reward: float) -> float:
    return invalid_reward if math.isnan(reward) else float(reward)
