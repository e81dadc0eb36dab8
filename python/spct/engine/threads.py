"""How many threads the engine's steps use: all of them on a quiet machine, fewer while other processes hold cores.

Why: every parallel region of a step ends at a barrier, and a barrier waits for its slowest thread. When another
process holds one of the cores, one of our threads runs only in that process's gaps, and every barrier waits for
it: on a 2-core machine a 16-sample decode fell to a quarter of its quiet speed, below what one thread alone gets.
A thread count that follows the free cores avoids that, and changing it never changes a result (every kernel's
bits are independent of how its work is split; tested).

The rule is measured, not guessed: the loop runs its decode steps at the current count, and every `period` decode
steps it tries the neighbouring counts (one fewer, one more) for `trial` steps each, comparing seconds per row.
It keeps the fastest. A trial that keeps the count doubles the period, up to 8 times `period` (on a quiet machine
the trials then cost under 1% of the steps); one that changes it starts again from `period`, so when a busy process
arrives or leaves the count follows within a few hundred steps at most. Prefill steps run at the current count
and are not measured (their cost per row differs).

    tuner = ThreadTuner(torch.get_num_threads())
    tuner.before_step()                 # sets torch's (and so OpenMP's) thread count for this step
    tuner.after_step(seconds, rows, decode_only)

SPCT_THREADS=fixed turns it off (the count stays at torch.get_num_threads()).

One OpenMP pool: the step loop runs in its own thread, and libgomp keeps a pool of workers per thread that starts
parallel regions. Once the pools together hold more threads than there are CPUs, libgomp spins about 100 times at
a barrier before it sleeps, not about 300,000, so with a second pool alive (the caller's, left by any parallel torch
op such as loading the model) every region of every step ended in a futex sleep and wake. So each thread frees its
pool (`release_pool`) when it hands work to the loop, as do the thread that loaded the model and spct serve's
worker threads after their work, and the loop frees its own when it runs out of work (then a caller's torch ops,
a trainer's for example, or another engine such as llama.cpp, run at full speed). Measured on
a 2-core EPYC, 16 samples of 128 tokens over a 1,000-token prompt, alternating runs: 398 and 439 tok/s with the
caller's pool alive (about 270 sleeps per step in each of the loop's two threads), 613 and 658 with it released
(none).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import sys

import torch

from spct.ops.openmp import release_pool

__all__ = ["ThreadTuner", "name_thread", "release_pool"]

PERIOD = 48  # decode steps at the chosen count between trials
TRIAL = 3  # decode steps per candidate in a trial (the median of them counts)


def name_thread(name: str) -> None:
    """Names the calling OS thread (Linux, up to 15 bytes) as top -H, perf and py-spy show it; the OpenMP workers
    it starts take the same name. Does nothing elsewhere."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


class ThreadTuner:
    """Chooses the thread count of each step (module docstring). Not thread-safe: the step loop owns it."""

    def __init__(self, max_threads: int, period: int = PERIOD, trial: int = TRIAL, enabled: bool = True):
        self.max_threads = max(1, int(max_threads))
        self.period, self.trial = period, trial
        self.enabled = enabled and self.max_threads > 1 and os.environ.get("SPCT_THREADS", "auto") != "fixed"
        self.threads = self.max_threads
        self._every = period  # decode steps between trials now: period, doubled by each trial that keeps the count
        self._since = 0  # decode steps since the last trial
        self._queue: list[int] = []  # candidates still to try in this trial, the current one first
        self._times: dict[int, list[float]] = {}

    def before_step(self) -> int:
        """Sets the thread count for the next step; returns it."""
        n = self._queue[0] if self._queue else self.threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def after_step(self, seconds: float, rows: int, decode_only: bool) -> None:
        """Records a finished step (its wall time and row count)."""
        if not (self.enabled and decode_only and rows > 0):
            return
        if not self._queue:
            self._since += 1
            if self._since >= self._every:
                self._start_trial()
            return
        n = self._queue[0]
        times = self._times.setdefault(n, [])
        times.append(seconds / rows)
        if len(times) >= self.trial:
            self._queue.pop(0)
            if not self._queue:
                self._finish_trial()

    def _start_trial(self) -> None:
        near = {self.threads - 1, self.threads + 1} & set(range(1, self.max_threads + 1))
        self._queue = [self.threads, *sorted(near)]
        self._times = {}

    def _finish_trial(self) -> None:
        cost = {n: statistics.median(t) for n, t in self._times.items()}
        best = min(cost, key=lambda n: (cost[n], -n))
        # a step with fewer threads must be clearly faster to win: a tie keeps the larger count
        if cost[best] > 0.97 * cost[self.threads]:
            best = self.threads
        self._every = min(2 * self._every, 8 * self.period) if best == self.threads else self.period
        self.threads, self._since = best, 0
