"""`spct serve` on loopback, a real server subprocess (tests/serving.py): every route's documented shape
(docs/serve.md), /v1/score equal to offline `spct score`, OpenRLHF's /get_reward payload, seeded chat samples, and
bad input answered with its status and the field's name while the server goes on serving."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

import serving

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install '.[serve]'")

ITEMS = [{"query": "What is 2 + 2?", "responses": ["4", "5"]},
         {"query": "Name a primary color.", "responses": ["Blue", "Green", "Purple"]},
         {"query": [{"role": "user", "content": "Say hello in French."}], "responses": ["Bonjour", "Hola"]}]
SETTINGS = {"k": 2, "seed": 5, "max_new_tokens": 24, "force_scores": True}
KEY = "test-key-7"


@pytest.fixture(scope="module")
def server(default_model_dir):
    with serving.server(default_model_dir, "--max-new-tokens", "24", "--force-scores", "--k", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(default_model_dir):
    """A server with a key, a Meta RM (the backbone with a fresh head), grouped /get_reward and a short request
    timeout."""
    with serving.server(default_model_dir, "--api-key", KEY, "--group-size", "2", "--group-timeout", "30",
                        "--meta-rm", str(default_model_dir),
                        "--max-new-tokens", "16", "--force-scores", "--request-timeout", "10") as srv:
        yield srv


def post(srv, route: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{srv.url}{route}", json=body, timeout=120, **kwargs)


def metric(srv, name: str, headers=None) -> float:
    text = httpx.get(f"{srv.url}/metrics", headers=headers, timeout=30).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_every_route_answers_in_its_documented_shape(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    r = post(server, "/v1/score", {"items": ITEMS[:2], **SETTINGS, "return_samples": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "judgements", "usage"} and len(body["judgements"]) == 2
    for item, j in zip(ITEMS, body["judgements"]):
        assert set(j) == {"rewards", "best", "num_valid", "samples"} and len(j["rewards"]) == len(item["responses"])
        assert j["num_valid"] == 2 and 0 <= j["best"] < len(item["responses"])
        assert all(2 <= x <= 20 for x in j["rewards"])  # forced: 2 valid samples, each score in 1..10
        assert len(j["samples"]) == 2
        for s in j["samples"]:
            assert set(s) == {"text", "scores", "valid", "principles", "critique", "order", "meta_score", "num_tokens"}
            assert sorted(s["order"]) == list(range(len(item["responses"]))) and s["valid"] and s["num_tokens"] > 0
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert chat.status_code == 200, chat.text
    c = chat.json()
    assert c["object"] == "chat.completion" and len(c["choices"]) == 1
    assert c["choices"][0]["message"]["role"] == "assistant" and c["choices"][0]["finish_reason"] in ("stop", "length")
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("spct_requests_total", "spct_request_duration_seconds_bucket", "spct_queue_depth", "spct_running_rows",
                 "spct_kv_blocks", "spct_prefix_hit_tokens_total", "spct_tokens_per_second"):
        assert name in text, name
    assert metric(server, 'spct_requests_total{route="/v1/score",status="200"}') >= 1


def test_v1_score_equals_offline_spct_score(server, default_model_dir, tmp_path):
    """The same items, k, seed and settings through `spct score` (its own process state, the CLI's batches) and
    through the server: the same rewards, best and num_valid, exactly."""
    from spct.cli import main

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    out = tmp_path / "out.jsonl"
    main(["score", "--input", str(items), "--output", str(out), "--k", "2", "--seed", "5", "--max-new-tokens", "24",
          "--force-scores", "--batch-size", "2", "--model", str(default_model_dir)])
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    r = post(server, "/v1/score", {"items": ITEMS, **SETTINGS})
    assert r.status_code == 200, r.text
    online = r.json()["judgements"]
    assert [(j["rewards"], j["best"], j["num_valid"]) for j in online] == \
        [(o["rewards"], o["best"], o["num_valid"]) for o in offline]


def test_get_reward_takes_openrlhf_payload_and_gives_one_reward_per_query(server):
    prompts = ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"] * 2 + \
              ["<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"]
    responses = ["4<|im_end|>", "5<|im_end|>", "Blue<|im_end|>"]
    r = post(server, "/get_reward", {"query": [p + x for p, x in zip(prompts, responses)], "prompts": prompts,
                                     "labels": ["", "", ""]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert len(body["rewards"]) == 3 and body["scores"] == body["rewards"]
    assert all(math.isfinite(x) and 2 <= x <= 20 for x in body["rewards"])
    assert body["extra_logs"] == {"num_valid": [2, 2, 2], "group_size": [1, 1, 1]}
    # pointwise: each response judged alone as item 0 (the trailing EOS text cut off), so /v1/score agrees
    alone = post(server, "/v1/score", {"items": [{"query": prompts[2], "responses": ["Blue"]}], "k": 2, "seed": 0})
    assert body["rewards"][2] == alone.json()["judgements"][0]["rewards"][0]


def test_chat_completions_with_n_and_a_seed_give_the_same_samples_on_every_call(server):
    req = {"messages": [{"role": "user", "content": "Write one short sentence about rivers."}], "n": 4, "seed": 11,
           "temperature": 0.9, "top_p": 0.95, "max_tokens": 12}
    counted = ("spct_prefill_tokens_total", "spct_prefix_hit_tokens_total")
    before = [metric(server, m) for m in counted]
    first = post(server, "/v1/chat/completions", req).json()
    computed, hit = (metric(server, m) - b for m, b in zip(counted, before))
    assert computed + hit == first["usage"]["prompt_tokens"] and computed > 0  # the 4 samples share one prefill
    second = post(server, "/v1/chat/completions", req).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert texts == [c["message"]["content"] for c in second["choices"]]
    assert len(set(texts)) > 1
    other = post(server, "/v1/chat/completions", {**req, "seed": 12}).json()
    assert [c["message"]["content"] for c in other["choices"]] != texts
    stopped = post(server, "/v1/chat/completions", {**req, "n": 1, "stop": [" "]}).json()
    assert " " not in stopped["choices"][0]["message"]["content"]


GOOD = {"items": [{"query": "What is 1 + 1?", "responses": ["2"]}], "k": 1, "max_new_tokens": 8}
BAD = [  # (route, body: a JSON value, or bytes sent as they are; status; the field the message names)
    ("/v1/score", b'{"items": [{"query": "x",', 400, "JSON"),
    ("/v1/score", b"", 422, "body"),
    ("/v1/score", {"k": 1}, 422, "items"),
    ("/v1/score", {"items": [{"query": "x"}]}, 422, "items[0].responses"),
    ("/v1/score", {"items": [{"query": "x", "responses": "a"}]}, 422, "items[0].responses"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "k": "2"}, 422, "k"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "force_scores": 1}, 422, "force_scores"),
    ("/v1/score", {"items": [{"query": "x", "responses": []}]}, 422, "items[0].responses"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "k": 0}, 422, "k"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "k": 65}, 400, "k"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "max_new_tokens": 5000}, 400, "max_new_tokens"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}] * 257}, 400, "items"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "k_meta": 1}, 400, "k_meta"),
    ("/v1/score", {"items": [{"query": "x " * 9000, "responses": ["a"]}]}, 400, "items[0]"),
    ("/v1/score", {"items": [{"query": "x", "responses": ["a"]}], "top": 1}, 422, "top"),
    ("/get_reward", {"query": ["ab"], "prompts": ["zz"]}, 400, "query[0]"),
    ("/get_reward", {"query": ["ab"], "prompts": ["a", "b"]}, 400, "prompts"),
    ("/get_reward", {"query": []}, 422, "query"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 422, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 100}, 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 422, "top_p"),
    ("/v1/score", {"items": [{"query": [{"role": "tool", "content": "x"}], "responses": ["a"]}]}, 422,
     "items[0].query[0].role"),
    ("/v1/score", {"items": [{"query": 7, "responses": ["a"]}]}, 422, "a string or a list of chat messages"),
    ("/v1/score/", {"items": [{"query": "x", "responses": ["a"]}]}, 404, "/v1/score"),
]


@pytest.mark.parametrize("route,body,status,field", BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gets_its_status_and_names_the_field_and_the_server_goes_on(server, route, body, status, field):
    if isinstance(body, bytes):
        r = httpx.post(f"{server.url}{route}", content=body, headers={"content-type": "application/json"},
                       timeout=60)
    else:
        r = post(server, route, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and "\n" not in error["message"] and field in error["message"], error
    good = post(server, "/v1/score", GOOD)
    assert good.status_code == 200 and good.json()["judgements"][0]["num_valid"] == 1


def test_an_oversized_body_gets_413_and_the_server_goes_on(server):
    big = {"items": [{"query": "x" * (9 << 20), "responses": ["a"]}]}
    r = post(server, "/v1/score", big)
    assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]["message"]
    assert post(server, "/v1/score", GOOD).status_code == 200


def test_a_wrong_or_missing_key_gets_401_and_health_needs_none(keyed):
    assert httpx.get(f"{keyed.url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = post(keyed, "/v1/score", GOOD, headers=headers)
        assert r.status_code == 401 and "key" in r.json()["error"]["message"].lower(), r.text
        assert KEY not in r.text
    assert httpx.get(f"{keyed.url}/metrics").status_code == 401
    ok = post(keyed, "/v1/score", GOOD, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text


def test_grouped_get_reward_judges_a_prompts_responses_together_across_requests(keyed):
    """--group-size 2: two requests, one response each of the same prompt, are judged as one listwise item."""
    import concurrent.futures

    auth = {"Authorization": f"Bearer {KEY}"}
    prompt = "What is the capital of Italy?\n"
    bodies = [{"query": [prompt + x], "prompts": [prompt]} for x in ("Rome", "Paris")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda b: post(keyed, "/get_reward", b, headers=auth), bodies))
    assert all(r.status_code == 200 for r in got), [r.text for r in got]
    rewards = [r.json()["rewards"][0] for r in got]
    assert [r.json()["extra_logs"]["group_size"] for r in got] == [[2], [2]]
    together = post(keyed, "/v1/score", {"items": [{"query": prompt, "responses": ["Rome", "Paris"]}], "k": 1,
                                         "seed": 0, "max_new_tokens": 16, "force_scores": True}, headers=auth)
    arrived = together.json()["judgements"][0]["rewards"]
    assert rewards in (arrived, arrived[::-1])  # judged in arrival order, whichever request came first


def test_a_request_over_its_timeout_gets_504_and_its_samples_stop(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    long = {"items": [{"query": "Tell a very long story.", "responses": ["Once", "Upon"]}], "k": 8,
            "max_new_tokens": 2000, "force_scores": False}
    r = post(keyed, "/v1/score", long, headers=auth)
    assert r.status_code == 504 and "--request-timeout" in r.json()["error"]["message"], r.text
    deadline = time.monotonic() + 10
    while metric(keyed, "spct_running_rows", auth) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(keyed, "spct_running_rows", auth) == 0


def test_a_client_that_disconnects_cancels_its_work(server):
    long = {"items": [{"query": "Tell a very long story.", "responses": ["Once", "Upon"]}], "k": 8,
            "max_new_tokens": 2000, "force_scores": False}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/score", json=long, timeout=2.0)
    deadline = time.monotonic() + 10
    while metric(server, "spct_running_rows") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "spct_running_rows") == 0
    assert post(server, "/v1/score", GOOD).status_code == 200


def test_k_meta_votes_the_samples_the_meta_rm_rates_best(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = post(keyed, "/v1/score", {"items": ITEMS[:1], "k": 3, "k_meta": 1, "max_new_tokens": 16,
                                  "return_samples": True}, headers=auth)
    assert r.status_code == 200, r.text
    j = r.json()["judgements"][0]
    metas = [s["meta_score"] for s in j["samples"]]
    assert j["num_valid"] == 1 and all(isinstance(m, float) for m in metas)
    best = max(range(3), key=lambda i: metas[i])  # the one voted: its scores are the rewards
    assert j["rewards"] == j["samples"][best]["scores"]
