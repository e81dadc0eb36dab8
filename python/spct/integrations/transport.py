"""JSON over HTTP to one or more `spct serve` servers, with retries and round-robin balancing (httpx, imported when
first needed: it is in the `serve` extra).

The retry policy is one generator free of I/O (`Transport.exchange`), driven by a blocking loop (`post`) and an
async one (`apost`), so the two cannot drift apart:
- call i starts at urls[i % len(urls)]; every failed attempt moves on to the next URL;
- connection errors, timeouts and the statuses in RETRY are retried, up to max_retries times. Within a pass over
  the URLs the next one is tried at once; pass p >= 1 (0 is the first) starts after backoff * 2**(p - 1) s (at most
  MAX_BACKOFF, plus up to 10% jitter), or after the longest `Retry-After` of the pass before, if longer (at most
  MAX_RETRY_AFTER). With one URL, retry r (1, 2, ...) waits backoff * 2**(r - 1) seconds;
- any other status (redirects included: they are not followed) raises at once, ValueError below 500 and
  RuntimeError from 500, in one line with the URL, the status and the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import numbers
import random
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

__all__ = ["MAX_BACKOFF", "MAX_RETRY_AFTER", "RETRY", "Transport", "check_urls", "load_httpx"]

RETRY = frozenset({429, 502, 503, 504})  # busy, a bad gateway, shutting down, timed out: worth another try
MAX_BACKOFF = 30.0  # seconds: the longest backoff between passes
MAX_RETRY_AFTER = 60.0  # seconds: the longest Retry-After honoured (a broken header must not stall training)
CONNECT_TIMEOUT = 10.0  # seconds to open a connection: a dead host is skipped long before the read timeout


def load_httpx():
    try:
        import httpx
    except ImportError:
        raise ImportError("spct's remote reward functions need httpx: pip install 'spct[serve]'") from None
    return httpx


def check_urls(url) -> tuple[str, ...]:
    """url (a server's root URL), a sequence of them or one string of them separated by commas -> the roots without a
    trailing slash."""
    if isinstance(url, str):
        urls = [u.strip() for u in url.split(",") if u.strip()] or [url]
    else:
        urls = [url] if isinstance(url, bytes) or not hasattr(url, "__iter__") else list(url)
    if not urls:
        raise ValueError("url must be a server's root URL (http://HOST:PORT) or a list of them, got an empty list")
    out = []
    for u in urls:
        parts = urlsplit(u) if isinstance(u, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment:
            raise ValueError(f"url must be http://HOST:PORT or https://HOST:PORT (a server's root), got {u!r}")
        root = u.rstrip("/")
        if root.endswith("/v1/score"):
            raise ValueError(f"url must be the server's root, without the route: got {u!r}, "
                             f"pass {root[:-len('/v1/score')]!r}")
        out.append(root)
    return tuple(out)


def _number(name: str, value, low: float, *, integer: bool = False, above: bool = False):
    kind = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if not kind or isinstance(value, bool) or not math.isfinite(value) or value < low or (above and value == low):
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>' if above else '>='} {low:g}, got {value!r}")
    return int(value) if integer else float(value)


def retry_after(response) -> float:
    """The response's Retry-After in seconds (a number or an HTTP date), 0 without one, at most MAX_RETRY_AFTER."""
    value = response.headers.get("retry-after")
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0


def server_message(response) -> str:
    """The server's error message (`{"error": {"message": ...}}`), else its body, on one line."""
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    text = " ".join(str(message if message is not None else response.text).split())
    return (text[:497] + "...") if len(text) > 500 else text or response.reason_phrase


class Transport:
    """POSTs JSON bodies to the servers at urls (their roots) and returns the JSON replies; see the module docstring.
    timeout: seconds for a whole request (connecting: at most CONNECT_TIMEOUT). The clients are made on first use
    (one blocking client; one async client per event loop) and are not pickled."""

    def __init__(self, url, *, api_key: str | None = None, timeout: float = 600.0, max_retries: int = 5,
                 backoff: float = 0.5):
        self.urls = check_urls(url)
        if api_key is not None and not isinstance(api_key, str):
            raise ValueError(f"api_key must be a string or None, got {type(api_key).__name__}")
        self.api_key = api_key or None
        self.timeout = _number("timeout", timeout, 0, above=True)
        self.max_retries = _number("max_retries", max_retries, 0, integer=True)
        self.backoff = _number("backoff", backoff, 0)
        load_httpx()
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._turn = 0
        self._client = None
        self._aclient: tuple | None = None  # (the event loop, its AsyncClient)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_client", "_aclient")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    def _options(self) -> dict:
        httpx = load_httpx()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"headers": headers, "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT))}

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = load_httpx().Client(**self._options())
            return self._client

    def aclient(self):
        """The async client of the running event loop (an AsyncClient cannot move between loops)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._aclient is None or self._aclient[0] is not loop:
                self._aclient = (loop, load_httpx().AsyncClient(**self._options()))
            return self._aclient[1]

    def delay(self, rounds: int, retry_after: float) -> float:
        """Seconds before starting pass `rounds` + 1 over the URLs: the backoff with jitter, or Retry-After."""
        wait = min(self.backoff * 2**rounds, MAX_BACKOFF) * (1 + 0.1 * random.random())
        return max(wait, retry_after)

    def exchange(self, path: str):
        """The retry policy, without I/O: yields (seconds to wait, url) for each attempt and is sent the attempt's
        outcome (an httpx.Response, or the httpx.TransportError it raised); returns the reply's JSON."""
        with self._lock:
            start, self._turn = self._turn, self._turn + 1
        n, later, last = len(self.urls), 0.0, ""
        for attempt in range(self.max_retries + 1):
            url = self.urls[(start + attempt) % n] + path
            wait = self.delay(attempt // n - 1, later) if attempt and attempt % n == 0 else 0.0
            later = 0.0 if attempt % n == 0 else later
            outcome = yield wait, url
            if isinstance(outcome, Exception):
                last = f"{url}: {type(outcome).__name__} {' '.join(str(outcome).split())}".rstrip()
                continue
            if 200 <= outcome.status_code < 300:
                try:
                    return outcome.json()
                except ValueError:
                    raise RuntimeError(f"spct server {url} answered {outcome.status_code} with a body that is not "
                                       f"JSON: {server_message(outcome)}") from None
            last = f"{url}: {outcome.status_code} {server_message(outcome)}"
            if outcome.status_code not in RETRY:
                hint = " (pass api_key=, or set SPCT_API_KEY)" if outcome.status_code == 401 else ""
                raise (ValueError if outcome.status_code < 500 else RuntimeError)(f"spct server {last}{hint}")
            later = max(later, retry_after(outcome))
        tries = self.max_retries + 1
        raise RuntimeError(f"spct: POST {path} gave up after {tries} attempt{'s' if tries > 1 else ''} (max_retries = "
                           f"{self.max_retries}); the last: {last}")

    def post(self, path: str, body: dict):
        """POST body as JSON to `path` of the servers, with the retries of `exchange`; returns the reply's JSON."""
        transport_error = load_httpx().TransportError
        policy = self.exchange(path)
        wait, url = next(policy)
        while True:
            if wait:
                time.sleep(wait)
            try:
                outcome = self.client().post(url, json=body)
            except transport_error as e:  # connection errors and timeouts
                outcome = e
            try:
                wait, url = policy.send(outcome)
            except StopIteration as done:
                return done.value

    async def apost(self, path: str, body: dict):
        """`post` for an event loop."""
        transport_error = load_httpx().TransportError
        policy = self.exchange(path)
        wait, url = next(policy)
        while True:
            if wait:
                await asyncio.sleep(wait)
            try:
                outcome = await self.aclient().post(url, json=body)
            except transport_error as e:  # connection errors and timeouts
                outcome = e
            try:
                wait, url = policy.send(outcome)
            except StopIteration as done:
                return done.value

    def close(self) -> None:
        """Closes the blocking client (a later call makes a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Closes the async client of the running event loop (a later call makes a new one); a client of another
        loop is dropped (its connections cannot be closed from this loop)."""
        with self._lock:
            pair, self._aclient = self._aclient, None
        if pair is not None and pair[0] is asyncio.get_running_loop():
            await pair[1].aclose()
