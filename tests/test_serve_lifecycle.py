"""`spct serve`'s lifecycle on a real server (issue 16, "SIGTERM during load"; docs/serve.md, Safety): requests that
fail (an item over the context, a client that goes away mid-request) leave the server serving, and SIGTERM during
load lets the requests in flight finish with 200, refuses new ones and exits 0.

One server for the module (a model load is ~5-10 s); the SIGTERM test stops it, so it runs last.
"""

from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import serving

IN_FLIGHT = 8
ITEM = {"query": "What is 12 + 30?", "responses": ["42", "43"]}
# k = 2 samples of up to 32 tokens each: a request takes a few seconds on a 2-core CPU, long enough to be in flight
BODY = {"items": [ITEM], "k": 2, "seed": 0, "max_new_tokens": 32}
EXIT_BOUND_S = 60.0  # SIGTERM to exit: the drain of 8 small requests, far below --shutdown-timeout (30 s) + teardown


@pytest.fixture(scope="module")
def srv(default_model_dir):
    with serving.server(default_model_dir, "--shutdown-timeout", "30") as s:
        yield s


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(url: str, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := gauge(url, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed {got}, expected {value} within {timeout} s"
        time.sleep(0.05)


def assert_scored(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    body = r.json()
    (j,) = body["judgements"]
    assert len(j["rewards"]) == 2 and j["best"] in (-1, 0, 1) and 0 <= j["num_valid"] <= 2
    assert body["usage"]["completion_tokens"] > 0


def test_an_item_over_the_context_fails_alone(srv):
    """The item is refused inside the handler (its prompt is tokenized, then checked against the context): a 400
    naming it, and the next request is served."""
    long_item = {"query": "What is 1 + 1? " * 4000, "responses": ["2", "3"]}
    r = httpx.post(f"{srv.url}/v1/score", json={**BODY, "items": [ITEM, long_item]}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "items[1]" and "context" in r.json()["error"]["message"]
    assert_scored(httpx.post(f"{srv.url}/v1/score", json=BODY, timeout=60))


def test_a_client_that_goes_away_is_cancelled_and_the_server_serves_on(srv):
    """A client that gives up mid-request: its samples are cancelled (nothing left running), the next is served."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.url}/v1/score", json={**BODY, "max_new_tokens": 256}, timeout=httpx.Timeout(10, read=1.0))
    wait_for(srv.url, "spct_requests_in_progress", 0)
    wait_for(srv.url, "spct_running_rows", 0)
    assert_scored(httpx.post(f"{srv.url}/v1/score", json=BODY, timeout=60))


def new_request_after_sigterm(url: str) -> str:
    """What a new connection gets after SIGTERM: 'refused' (a connection error) or the status it is answered."""
    try:
        with httpx.Client(timeout=10) as fresh:
            return str(fresh.post(f"{url}/v1/score", json=BODY).status_code)
    except httpx.TransportError:  # ConnectError once the listener is closed; a disconnect if accepted just before
        return "refused"


def test_sigterm_during_load_finishes_the_requests_in_flight_and_exits_0(srv):
    url = srv.url
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        clients = [httpx.Client(timeout=120) for _ in range(IN_FLIGHT)]  # one connection each
        futures = [pool.submit(c.post, f"{url}/v1/score", json=BODY) for c in clients]
        wait_for(url, "spct_requests_in_progress", IN_FLIGHT)
        assert not any(f.done() for f in futures), "a request finished before SIGTERM: nothing was in flight"
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)  # past uvicorn's 0.1 s check of its exit flag: the listener is closing or closed
        assert not any(f.done() for f in futures), "the requests finished too soon to show the drain"
        after = new_request_after_sigterm(url)
        responses = [f.result() for f in futures]
        for c in clients:
            c.close()
    code = srv.proc.wait(EXIT_BOUND_S)
    exited_s = time.monotonic() - signalled
    assert after in ("refused", "503"), f"a new request after SIGTERM got {after}"
    for r in responses:
        assert_scored(r)
    assert code == 0, "\n".join(srv.stderr_lines()[-20:])
    assert exited_s < EXIT_BOUND_S
    # uvicorn's error log (a request cancelled at the grace period's end, an exception in the app) or a crashed thread
    errors = [line for line in srv.stderr_lines() if line.startswith(("ERROR:", "Exception in thread"))]
    assert not errors, "\n".join(srv.stderr_lines()[-20:])


def test_requests_still_running_at_the_shutdown_timeout_get_503_and_the_server_exits_0(default_model_dir):
    """--shutdown-timeout 1: requests that would run for minutes are cancelled at the cut-off and answered 503 in the
    error shape (not a bare 500 from a cancelled handler), with nothing logged as an error, and the exit is 0."""
    long = {**BODY, "max_new_tokens": 2000}
    srv = serving.start(default_model_dir, "--shutdown-timeout", "1")
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, f"{srv.url}/v1/score", json=long, timeout=120) for _ in range(2)]
            wait_for(srv.url, "spct_requests_in_progress", 2)
            srv.proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        code = srv.proc.wait(EXIT_BOUND_S)
    finally:
        srv.stop()
    for r in responses:
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"], r.text
    assert code == 0
    time.sleep(0.2)  # the stderr reader's last lines
    noise = [x for x in srv.stderr_lines() if "ERROR" in x or "Exception" in x or "never retrieved" in x]
    assert not noise, noise
