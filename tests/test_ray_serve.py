"""`spct serve --replicas 2` on a local Ray that the command starts on loopback and stops: two replicas answer
/v1/score through Ray Serve's proxy, with the app's own errors; the same prompt goes to the same replica; a replica
SIGKILLed under a request costs no request (the ingress tries another) and Ray brings it back; SIGTERM stops it all
with exit 0. Bad options are one line before Ray starts, and replicas that cannot start are one line naming why. The
routing order (`rank`, `routing_key`) is checked without Ray. The server tests skip when the ray extra is not
installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving import free_port, pids_titled

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'spct[serve]')")

from spct.ray.serve import rank, routing_key  # noqa: E402

REPLICA_TITLE = "ray::ServeReplica:spct:Replica"  # a replica's process title


def _busiest(pids: set[int]) -> int:
    """The process that used the most CPU time over the next second (the replica judging a request)."""
    def ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    start = {pid: ticks(pid) for pid in pids}
    time.sleep(1.0)
    return max(pids, key=lambda pid: ticks(pid) - start[pid])


@pytest.fixture(scope="module")
def server(default_model_dir):
    """`spct serve --replicas 2` on a free port once it says it listens: (base URL, its process)."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'spct[ray]')")
    port = free_port()
    cmd = [sys.executable, "-m", "spct", "serve", "--replicas", "2", "--port", str(port), "--model",
           str(default_model_dir), "--max-new-tokens", "4", "--kv-cache-mb", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 300
    while not ready.wait(1) and proc.poll() is None and time.monotonic() < deadline:
        pass
    if not ready.is_set():
        proc.kill()
        pytest.fail(f"spct serve --replicas 2 did not start: {''.join(lines)[-3000:]}")
    try:
        yield f"http://127.0.0.1:{port}", proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def post(url: str, body, path: str = "/v1/score", timeout: float = 120) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def score(url: str, query: str, timeout: float = 120, **extra) -> tuple[int, dict, dict]:
    return post(url, {"items": [{"query": query, "responses": ["4", "5"]}], **extra}, timeout=timeout)


def with_retries(url: str, query: str, tries: int = 3) -> tuple[int, dict, dict]:
    """A client that tries again on a 5xx or a dropped connection, as RL stacks' reward clients do."""
    for attempt in range(tries):
        try:
            status, body, headers = score(url, query)
        except (urllib.error.URLError, ConnectionError):
            status, body, headers = 599, {}, {}
        if status < 500:
            return status, body, headers
        time.sleep(1.0)
    return status, body, headers


QUERIES = [f"What is {i} + {i}?" for i in range(16)]


def test_two_replicas_answer_and_a_prompt_keeps_its_replica(server):
    url, _, _ = server
    seen = {}
    for q in QUERIES:
        status, body, headers = score(url, q)
        assert status == 200, body
        assert [sorted(j) for j in body["judgements"]] == [["best", "num_valid", "rewards"]]
        seen[q] = headers["x-spct-replica"]
    assert len(set(seen.values())) == 2, seen  # 16 prompts over 2 replicas: all on one has odds 2^-15
    for q in QUERIES[:4]:
        status, body, headers = score(url, q)
        assert status == 200 and headers["x-spct-replica"] == seen[q], (q, headers, seen)


def test_the_replicas_answer_errors_as_spct_serve_does(server):
    url, _, _ = server
    status, body, _ = post(url, b"{not json")
    assert status == 400 and body["error"]["param"] == "body", body
    status, body, _ = post(url, {"items": [{"query": "q", "responses": ["a"]}], "k": 100000})
    assert status == 400 and body["error"]["message"] == "k = 100000 is over this server's limit of 64 (--max-k)"
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok"}


def test_a_killed_replica_costs_no_request_and_comes_back(server):
    url, _, _ = server
    before = set(pids_titled(REPLICA_TITLE))
    assert len(before) == 2, before
    owner = {q: score(url, q)[2]["x-spct-replica"] for q in QUERIES}
    ids_before = set(owner.values())
    in_flight: list = []
    slow = threading.Thread(target=lambda: in_flight.append(
        score(url, QUERIES[0], k=4, max_new_tokens=200, timeout=300)))
    slow.start()
    victim = _busiest(before)  # the replica judging the slow request
    os.kill(victim, signal.SIGKILL)
    results = [with_retries(url, q) for q in QUERIES[:8]]
    slow.join(300)
    assert [s for s, _, _ in results] == [200] * 8, results
    assert in_flight and in_flight[0][0] == 200, in_flight  # the request under the kill was answered,
    assert in_flight[0][2]["x-spct-replica"] != owner[QUERIES[0]]  # by another replica than the one killed under it
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        now = set(pids_titled(REPLICA_TITLE))
        ids = {score(url, q)[2]["x-spct-replica"] for q in QUERIES}
        if len(now) == 2 and victim not in now and len(ids) == 2 and ids - ids_before:
            break
        time.sleep(3)
    else:
        pytest.fail(f"the killed replica did not come back: processes {now}, replicas answering {ids}")


def test_sigterm_stops_the_replicas_and_ray(server):
    _, proc, lines = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, "".join(lines)[-3000:]
    deadline = time.monotonic() + 30
    while set(pids_titled(REPLICA_TITLE)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not set(pids_titled(REPLICA_TITLE))
    assert not any("Traceback" in line for line in lines), "".join(lines)[-3000:]


def spct_serve(*extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spct", "serve", "--port", str(free_port()), *extra],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("extra, message", [
    (["--replicas", "0"], "spct serve: --replicas must be >= 1, got 0"),
    (["--replicas", "2", "--cpus-per-replica", "0"], "spct serve: --cpus-per-replica must be >= 1, got 0"),
    (["--address", "127.0.0.1:6379"], "spct serve: --address is for --replicas: add --replicas N, or leave "
                                      "--address out"),
])
def test_bad_replica_options(extra, message):
    proc = spct_serve(*extra)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message, proc.stderr


def test_an_unreachable_address_fails_within_seconds(default_model_dir):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'spct[ray]')")
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = spct_serve("--replicas", "2", "--address", address, "--model", str(default_model_dir))
    assert time.monotonic() - start < 60
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"spct serve: --address {address}: no Ray cluster answers there "
                                                    "(Connection refused); start one with `ray start --head` on that "
                                                    "machine, or leave --address out for a local Ray"), proc.stderr


