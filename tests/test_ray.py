"""`spct score --ray` and `spct eval --ray` on a local 2-CPU Ray cluster that this module starts on loopback and
stops: the bytes of a run in one process (24 items, k = 4, two workers); a worker SIGKILLed mid-run loses nothing; a
driver SIGKILLed mid-run resumes from its output; an item that fails is named by its id and the others are written;
bad input (an unreachable --address, --workers 0, --ray without the extra, --address without --ray) is one line;
`spct eval --ray` writes the results and samples of a run in one process. The tests that need a cluster skip when
the ray extra is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import free_port, pids_titled

ITEMS = [{"id": f"item-{i}", "query": f"What is {i} + {i}?", "responses": [str(2 * i), str(2 * i + 1)]}
         for i in range(24)]
ARGS = ["--k", "4", "--seed", "3", "--max-new-tokens", "4", "--force-scores"]
WORKER_TITLE = "ray::ScoreWorker.score"  # an actor process's title while it scores a shard


def spct_score(tmp_path: Path, model_dir: Path, out: str, *extra: str, items=ITEMS, wait: bool = True,
               env: dict | None = None):
    inp = tmp_path / f"{out}.in.jsonl"
    inp.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    cmd = [sys.executable, "-m", "spct", "score", "--input", str(inp), "--output", str(tmp_path / out), "--model",
           str(model_dir), *ARGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head on loopback with 2 CPUs, started here and stopped after the module: its address."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'spct[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, default_model_dir) -> bytes:
    """The output of a run in one process."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = spct_score(tmp, default_model_dir, "local.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp / "local.jsonl").read_bytes()


def test_ray_writes_the_bytes_of_one_process(cluster, clean, tmp_path, default_model_dir):
    proc = spct_score(tmp_path, default_model_dir, "ray.jsonl", "--ray", "--address", cluster, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(line)["id"] for line in clean.decode().splitlines()] == [it["id"] for it in ITEMS]
    assert (tmp_path / "ray.jsonl").read_bytes() == clean
    assert "items 24/24" in proc.stderr  # the progress bar, as in a local run


def test_a_worker_killed_mid_run_loses_nothing(cluster, clean, tmp_path, default_model_dir):
    proc = spct_score(tmp_path, default_model_dir, "ray.jsonl", "--ray", "--address", cluster, "--workers", "2",
                      wait=False)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        pids = pids_titled(WORKER_TITLE)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    _, err = proc.communicate(timeout=600)
    assert killed is not None, f"no worker was seen scoring ({WORKER_TITLE!r}); stderr: {err[-2000:]}"
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "ray.jsonl").read_bytes() == clean


def test_a_driver_killed_mid_run_resumes_from_its_output(cluster, clean, tmp_path, default_model_dir):
    """The command SIGKILLed once its first shard is written (its actors die with it), then run again: it scores
    only the items not in the output, and the file ends as the clean run's."""
    out = tmp_path / "ray.jsonl"
    args = ("--ray", "--address", cluster, "--workers", "2")
    proc = spct_score(tmp_path, default_model_dir, "ray.jsonl", *args, wait=False)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (out.is_file() and out.stat().st_size):
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    proc.kill()
    proc.communicate(timeout=60)
    kept = len(out.read_text().splitlines())
    assert 0 < kept < len(ITEMS)
    again = spct_score(tmp_path, default_model_dir, "ray.jsonl", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"24 items, {kept} already in" in again.stderr
    assert out.read_bytes() == clean


def test_an_item_that_fails_is_named_and_the_others_written(cluster, clean, tmp_path, default_model_dir):
    """An item longer than the model's context fails on the worker (no retry makes it fit): the command names it
    and exits 1, after writing the other items' lines, which are the clean run's."""
    long = {"id": "too-long", "query": "Which is better?", "responses": ["word " * 9000, "short"]}
    items = ITEMS[:8] + [long]  # the first 8 keep their numbers, so their samples
    proc = spct_score(tmp_path, default_model_dir, "ray.jsonl", "--ray", "--address", cluster, "--workers", "2",
                      items=items)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "'too-long'" in proc.stderr and "context" in proc.stderr
    assert "1 of 9 items failed on every try (too-long" in proc.stderr.splitlines()[-1]
    want = clean.decode().splitlines()[:8]
    assert (tmp_path / "ray.jsonl").read_text().splitlines() == want


def test_an_unreachable_address_fails_within_seconds(cluster, tmp_path, default_model_dir):
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = spct_score(tmp_path, default_model_dir, "out.jsonl", "--ray", "--address", address)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"spct score: --address {address}: no Ray cluster answers there "
                                                    "(Connection refused); start one with `ray start --head` on that "
                                                    "machine, or leave --address out for a local Ray"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.jsonl").exists()


def test_without_the_extra_ray_says_how_to_install_it(tmp_path, default_model_dir):
    """A `ray` that fails to import (as when the extra is not installed) shadows the real one."""
    fake = tmp_path / "no-ray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))}
    proc = spct_score(tmp_path, default_model_dir, "out.jsonl", "--ray", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("spct score: --ray needs Ray, which is not installed here (No "
                                                    "module named ray); install it with: pip install 'spct[ray]'")


EVAL_ITEMS = [{"id": f"e{i}", "query": f"What is {i} + {i}?", "responses": [str(2 * i), str(2 * i + 1), "no idea"],
               "best": 0, "category": "even" if i % 2 else "odd"} for i in range(12)]


def spct_eval(tmp_path: Path, model_dir: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in EVAL_ITEMS), encoding="utf-8")
    cmd = [sys.executable, "-m", "spct", "eval", "--data", str(data), "--format", "jsonl", "--k", "1,2,4",
           "--max-new-tokens", "4", "--force-scores", "--seed", "5", "--batch-size", "3", "--model", str(model_dir),
           "--out", str(tmp_path / out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_eval_on_ray_gives_the_results_of_one_process(cluster, tmp_path, default_model_dir):
    local = spct_eval(tmp_path, default_model_dir, "local")
    assert local.returncode == 0, local.stderr[-3000:]
    ray = spct_eval(tmp_path, default_model_dir, "ray", "--ray", "--address", cluster, "--workers", "2")
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert (tmp_path / "ray" / "results.json").read_bytes() == (tmp_path / "local" / "results.json").read_bytes()
    assert ray.stdout == local.stdout  # the table
    for name in ("k1.jsonl", "k4.jsonl"):  # the same samples, in the order the shards finished
        lines = [sorted((tmp_path / run / "samples" / name).read_text().splitlines()) for run in ("local", "ray")]
        assert lines[0] == lines[1] and len(lines[0]) == len(EVAL_ITEMS)
    assert "items 24/24" in ray.stderr  # the progress bar: 12 items, two passes


@pytest.mark.parametrize("command, extra, message", [
    ("score", ["--ray", "--workers", "0"], "spct score: --workers must be >= 1, got 0"),
    ("score", ["--address", "127.0.0.1:6379"], "spct score: --address is for --ray runs: add --ray, or leave "
                                               "--address out"),
    ("eval", ["--ray", "--workers", "0"], "spct eval: --workers must be >= 1, got 0"),
    ("eval", ["--workers", "2"], "spct eval: --workers is for --ray runs: add --ray, or leave --workers out"),
])
def test_bad_ray_options(command, extra, message, tmp_path, default_model_dir):
    run = spct_score if command == "score" else spct_eval
    proc = run(tmp_path, default_model_dir, "out", *extra)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message, proc.stderr
    assert not (tmp_path / "out").exists()
