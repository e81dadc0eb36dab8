"""What every request passes before a route sees it, as one ASGI middleware: the metrics of its answer, the API key,
the body limit and the admission limit.

In order: a server that is shutting down answers 503; every route but /health needs `Authorization: Bearer KEY`
when the server has a key (401); a POST body over the limit is refused before it is read in full (413); a work route
(`WORK`) is admitted only while fewer than `max_queue` requests are in progress (429 with Retry-After). The body is
read here and replayed to the route, and after it the connection's own messages pass through, so a route can still
see the client disconnect.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass

__all__ = ["WORK", "Guard", "Limits", "error_body"]

WORK = ("/v1/score", "/get_reward", "/v1/chat/completions")


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """The error shape of every route: OpenAI's (and vLLM's) {"error": {message, type, param, code}}."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            405: "invalid_request_error",
            413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
            503: "service_unavailable", 504: "timeout_error"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass
class Limits:
    api_key: str | None
    max_body_bytes: int
    max_queue: int
    retry_after_s: int = 1


class Guard:
    """The ASGI middleware (see the module docstring). state: the server's `State` (in_progress, draining,
    metrics)."""

    def __init__(self, app, state, limits: Limits):
        self.app, self.state, self.limits = app, state, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope["path"], [500]

        async def tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted = False
        try:
            refusal = self._refusal(scope, path)
            if refusal is None and scope["method"] == "POST":
                scope = _as_json(scope)
                body, refusal = await self._body(scope, receive)
                if refusal is None:
                    receive = _replay(body, receive)
            if refusal is None and path in WORK:
                if self.state.in_progress >= self.limits.max_queue:
                    refusal = (429, f"{self.state.in_progress} requests are in progress, the most this server "
                                    f"takes (--max-queue {self.limits.max_queue}); retry after "
                                    f"{self.limits.retry_after_s} s", None)
                else:
                    admitted = True
                    self.state.in_progress += 1
            if refusal is not None:
                retry = self.limits.retry_after_s if refusal[0] in (429, 503) else None
                await _respond(tracked, *refusal, retry_after=retry)
                return
            await self.app(scope, receive, tracked)
        finally:
            if admitted:
                self.state.in_progress -= 1
            self.state.metrics.observe(path, status[0], time.perf_counter() - start)

    def _refusal(self, scope, path: str) -> tuple[int, str, str | None] | None:
        if self.state.draining and path != "/health":
            return 503, "the server is shutting down", None
        key = self.limits.api_key
        if key is None or path == "/health":
            return None
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not auth:
            return 401, "missing Authorization header: this server needs 'Authorization: Bearer <key>'", None
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            return 401, "wrong API key in the Authorization header ('Bearer <key>' with the server's key)", None
        return None

    async def _body(self, scope, receive) -> tuple[bytes, tuple | None]:
        """The whole body, or a 413 as soon as it is known to be over the limit."""
        limit = self.limits.max_body_bytes
        too_big = (413, f"the request body is over the limit of {limit} bytes (--max-body-mb)", None)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "the client disconnected before sending the whole body", None)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _as_json(scope):
    """The body is read as JSON whatever its Content-Type says (`curl -d` sends a form type)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _respond(send, status: int, message: str, param: str | None, retry_after: int | None = None) -> None:
    payload = json.dumps(error_body(status, message, param)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
