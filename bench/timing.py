"""Shared by the benchmarks: the median wall time of a baseline timed beside pytest-benchmark's own rounds, the
tests' one tolerance table per dtype (validation before timing), and the machine's physical limits measured in the
same run (memory read GB/s, matmul GFLOP/s), which every op's figure is reported as a fraction of."""

import functools
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


def _seconds(fn, rounds: int) -> list[float]:
    """The wall time of each of `rounds` calls of fn."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def best_seconds(fn, rounds: int) -> float:
    """The fastest of `rounds` calls: a machine's peak is what it reaches at best (the host's noise only slows it)."""
    return min(_seconds(fn, rounds))


def median_seconds(fn, rounds: int) -> float:
    return statistics.median(_seconds(fn, rounds))


@functools.cache
def memory_read_gb_per_s(mib: int = 512, rounds: int = 5) -> float:
    """This machine's memory read speed, measured now with torch on a float32 tensor far larger than the caches
    (every thread torch uses): the faster of a sum (bytes read) and a copy (bytes read plus written), each its best
    of `rounds`, in GB/s. The physical limit a memory-bound op is reported against. torch does not reach the
    hardware's peak (the native bf16 linear at M = 1 reads up to ~1.3x faster on a 2-core Xeon), so a fraction of
    it can pass 100%: it is a lower bound of the peak, measured the same way in every run."""
    import torch

    x = torch.ones(mib * (1 << 20) // 4)
    y = torch.empty_like(x)
    x.sum(), y.copy_(x)  # fault the pages in
    summed = x.numel() * 4 / best_seconds(x.sum, rounds)
    copied = 2 * x.numel() * 4 / best_seconds(lambda: y.copy_(x), rounds)
    return max(summed, copied) / 1e9


@functools.cache
def matmul_gflop_per_s(size: int = 2048, rounds: int = 5) -> float:
    """This machine's matrix-multiply speed, measured now: GFLOP/s of a size^3 torch.matmul (oneDNN), the best of
    `rounds`, the faster of bfloat16 and float32. The compute limit a compute-bound op is reported against. bf16 is
    the faster where the CPU multiplies it natively (AMX, AVX-512 BF16); on a CPU with only AVX2, torch's bf16
    matmul is hundreds of times slower than its float32 one, and float32 FMAs are what any bf16 kernel runs there
    (spct's AVX2 linear too)."""
    import torch

    speeds = []
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b
        if dtype == torch.bfloat16:  # one product tells whether bf16 is slow here; timing 5 would take minutes
            seconds = best_seconds(lambda: a @ b, 1)
            if seconds > 1.0:
                speeds.append(2 * size**3 / seconds / 1e9)
                continue
        speeds.append(2 * size**3 / best_seconds(lambda: a @ b, rounds) / 1e9)
    return max(speeds)
