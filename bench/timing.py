"""Shared by the benchmarks: the median wall time of a baseline timed beside pytest-benchmark's own rounds, and the
tests' one tolerance table per dtype (validation before timing)."""

import importlib.util
import statistics
import time
from pathlib import Path


def load_tolerances() -> dict:
    """The one tolerance table per dtype, tests/conftest.py's TOLERANCES."""
    path = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("spct_tests_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TOLERANCES


TOLERANCES = load_tolerances()


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
