"""The FastAPI app of `spct serve`: the routes of docs/serve.md over one GRM (and its online engine).

    app = create_app(grm, Config(k=4), meta_rm=None, api_key=None)

Errors are answered in one shape (`guard.error_body`) with one line naming the field: a body that is not JSON is a
400, a body of the wrong shape a 422 (pydantic, strict types), a value over a server limit a 400, and anything
unexpected a 500 for that request alone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from spct.engine.prompts import prompt_token_ids
from spct.items import ItemError
from spct.serve.guard import Guard, Limits, error_body
from spct.serve.metrics import CONTENT_TYPE, Metrics
from spct.serve.schemas import ChatRequest, RewardRequest, ScoreRequest, one_line, pick
from spct.serve.work import Config, Disconnected, ServeError, State, reward_value

__all__ = ["create_app"]

CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection: logged, never seen by the client


def create_app(grm, config: Config, *, meta_rm=None, api_key: str | None = None) -> FastAPI:
    """The app; state.draining (set on SIGTERM) makes every route but /health answer 503."""
    state = State(grm, config, meta_rm)
    state.metrics = Metrics(grm.engine.stats, lambda: state.in_progress)
    app = FastAPI(title="spct serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # "/v1/score/" is a 404 naming the routes, not a bare redirect
    app.state.spct = state
    _errors(app)
    _routes(app, state)
    app.add_middleware(Guard, state=state, limits=Limits(api_key, config.max_body_bytes, config.max_queue))
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = pick(exc.errors()) or {"loc": ("body",), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx", {}).get("error", "")
            return _error(400, f"the body is not valid JSON ({ctx})" if ctx else "the body is not valid JSON", "body")
        if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
            return _error(422, "the request body is missing: send a JSON object (Content-Type: application/json)",
                          "body")
        param, message = one_line(first)
        return _error(422, message, param)

    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError):
        return _error(exc.status, exc.message, exc.param)

    @app.exception_handler(Disconnected)
    async def gone(request: Request, exc: Disconnected):
        return _error(CLIENT_CLOSED, "the client disconnected; its samples were cancelled")

    @app.exception_handler(404)
    async def missing(request: Request, exc):
        return _error(404, f"no route {request.method} {request.url.path}; the routes are POST /v1/score, "
                           "POST /get_reward, POST /v1/chat/completions, GET /health, GET /metrics")

    @app.exception_handler(405)
    async def method(request: Request, exc):
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        text = str(exc).splitlines()[0] if str(exc) else ""
        return _error(500, f"the request failed: {type(exc).__name__}: {text}; the server goes on serving")


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


def _routes(app: FastAPI, state: State) -> None:
    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/score")
    async def score(body: ScoreRequest, request: Request):
        return await _score(state, body, request)

    @app.post("/get_reward")
    async def get_reward(body: RewardRequest, request: Request):
        return await _get_reward(state, body, request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await _chat(state, body, request)


def _cap(value: int, cap: int, param: str, flag: str) -> int:
    if value > cap:
        raise ServeError(400, f"{param} = {value} is over this server's limit of {cap} ({flag})", param)
    return value


def _json_float(x: float) -> float | None:
    return None if x != x else x


async def _score(state: State, body: ScoreRequest, request: Request) -> dict:
    c = state.config
    _cap(len(body.items), c.max_items, "items", "--max-items")
    k = _cap(c.k if body.k is None else body.k, c.max_k, "k", "--max-k")
    max_new = _cap(c.max_new_tokens if body.max_new_tokens is None else body.max_new_tokens, c.max_tokens,
                   "max_new_tokens", "--max-tokens")
    if body.k_meta is not None and state.meta_rm is None:
        raise ServeError(400, "k_meta needs a Meta RM: start the server with --meta-rm", "k_meta")
    items = [{"query": it.query if isinstance(it.query, str) else [m.model_dump() for m in it.query],
              "responses": list(it.responses)} for it in body.items]
    try:
        judged, pending = await state.score(
            items, request, k=k, seed=body.seed, temperature=c.temperature if body.temperature is None
            else body.temperature, max_new_tokens=max_new, k_meta=body.k_meta,
            force_scores=c.force_scores if body.force_scores is None else body.force_scores,
            reduce=c.reduce if body.reduce is None else body.reduce,
            shuffle="balanced" if body.orders == "balanced" else None)
    except ItemError as e:
        raise ServeError(400, f"items[{e.index}]: {e.detail}", f"items[{e.index}]") from None
    except ValueError as e:
        raise ServeError(400, str(e)) from None
    out = []
    for j in judged:
        one = {"rewards": [_json_float(r) for r in j.rewards], "best": j.best, "num_valid": j.num_valid}
        if body.return_samples:
            one["samples"] = [_sample(s) for s in j.samples]
        out.append(one)
    completion = sum(s.num_tokens for j in judged for s in j.samples)
    return {"model": c.model_name, "judgements": out,
            "usage": {"prompt_tokens": pending.prompt_tokens, "completion_tokens": completion}}


def _sample(s) -> dict:
    return {"text": s.text, "scores": [_json_float(x) for x in s.scores], "valid": s.valid,
            "principles": [[t, w] for t, w in s.principles], "critique": s.critique, "order": s.order,
            "meta_score": s.meta_score, "num_tokens": s.num_tokens}


def _responses(state: State, body: RewardRequest) -> list[tuple[str, str]]:
    """(prompt, response) of each query: the query with its prompt cut off, and a trailing EOS text cut off."""
    prompts = body.prompts
    if prompts is None:
        raise ServeError(422, "prompts: required field missing (OpenRLHF sends the prompt of each query)", "prompts")
    if len(prompts) != len(body.query):
        raise ServeError(400, f"prompts has {len(prompts)} entries for {len(body.query)} queries; give one prompt "
                              "per query", "prompts")
    _cap(len(body.query), state.config.max_items, "query", "--max-items")
    eos = state.grm.tokenizer.eos_token
    pairs = []
    for i, (q, p) in enumerate(zip(body.query, prompts)):
        if not q.startswith(p):
            raise ServeError(400, f"query[{i}] does not start with prompts[{i}] (a query is the prompt followed by "
                                  "the response)", f"query[{i}]")
        response = q[len(p):]
        if eos and response.endswith(eos):
            response = response[: -len(eos)]
        pairs.append((p, response))
    return pairs


async def _get_reward(state: State, body: RewardRequest, request: Request) -> dict:
    c = state.config
    pairs = _responses(state, body)
    try:
        if state.groups is not None:
            got = await asyncio.wait_for(asyncio.gather(*(_grouped(state, i, p, r) for i, (p, r) in
                                                          enumerate(pairs))), c.request_timeout + c.group_timeout)
        else:
            judged, _ = await state.score([(p, [r]) for p, r in pairs], request, indices=[0] * len(pairs), k=c.k,
                                          temperature=c.temperature, seed=c.seed, max_new_tokens=c.max_new_tokens,
                                          force_scores=c.force_scores, reduce=c.reduce)
            got = [(j.rewards[0], j.num_valid, 1) for j in judged]
    except ItemError as e:
        raise ServeError(400, f"query[{e.index}]: {e.detail}", f"query[{e.index}]") from None
    except TimeoutError:
        raise ServeError(504, f"the request took longer than {c.request_timeout:g} s (--request-timeout)") from None
    rewards = [reward_value(r, c.invalid_reward) for r, _, _ in got]
    return {"rewards": rewards, "scores": list(rewards),
            "extra_logs": {"num_valid": [n for _, n, _ in got], "group_size": [g for _, _, g in got]}}


async def _grouped(state: State, i: int, prompt: str, response: str) -> tuple[float, int, int]:
    """query[i]'s reward from its group; an error judging the group names query[i]."""
    try:
        return await state.groups.reward(prompt, response)
    except ItemError as e:
        raise ServeError(400, f"query[{i}]: {e.detail}", f"query[{i}]") from None


