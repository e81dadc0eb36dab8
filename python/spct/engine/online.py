"""The online engine's loop: requests come in from any thread (`submit`), a step loop in its own thread runs the
scheduler's steps on the runner, and each request's handle fills as its samples finish.

    handle = online.submit(request)       # spct.engine.tokens.Request
    handle.result()                       # blocks -> the k samples, in order of j
    await handle                          # the same without blocking an asyncio loop
    for sample in handle: ...             # the samples as they finish (Sample.index is j)
    online.cancel(handle); online.stats()

A failure that belongs to one request (its constraint raised) fails that request alone; the others go on.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import torch

from spct.engine.scheduler import Entry, Job, Scheduler
from spct.engine.threads import ThreadTuner, name_thread, release_pool
from spct.engine.tokens import Live, Request, Sample, TokenRules, int64s

__all__ = ["Handle", "Online", "RequestCancelled", "freeze_startup_heap"]

IDLE_EXIT_S = 2.0  # the step loop's thread ends after this long without work
_LIVE: weakref.WeakSet = weakref.WeakSet()  # every Online, for the exit hook below


@atexit.register
def _stop_loops() -> None:
    """At interpreter exit, each step loop ends before Python finalises: a daemon thread still inside a native call
    then would be unwound from under it (the C++ runtime aborts with "terminate called ...")."""
    for online in list(_LIVE):
        online.shutdown()


class RequestCancelled(Exception):
    """The request was cancelled (`Engine.cancel`) before it finished."""


class Handle:
    """A submitted request: its k samples once they are done (see the module docstring)."""

    def __init__(self, k: int, progress: Callable[[int], object] | None = None):
        self.k, self.progress = k, progress
        self._samples: list[Sample | None] = [None] * k
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._finished: list[Sample] = []  # in the order they finished
        self._waiters: list[Callable[[], None]] = []
        self._lock = threading.Condition()
        self.job: Job | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> list[Sample]:
        """The k samples (index j at position j); raises the request's error, or RequestCancelled."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return list(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        """The samples as they finish (each iteration from the first); raises the request's error at the end."""
        i = 0
        while True:
            with self._lock:
                self._lock.wait_for(lambda: len(self._finished) > i or self._done.is_set())
                ready, done = self._finished[i:], self._done.is_set()
            yield from ready
            i += len(ready)
            if done and i == len(self._finished):
                if self._error is not None:
                    raise self._error
                return

    def __await__(self):
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve() -> None:
            if not future.done():
                if self._error is not None:
                    future.set_exception(self._error)
                else:
                    future.set_result(list(self._samples))

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:  # the waiter's event loop is closed (its program ended first): nobody to tell
                pass

        with self._lock:
            if not self._done.is_set():
                self._waiters.append(wake)
        if self._done.is_set():
            resolve()
        return future.__await__()

    # -- the loop's side ----------------------------------------------------------------------------------------

    def add(self, sample: Sample) -> None:
        with self._lock:
            self._samples[sample.index] = sample
            self._finished.append(sample)
            self._lock.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = error
            self._done.set()
            self._lock.notify_all()
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()


def freeze_startup_heap() -> None:
    """Moves every object alive now (the model, torch's and transformers' modules) out of the cyclic garbage
    collector's scans, as vLLM's engine does after start-up (gc.freeze; they are still freed by reference counting).
    Why: the step loop makes short-lived objects, which trigger collections, and a full collection scanned every
    object of the process. Measured on a 2-core Xeon (SmolLM2 bf16, 64 new tokens): decode 421-432 -> 496-516 tok/s
    at k = 16. SPCT_GC_FREEZE=0 leaves the collector as it is."""
    if os.environ.get("SPCT_GC_FREEZE", "1") != "0":
        gc.collect()
        gc.freeze()


class Online:
    """The scheduler and its step loop over a runner with a paged KV (`runner.new_paged_kv`,
    `runner.forward_paged`). Making one freezes the heap (`freeze_startup_heap`)."""

    def __init__(self, runner, rules: TokenRules, context: int, *, num_blocks: int, block_size: int,
                 max_batch: int, prefill_chunk: int):
        self.runner, self.rules, self.context = runner, rules, context
        self.scheduler = Scheduler(num_blocks, block_size, max_batch=max_batch, prefill_chunk=prefill_chunk)
        self.kv = runner.new_paged_kv(num_blocks + 1, block_size)  # + the scratch block of padding rows
        self.num_blocks, self.block_size = num_blocks, block_size
        self._cv = threading.Condition()
        self._inbox: list[tuple[Request, Handle]] = []
        self._cancels: list[Handle] = []
        self._thread: threading.Thread | None = None
        self._busy = 0.0
        self._closed = False
        self._jobs: dict[int, Job] = {}  # id(request) -> its job, while it runs
        # the step loop's thread count (engine/threads.py), where no result depends on it: the native bf16 kernels
        # (torch's float32 matmuls are not known to give the same bits on any thread count)
        tunable = runner.device.type == "cpu" and bool(getattr(runner.lm_head, "native", False))
        self._tuner = ThreadTuner(torch.get_num_threads(), enabled=tunable)
        _LIVE.add(self)
        freeze_startup_heap()

    @property
    def block_bytes(self) -> int:
        return self.kv.nbytes // (self.num_blocks + 1)

    @property
    def kv_bytes(self) -> int:
        return self.block_bytes * self.num_blocks

    def submit(self, req: Request, progress: Callable[[int], object] | None = None) -> Handle:
        """Queues a checked request (its size checked here: `fits`); returns its handle at once."""
        handle = Handle(req.k, progress)
        release_pool()  # the step loop's OpenMP pool is to be the only one (spct/engine/threads.py)
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine was shut down")
            self._inbox.append((req, handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spct-engine", daemon=True)
                self._thread.start()
            self._cv.notify()
        return handle

    def cancel(self, handle: Handle) -> None:
        with self._cv:
            self._cancels.append(handle)
            self._cv.notify()

    def shutdown(self) -> None:
        """Stops the loop; unfinished requests fail with RequestCancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        thread = self._thread
        if thread is not None:
            thread.join()

    def stats(self) -> dict:
        s, pool = self.scheduler, self.scheduler.pool
        with self._cv:
            counts = dict(s.counts)
            out = {"running": len(s.running), "running_rows": sum(max(len(j.seqs), j.prompt is not None)
                                                                  for j in s.running),
                   "waiting": len(s.waiting) + len(self._inbox),
                   "blocks_used": s.blocks_used, "blocks_free": pool.num_free, "blocks_cached": s.blocks_cached,
                   "blocks_total": self.num_blocks, "block_size": self.block_size, "kv_cache_bytes": self.kv_bytes}
            busy = self._busy
        out.update(counts)
        done = counts["prefill_tokens"] + counts["decode_tokens"]
        out["tokens_per_s"] = done / busy if busy > 0 else 0.0
        return out

    # -- the loop -----------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        name_thread("spct-engine")
        s = self.scheduler
        while True:
            with self._cv:
                while not (self._inbox or self._cancels or self._closed or s.running or s.waiting):
                    release_pool()  # out of work: the callers' pools are to be the only ones (engine/threads.py)
                    if not self._cv.wait(IDLE_EXIT_S):  # idle: the thread ends (submit starts another), so an
                        self._thread = None  # engine nobody references any more is freed with its KV
                        return
                inbox, cancels, closed = self._inbox, self._cancels, self._closed
                self._inbox, self._cancels = [], []
            for req, handle in inbox:
                handle.job = self._jobs[id(req)] = s.add(req, handle)
            for handle in cancels:
                if handle.job is not None and not handle.done():
                    self._end(handle.job, RequestCancelled("the request was cancelled"))
            if closed:
                for job in s.running + s.waiting:
                    self._end(job, RequestCancelled("the engine was shut down"))
                return
            entries = s.schedule()
            if not entries:
                time.sleep(0.001)  # only while a waiting request waits for a prefill that another one ends
                continue
            self._tuner.before_step()
            t0 = time.perf_counter()
            try:
                self._step(entries)
            except Exception as e:  # noqa: BLE001 - a step that fails fails its requests, the loop goes on
                for job in {id(x.job): x.job for x in entries}.values():
                    self._end(job, e)
            took = time.perf_counter() - t0
            self._busy += took
            self._tuner.after_step(took, len(entries), all(e.j >= 0 for e in entries))

    def _step(self, entries: list[Entry]) -> None:
        s = self.scheduler
        copies = s.take_copies()  # partial blocks reused at admission, and forks' partial blocks
        if copies:
            src, dst = (torch.tensor(c, device=self.kv.device) for c in zip(*copies))
            self.kv[:, :, dst] = self.kv[:, :, src]
        layout = s.layout(entries, 1)  # no padding rows: a row's arithmetic does not depend on the others
        logits = self.runner.forward_paged(layout, self.kv)
        s.advance(entries)
        rows, lives, forks = [], [], []
        finishing = [e for e in entries if e.start + e.n == len(e.seq)]
        for i, e in enumerate(finishing):
            req = e.job.req
            if e.j < 0 and e.job.samples:  # recomputed after a preemption: the unfinished samples go on
                forks.append((e.job, [x for x in e.job.samples if x.finish is None]))
            elif e.j < 0:  # a prompt ends: its k samples choose their first tokens from its logits
                room = self.context - len(req.ids)
                samples = [Live(req, j, min(req.settings.max_new_tokens, room), room) for j in range(req.k)]
                forks.append((e.job, samples))
                rows += [i] * req.k
                lives += samples
                self._progress(e.job, len(req.ids))
            else:
                rows.append(i)
                lives.append(e.job.samples[e.j])
        if lives:
            picked = logits if rows == list(range(len(logits))) else logits[int64s(rows, logits.device)]
            self.rules.choose(picked, lives)
        for job, samples in forks:  # their partial blocks are copied before the next step
            if job.admitted >= 0 and job.prompt is not None:
                s.fork(job, samples)
        for live in lives:
            self._after_token(live)

    def _after_token(self, live: Live) -> None:
        job = self._jobs.get(id(live.req))
        if job is None or job.payload.done():
            return
        if live.req.error is not None:
            self._end(job, live.req.error)
            return
        self._progress(job, 1)
        if live.finish is None:
            return
        job.payload.add(self.rules.output(live))
        if live.j in job.seqs:
            self.scheduler.release_sample(job, live.j)
        else:
            job.done += 1
        if job.done == job.req.k:
            self._end(job)

    def _progress(self, job: Job, n: int) -> None:
        progress = job.payload.progress
        if progress is not None:
            try:
                progress(n)
            except Exception as e:  # noqa: BLE001 - a failing callback fails its request
                job.req.error = job.req.error or e

    def _end(self, job: Job, error: BaseException | None = None) -> None:
        """A job leaves: its blocks go back and its handle finishes (with error, if any)."""
        self.scheduler.remove(job)
        self._jobs.pop(id(job.req), None)
        job.payload.finish(error)
