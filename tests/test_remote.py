"""The remote reward functions (spct.integrations.remote) over HTTP.

The client alone, against scripted HTTP servers on 127.0.0.1 (`Fake`, http.server in a thread): retries and backoff
(429 with Retry-After, 503), errors raised at once in one line with the server's message, round-robin over URLs,
an unreachable URL skipped, the Bearer key, the request body a TRL batch becomes. Then against a real `spct serve`
(tests/serving.py): the rewards equal the local GRMReward's and compute_score's exactly, and TRL's real GRPOTrainer
trains 2 steps with the remote reward.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import math
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import serving
from test_integrations import check_grpo_run, run_grpo

import spct
from spct.integrations import (AsyncRemoteGRMReward, GRMReward, RemoteGRMReward, compute_score, local, remote,
                               remote_compute_score)
from spct.integrations.transport import load_httpx

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install '.[serve]'")

FAST = {"backoff": 0.01, "timeout": 10.0}  # the scripted servers answer at once: no need to wait long


def judge(body: dict) -> dict:
    """A valid /v1/score reply: each response's reward is its length, null for "?" (no valid sample)."""
    out = []
    for item in body["items"]:
        rewards = [None if r == "?" else float(len(r)) for r in item["responses"]]
        out.append({"rewards": rewards, "best": 0, "num_valid": 0 if None in rewards else body["k"]})
    return {"model": "fake", "judgements": out, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, reply = self.server.script.pop(0) if self.server.script else (200, {}, None)
        data = json.dumps(judge(body) if reply is None else reply).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Fake(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers each POST with the next (status, headers, reply) of its script
    (reply None: `judge`'s valid reply), then with valid replies; `seen`: (path, headers, body) of each request."""

    daemon_threads = True

    def __init__(self, script=()):
        super().__init__(("127.0.0.1", 0), Handler)
        self.script, self.seen = list(script), []
        self.url = f"http://127.0.0.1:{self.server_port}"
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()  # shutdown waits a poll


@pytest.fixture
def fakes():
    """fakes(script) -> a started Fake; all of them shut down at the end of the test."""
    made = []

    def make(script=()):
        made.append(Fake(script))
        return made[-1]

    yield make
    for f in made:
        f.shutdown()
        f.server_close()


def error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


PROMPTS = ["What is 2 + 2?", "What is 2 + 2?", "Name a color."]
COMPLETIONS = ["four", "5", "Blue!"]


def test_a_batch_is_one_request_of_listwise_items_with_a_seed_per_call(fakes, monkeypatch):
    monkeypatch.delenv("SPCT_API_KEY", raising=False)
    fake = fakes()
    reward = RemoteGRMReward(fake.url + "/", k=3, seed=10, max_new_tokens=64, temperature=0.7, force_scores=True,
                             reduce="mean", **FAST)
    assert reward(PROMPTS, COMPLETIONS) == [4.0, 1.0, 5.0] and reward.last_num_valid == [3, 3]
    chat = [[{"role": "user", "content": "Hi"}]] * 2
    with pytest.warns(UserWarning, match="held no valid score group"):  # once per instance
        assert reward(chat, [[{"role": "assistant", "content": "Hello"}], "?"]) == [5.0, 0.0]
    assert reward.last_num_valid == [0] and reward.__name__ == "spct_grm_listwise"
    (path, headers, first), (_, _, second) = [(p, h, b) for p, h, b in fake.seen]
    assert path == "/v1/score" and "authorization" not in headers
    assert first == {"items": [{"query": PROMPTS[0], "responses": ["four", "5"]},
                               {"query": PROMPTS[2], "responses": ["Blue!"]}],
                     "k": 3, "seed": 11, "temperature": 0.7, "max_new_tokens": 64, "force_scores": True,
                     "reduce": "mean"}
    assert second["seed"] == 12 and second["items"] == [{"query": chat[0], "responses": ["Hello", "?"]}]
    single = RemoteGRMReward(fake.url, mode="single", invalid_reward=-1.0, **FAST)
    assert single(PROMPTS, ["?", "5", "Blue!"]) == [-1.0, 1.0, 5.0] and single.last_num_valid == [0, 1, 1]
    assert len(fake.seen[-1][2]["items"]) == 3 and single([], []) == [] and len(fake.seen) == 3  # empty: no request


def test_429_and_503_are_retried_with_backoff_honouring_retry_after(fakes):
    fake = fakes([(429, {"Retry-After": "1"}, error("busy")), (503, {}, error("shutting down"))])
    reward = RemoteGRMReward(fake.url, max_retries=2, **FAST)
    start = time.monotonic()
    assert reward(PROMPTS, COMPLETIONS) == [4.0, 1.0, 5.0]
    assert len(fake.seen) == 3 and time.monotonic() - start >= 1.0  # 3 attempts; waited the Retry-After
    assert fake.seen[0][2] == fake.seen[2][2]  # a retry sends the same body (the same seed)
    always = fakes([(503, {}, error("shutting down"))] * 3)
    with pytest.raises(RuntimeError) as caught:
        RemoteGRMReward(always.url, max_retries=2, **FAST)(PROMPTS, COMPLETIONS)
    message = str(caught.value)
    assert "\n" not in message and "gave up after 3 attempts" in message and "503 shutting down" in message
    assert len(always.seen) == 3


@pytest.mark.parametrize("status, kind, hint", [(400, ValueError, ""), (401, ValueError, "SPCT_API_KEY"),
                                                (422, ValueError, ""), (500, RuntimeError, "")])
def test_other_errors_raise_at_once_in_one_line_with_the_servers_message(fakes, status, kind, hint):
    fake = fakes([(status, {}, error("items[0].responses: List should have at least 1 item"))])
    with pytest.raises(kind) as caught:
        RemoteGRMReward(fake.url, **FAST)(PROMPTS, COMPLETIONS)
    message = str(caught.value)
    assert f"{fake.url}/v1/score: {status} items[0].responses: List should have at least 1 item" in message
    assert "\n" not in message and hint in message and len(fake.seen) == 1  # not retried


def test_round_robin_over_urls_with_the_bearer_key(fakes, monkeypatch):
    a, b = fakes(), fakes()
    reward = RemoteGRMReward([a.url, b.url + "/"], api_key="key-1", **FAST)
    for _ in range(4):
        assert reward(PROMPTS, COMPLETIONS) == [4.0, 1.0, 5.0]
    assert len(a.seen) == len(b.seen) == 2
    assert {h["authorization"] for _, h, _ in a.seen + b.seen} == {"Bearer key-1"}
    monkeypatch.setenv("SPCT_API_KEY", "key-2")
    RemoteGRMReward(f"{a.url}, {b.url}", **FAST)(PROMPTS, COMPLETIONS)  # the key from the environment
    assert a.seen[-1][1]["authorization"] == "Bearer key-2"


def test_a_failed_attempt_moves_on_to_the_next_url(fakes):
    dead = socket.socket()  # bound, never listening: connections to it are refused
    dead.bind(("127.0.0.1", 0))
    try:
        busy, live = fakes([(429, {}, error("busy"))]), fakes()
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
        reward = RemoteGRMReward([dead_url, busy.url, live.url], max_retries=2, backoff=5.0)
        start = time.monotonic()
        for _ in range(3):
            assert reward(PROMPTS, COMPLETIONS) == [4.0, 1.0, 5.0]
        assert time.monotonic() - start < 2.0  # the first pass over the URLs does not wait for the backoff
        assert (len(busy.seen), len(live.seen)) == (2, 2)  # call 1: dead, busy (429), live; 2: busy; 3: live
        with pytest.raises(RuntimeError, match=r"gave up after 1 attempt \(max_retries = 0\); .*: ConnectError"):
            RemoteGRMReward(dead_url, max_retries=0)(PROMPTS, COMPLETIONS)
    finally:
        dead.close()


def test_the_async_reward_retries_and_balances_as_the_blocking_one(fakes):
    a, b = fakes([(503, {}, error("shutting down"))]), fakes()
    reward = AsyncRemoteGRMReward([a.url, b.url], k=2, **FAST)
    assert inspect.iscoroutinefunction(reward.__call__)  # what TRL's is_async_callable reads (TRL: below)
    assert asyncio.run(reward(PROMPTS, COMPLETIONS)) == [4.0, 1.0, 5.0]  # a: 503, then b

    async def twice():  # two calls on one loop share its client
        first = await reward(PROMPTS, ["?", "?", "x"])
        await reward.aclose()
        return first, await reward(PROMPTS, COMPLETIONS)

    assert asyncio.run(twice()) == ([0.0, 0.0, 1.0], [4.0, 1.0, 5.0])  # another event loop, a new client
    assert (len(a.seen), len(b.seen)) == (2, 2)
    assert [s[2]["seed"] for s in a.seen + b.seen] == [1, 3, 1, 2]


def test_remote_compute_score_posts_one_item_with_verls_settings(fakes, monkeypatch):
    fake = fakes()
    monkeypatch.delenv("SPCT_API_KEY", raising=False)
    monkeypatch.setattr(remote, "_WARNED", set())
    info = {"question": "What is 2 + 2?", "k": 4}
    kw = {"url": fake.url, "api_key": "key-3", "max_new_tokens": 32, "k": 2, **FAST}
    assert remote_compute_score("gsm8k", "four", "4", info, **kw) == 4.0
    assert fake.seen[-1][1]["authorization"] == "Bearer key-3"
    assert fake.seen[-1][2] == {"items": [{"query": "What is 2 + 2?", "responses": ["four"]}], "k": 4, "seed": 0,
                                "temperature": None, "max_new_tokens": 32, "force_scores": False, "reduce": "sum"}
    with pytest.warns(UserWarning, match="pass force_scores=True"):
        assert remote_compute_score("gsm8k", "?", None, {"prompt": "Q", "invalid_reward": -2}, **kw) == -2.0
    monkeypatch.setenv("SPCT_URL", f"{fake.url},{fake.url}/")
    assert remote_compute_score("gsm8k", "abc", None, {"question": "Q"}) == 3.0
    same = {key: t for key, t in remote._TRANSPORTS.items() if fake.url in key[0]}
    assert len(same) == 2  # one client per (urls, key, ...): kw's, and the environment's
    remote_compute_score("gsm8k", "abc", None, {"question": "Q"})
    assert len([key for key in remote._TRANSPORTS if fake.url in key[0]]) == 2
    monkeypatch.delenv("SPCT_URL")
    with pytest.raises(ValueError, match="needs the server's url"):
        remote_compute_score("gsm8k", "4", None, {"question": "Q"})
    with pytest.raises(ValueError, match=r"remote_compute_score: k = 'two' \(from extra_info\) must be an int"):
        remote_compute_score("gsm8k", "4", None, {"question": "Q", "k": "two"}, **kw)
    with pytest.raises(ValueError, match="needs the question"):
        remote_compute_score("gsm8k", "4", None, {}, **kw)


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "localhost:8000"}, "url must be http://HOST:PORT or https://HOST:PORT (a server's root), got "
                                "'localhost:8000'"),
    ({"url": "http://h:1/v1/score"}, "url must be the server's root, without the route"),
    ({"url": []}, "got an empty list"),
    ({"k": 0}, "k must be an int >= 1, got 0"),
    ({"temperature": -0.5}, "temperature must be None or a number >= 0, got -0.5"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be an int >= 1, got 2.5"),
    ({"seed": -1}, "seed must be an int >= 0, got -1"),
    ({"force_scores": "yes"}, "force_scores must be a bool, got 'yes'"),
    ({"timeout": 0}, "timeout must be a number > 0, got 0"),
    ({"max_retries": -1}, "max_retries must be an int >= 0, got -1"),
    ({"backoff": float("nan")}, "backoff must be a number >= 0, got nan"),
    ({"reduce": "max"}, "reduce must be one of 'sum', 'mean', got 'max'"),
    ({"mode": "pairwise"}, "mode must be 'single' or 'listwise', got 'pairwise'"),
])
def test_bad_arguments_are_refused_in_one_line_naming_the_value(kwargs, message):
    with pytest.raises(ValueError) as caught:
        RemoteGRMReward(**{"url": "http://127.0.0.1:8000", **kwargs})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_modules_load_as_verl_loads_them_without_httpx(monkeypatch):
    """verl runs custom_reward_function.path as a file of its own; httpx is needed only when a request is made."""
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now fails
    for module in (remote, spct.integrations.transport):
        spec = importlib.util.spec_from_file_location("custom_module", module.__file__)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    with pytest.raises(ImportError, match=r"need httpx: pip install 'spct\[serve\]'"):
        load_httpx()
    with pytest.raises(ImportError, match=r"pip install 'spct\[serve\]'"):
        RemoteGRMReward("http://127.0.0.1:8000")