async def _chat(state: State, body: ChatRequest, request: Request) -> dict:
    c = state.config
    for name in ("stream", "logprobs"):
        if getattr(body, name):
            raise ServeError(400, f"{name} = true is not supported by spct serve (send {name}: false)", name)
    for name in ("tools", "tool_choice", "functions", "response_format"):
        if (body.model_extra or {}).get(name) not in (None, [], {}):
            raise ServeError(400, f"{name} is not supported by spct serve", name)
    n = _cap(body.n, c.max_k, "n", "--max-k")
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = _cap(c.max_new_tokens if asked is None else asked, c.max_tokens, param, "--max-tokens")
    seed = secrets.randbits(63) if body.seed is None else body.seed
    messages = [m.model_dump() for m in body.messages]
    engine = state.engine
    try:
        ids = await state.tokenizing(prompt_token_ids, engine.tokenizer, [messages], engine.vocab_size,
                                     engine.context)
        ids = ids[0]
        handle = engine.submit(ids, k=n, seed=seed, temperature=body.temperature, top_p=body.top_p,
                               max_new_tokens=max_tokens, stop=() if body.stop is None else body.stop)
    except ItemError as e:
        raise ServeError(400, f"messages: {e.detail}", "messages") from None
    except ValueError as e:
        raise ServeError(400, str(e)) from None
    (samples,) = await state.wait([handle], lambda: engine.cancel(handle), request)
    choices = [{"index": s.index, "message": {"role": "assistant", "content": s.text},
                "finish_reason": s.finish_reason, "logprobs": None} for s in samples]
    completion = sum(len(s.token_ids) for s in samples)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": c.model_name, "choices": choices, "system_fingerprint": None,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                      "total_tokens": len(ids) + completion}}
