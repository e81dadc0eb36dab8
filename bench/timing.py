"""Shared by the benchmarks: the median wall time of a baseline timed beside pytest-benchmark's own rounds."""

import statistics
import time


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