# --- against a real `spct serve` -----------------------------------------------------------------------------------

KEY = "remote-test-key"
JUDGING = {"k": 2, "max_new_tokens": 16, "force_scores": True}
BATCH = (["What is 2 + 2?"] * 2 + [[{"role": "user", "content": "Name a primary color."}]] * 2 + ["Say hi."],
         ["4", "5", [{"role": "assistant", "content": "Blue"}], "Green", "Hello!"])


@pytest.fixture(scope="module")
def served(default_model_dir):
    """A server with a key, taking one scoring request at a time (429 for a second one: a real busy server)."""
    with serving.server(default_model_dir, "--api-key", KEY, "--max-new-tokens", "16", "--max-queue", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def grm(default_model_dir):
    return spct.GenerativeRewardModel.from_pretrained(str(default_model_dir))


def score_requests(srv, status: int = 200) -> float:
    """/v1/score requests answered with status, from the server's /metrics."""
    text = httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    line = f'spct_requests_total{{route="/v1/score",status="{status}"}} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def test_remote_rewards_equal_the_local_grms(served, grm):
    """The server seeds an item by its position, as score_batch does, and is batch invariant: the same rewards,
    exactly (the seed of each call, seed + the call number, is checked against the scripted servers above)."""
    expected = GRMReward(grm, **JUDGING)(*BATCH)
    there = RemoteGRMReward(served.url, api_key=KEY, **JUDGING)
    assert there(*BATCH) == expected and there.last_num_valid == [2, 2, 2]
    assert all(2 <= r <= 20 for r in expected)  # 2 forced samples, each score in 1..10
    assert asyncio.run(AsyncRemoteGRMReward(served.url + "/", api_key=KEY, **JUDGING)(*BATCH)) == expected
    with pytest.raises(ValueError, match=r"401 .*SPCT_API_KEY"):
        RemoteGRMReward(served.url, api_key="wrong", **JUDGING)(*BATCH)
    with pytest.raises(ValueError, match=r"400 k = 65 is over this server's limit of 64 \(--max-k\)"):
        RemoteGRMReward(served.url, api_key=KEY, k=65, max_new_tokens=1)(*BATCH)


def test_a_busy_servers_429_is_retried_after_its_retry_after(served):
    """Two requests at once to a server that takes one (--max-queue 1): the second is refused with 429 and
    Retry-After, waits, and is answered; both get the same rewards (the same seed)."""
    busy = score_requests(served, 429)

    async def both():
        rewards = [AsyncRemoteGRMReward(served.url, api_key=KEY, backoff=0.01, **JUDGING) for _ in range(2)]
        return await asyncio.gather(*(r(BATCH[0][:2], BATCH[1][:2]) for r in rewards))

    first, second = asyncio.run(both())
    assert first == second and len(first) == 2 and score_requests(served, 429) > busy


def test_remote_compute_score_equals_compute_score(served, grm, default_model_dir, monkeypatch):
    monkeypatch.setitem(local._LOADED, str(default_model_dir), grm)  # the module's model: no second load
    info = {"question": "What is 2 + 2?", "seed": 7}
    here = compute_score("gsm8k", "The answer is 4.", "4", info, model=str(default_model_dir), **JUDGING)
    there = remote_compute_score("gsm8k", "The answer is 4.", "4", info, url=served.url, api_key=KEY, **JUDGING)
    assert there == here and 2 <= here <= 20


@pytest.mark.parametrize("kind", [RemoteGRMReward, AsyncRemoteGRMReward])
def test_trl_grpo_trainer_runs_two_steps_with_the_remote_reward(served, smollm2_tokenizer, tmp_path, kind):
    """THE end-to-end check: TRL's real GRPOTrainer (`run_grpo`: a tiny policy, 2 steps on the CPU) with its reward
    from the server this module started; every reward call was one /v1/score request the server answered."""
    from trl.trainer.utils import is_async_callable

    reward = kind(served.url, api_key=KEY, **JUDGING)
    calls = []

    def record(prompts, completions, out):
        calls.append((list(prompts), list(completions), out, list(reward.last_num_valid)))
        return out

    if kind is AsyncRemoteGRMReward:
        async def logged(prompts, completions, **kwargs):
            return record(prompts, completions, await reward(prompts, completions, **kwargs))
    else:
        def logged(prompts, completions, **kwargs):
            return record(prompts, completions, reward(prompts, completions, **kwargs))

    logged.__name__ = reward.__name__
    assert is_async_callable(reward) == is_async_callable(logged) == (kind is AsyncRemoteGRMReward)
    before_requests = score_requests(served)
    check_grpo_run(*run_grpo(logged, smollm2_tokenizer, tmp_path / "grpo"), calls)
    assert score_requests(served) - before_requests == len(calls)
    assert all(math.isfinite(r) for _, _, out, _ in calls for r in out)
