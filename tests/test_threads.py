"""The engine's thread tuner (spct.engine.threads): it keeps the count whose decode steps are fastest per row, tries
the neighbouring counts once a period, and follows a change; prefill steps are not measured."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from spct import _native
from spct.engine.threads import ThreadTuner, name_thread, release_pool


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(tuner: ThreadTuner, cost: dict[int, float], steps: int) -> list[int]:
    """Steps of 16 rows that take cost[n] seconds per row at n threads; the counts used."""
    used = []
    for _ in range(steps):
        n = tuner.before_step()
        assert torch.get_num_threads() == n
        used.append(n)
        tuner.after_step(cost[n] * 16, 16, True)
    return used


def test_a_quiet_machine_keeps_every_thread_and_pays_only_the_trials():
    tuner = ThreadTuner(4, period=10, trial=2)
    used = _run(tuner, {1: 4.0, 2: 2.1, 3: 1.5, 4: 1.2}, 1000)
    assert tuner.threads == 4
    assert set(used) == {3, 4}
    # trials of 3 threads, 2 steps each, every 10, 20, 40 then 80 steps
    assert used.count(3) <= 2 * (3 + 1000 // 80)
    assert used[-200:].count(3) <= 2 * 3


def test_a_busy_core_moves_the_count_down_and_back_up_when_it_leaves():
    tuner = ThreadTuner(2, period=8, trial=2)
    _run(tuner, {1: 2.0, 2: 1.1}, 300)  # the period grows to its cap of 64 steps
    assert tuner.threads == 2
    _run(tuner, {1: 2.0, 2: 5.0}, 80)  # a busy process holds a core: two threads wait at every barrier
    assert tuner.threads == 1
    _run(tuner, {1: 2.0, 2: 1.1}, 30)  # the changed count brought the period back to 8
    assert tuner.threads == 2


def test_a_near_tie_keeps_the_current_count():
    tuner = ThreadTuner(2, period=4, trial=1)
    _run(tuner, {1: 0.99, 2: 1.0}, 20)
    assert tuner.threads == 2


def test_prefill_steps_are_not_measured_and_fixed_turns_it_off(monkeypatch):
    tuner = ThreadTuner(2, period=2, trial=1)
    for _ in range(10):
        tuner.before_step()
        tuner.after_step(100.0, 300, False)
    assert tuner.threads == 2 and not tuner._queue
    monkeypatch.setenv("SPCT_THREADS", "fixed")
    fixed = ThreadTuner(2, period=2, trial=1)
    assert set(_run(fixed, {1: 0.1, 2: 9.0}, 20)) == {2}
    monkeypatch.delenv("SPCT_THREADS")
    off = ThreadTuner(2, period=2, trial=1, enabled=False)  # kernels whose bits may follow the count: all threads
    assert set(_run(off, {1: 0.1, 2: 9.0}, 20)) == {2}


def test_the_thread_count_changes_no_token(default_model_dir):
    """The same seeded samples with the engine's steps on every thread count the tuner may pick (bf16, native)."""
    import spct

    engine = spct.Engine.from_pretrained(default_model_dir, dtype="bfloat16")
    runs = []
    for threads in range(1, torch.get_num_threads() + 1):
        engine._engine()._tuner = ThreadTuner(threads, enabled=False)  # stays at `threads`
        out = engine.generate(["Rate this answer: 2 + 2 = 4."], k=4, seed=3, max_new_tokens=12, temperature=0.9)
        runs.append([s.token_ids for s in out[0]])
    assert all(r == runs[0] for r in runs)


def _tasks_named(name: str) -> int:
    """Threads of this process whose OS name is `name` (Linux)."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == name
        except OSError:  # the thread ended meanwhile
            pass
    return count


def _wait_for(condition, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


PROC = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")


def _in_pool_thread(name: str, work) -> dict:
    """work(seen) in a new thread named `name` with 2 OpenMP threads; the dict it filled."""
    if _native.module() is None:
        pytest.skip(f"the native module is not built: {_native.import_error()}")
    seen = {}

    def run():
        name_thread(name)
        torch.set_num_threads(2)
        work(seen)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return seen


@PROC
def test_release_pool_frees_the_calling_threads_openmp_workers():
    def work(seen):
        torch.ones(1 << 22).sum()  # a parallel region: the thread's pool, one worker named after it
        seen["with"] = _tasks_named("spct-pooltest")
        seen["freed"] = release_pool()
        seen["released"] = _tasks_named("spct-pooltest")

    seen = _in_pool_thread("spct-pooltest", work)
    assert seen["with"] == 2
    assert seen["freed"] and seen["released"] == 1


@PROC
def test_the_step_loop_frees_its_pool_when_it_runs_out_of_work(default_model_dir):
    """libgomp spins only ~100 times at a barrier while the process's pools hold more threads than it has CPUs
    (spct/engine/threads.py): the loop frees its workers when idle, and a caller frees its own when it submits."""
    import spct

    assert _wait_for(lambda: _tasks_named("spct-engine") == 0)  # other engines' idle loops end after IDLE_EXIT_S
    engine = spct.Engine.from_pretrained(default_model_dir, dtype="bfloat16")
    online = engine._engine()
    online._tuner = ThreadTuner(2, enabled=False)
    during = []
    engine.generate(["Rate this answer: 2 + 2 = 4."], k=2, max_new_tokens=8, min_new_tokens=8, temperature=0.9,
                    progress=lambda n: during.append(_tasks_named("spct-engine")))
    assert max(during) == 2  # the loop's thread and its one worker, while it steps
    assert online._thread is not None  # still alive (it ends after IDLE_EXIT_S), its pool freed:
    assert _wait_for(lambda: _tasks_named("spct-engine") == 1)


@PROC
def test_the_servers_worker_threads_free_the_pools_their_work_made():
    """spct serve's tokenizing and judging run in worker threads; a pool left there would throttle the loop."""
    from spct.serve.work import _freeing_pool

    def work(seen):
        seen["sum"] = _freeing_pool(lambda: float(torch.ones(1 << 22).sum()))  # a parallel region, then freed
        seen["after"] = _tasks_named("spct-servetest")

    seen = _in_pool_thread("spct-servetest", work)
    assert seen["sum"] == float(1 << 22)
    assert seen["after"] == 1
