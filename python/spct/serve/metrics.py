"""GET /metrics: Prometheus text from a registry of the server's own (never the process-global one, so two servers in
one process do not collide).

| metric | kind | what |
| --- | --- | --- |
| spct_requests_total{route,status} | counter | answered requests |
| spct_request_duration_seconds{route} | histogram | time from the request's arrival to its answer |
| spct_requests_in_progress | gauge | requests the server holds (the ones `--max-queue` counts) |
| spct_queue_depth | gauge | engine requests waiting for a slot or KV blocks |
| spct_running_requests, spct_running_rows | gauge | engine requests running; their sequences (samples or prompts) |
| spct_kv_blocks{state=used,free,cached,total} | gauge | the paged KV's blocks |
| spct_prefix_hit_tokens_total, spct_prefill_tokens_total, spct_decode_tokens_total, spct_preemptions_total | counter | the engine's counts |
| spct_tokens_per_second | gauge | prefill plus decode tokens per second of engine step time, since start |
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["CONTENT_TYPE", "ROUTES", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/v1/score", "/get_reward", "/v1/chat/completions", "/health", "/metrics")
disable_created_metrics()  # no *_created series beside each counter and histogram
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class _Engine:
    """Reads the engine's stats at scrape time."""

    def __init__(self, stats: Callable[[], dict], in_progress: Callable[[], int]):
        self.stats, self.in_progress = stats, in_progress

    def collect(self):
        s = self.stats()
        yield GaugeMetricFamily("spct_requests_in_progress", "Requests the server holds", value=self.in_progress())
        yield GaugeMetricFamily("spct_queue_depth", "Engine requests waiting to be scheduled", value=s["waiting"])
        yield GaugeMetricFamily("spct_running_requests", "Engine requests running", value=s["running"])
        yield GaugeMetricFamily("spct_running_rows", "Sequences of the running requests", value=s["running_rows"])
        blocks = GaugeMetricFamily("spct_kv_blocks", "Paged KV blocks by state", labels=["state"])
        for state in ("used", "free", "cached", "total"):
            blocks.add_metric([state], s[f"blocks_{state}"])
        yield blocks
        for name, key in (("prefix_hit_tokens", "prefix_hit_tokens"), ("prefill_tokens", "prefill_tokens"),
                          ("decode_tokens", "decode_tokens"), ("preemptions", "preemptions")):
            yield CounterMetricFamily(f"spct_{name}", f"Engine {name.replace('_', ' ')}", value=s[key])
        yield GaugeMetricFamily("spct_tokens_per_second", "Prefill plus decode tokens per second of step time",
                                value=s["tokens_per_s"])


class Metrics:
    """The server's registry: per-route counters and latency histograms, and the engine's gauges."""

    def __init__(self, engine_stats: Callable[[], dict], in_progress: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("spct_requests", "Answered requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("spct_request_duration_seconds", "Time from arrival to answer", ["route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(_Engine(engine_stats, in_progress))

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