def test_replicas_that_cannot_start_are_one_line_naming_the_cause(default_model_dir):
    """A KV budget that holds no block: each replica's engine refuses it while Ray starts it."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'spct[ray]')")
    proc = spct_serve("--replicas", "1", "--kv-cache-mb", "0.01", "--model", str(default_model_dir))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("spct serve: the replicas did not start: ValueError: kv_cache_mb=0.01 "), proc.stderr
    assert "holds no block" in last and "Traceback" not in proc.stderr
    assert not set(pids_titled(REPLICA_TITLE))


def test_without_the_extra_replicas_says_how_to_install_it(tmp_path, default_model_dir):
    fake = tmp_path / "no-ray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))}
    proc = spct_serve("--replicas", "2", "--model", str(default_model_dir), env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("spct serve: --replicas needs Ray, which is not installed here "
                                                    "(No module named ray); install it with: pip install 'spct[ray]'")


def test_routing_key_is_the_prompt_of_each_route():
    a = routing_key("/v1/score", json.dumps({"items": [{"query": "q1", "responses": ["x"]}]}).encode())
    b = routing_key("/v1/score", json.dumps({"items": [{"query": "q1", "responses": ["y", "z"]}], "k": 8}).encode())
    c = routing_key("/v1/score", json.dumps({"items": [{"query": "q2", "responses": ["x"]}]}).encode())
    assert a == b != c and len(a) == 16
    assert routing_key("/get_reward", json.dumps({"query": ["p r"], "prompts": ["p "]}).encode()) is not None
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert routing_key("/v1/chat/completions", json.dumps(chat).encode()) == routing_key(
        "/v1/chat/completions", json.dumps({**chat, "n": 4}).encode())
    for path, body in (("/v1/score", b"{not json"), ("/v1/score", b"[1]"), ("/v1/score", b'{"items": [3]}'),
                       ("/health", b""), ("/get_reward", b'{"query": ["x"]}')):
        assert routing_key(path, body) is None, (path, body)


def test_rank_is_rendezvous_order_until_load_outweighs_it():
    replicas = ["r1", "r2", "r3"]
    keys = [f"{i:016x}" for i in range(300)]
    firsts = [rank(replicas, k, {})[0][0] for k in keys]
    assert min(firsts.count(r) for r in replicas) > 60  # spread evenly (100 each on average)
    for k, first in zip(keys, firsts):
        order = rank(replicas, k, {})
        assert sorted(r for (r,) in order) == replicas and order[0] == [first]
        # losing another replica never moves a key; losing its own moves it to its second choice
        other = next(r for r in replicas if r != first)
        assert rank([r for r in replicas if r != other], k, {})[0] == [first]
        assert rank([r for r in replicas if r != first], k, {})[0] == order[1]
    k, first = keys[0], firsts[0]
    assert rank(replicas, k, {r: 0 for r in replicas} | {first: 8})[0] == [first]  # within BALANCE
    busy = {r: 0 for r in replicas} | {first: 9}
    assert rank(replicas, k, busy) == [sorted(replicas, key=lambda r: busy[r])]  # load wins: the least loaded first
    assert rank(replicas, None, {}) == [replicas] and rank([], k, {}) == []
