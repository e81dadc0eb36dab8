"""Running the app under uvicorn: the ready line, and a graceful stop on SIGTERM or Ctrl-C.

On the signal the server stops accepting connections, /health and new requests on open connections answer 503,
the requests in flight finish (at most `shutdown_timeout` seconds; then their samples are cancelled and they are
answered 503), the engine stops, and `run` returns (the CLI then exits 0). uvicorn's own handler would re-raise the signal after its shutdown, which ends
the process with the signal's status; `_Server` keeps the graceful exit instead.
"""

from __future__ import annotations

import signal
import sys
import threading

import uvicorn

from spct.serve.app import create_app
from spct.serve.work import Config

__all__ = ["load", "run"]

GRACE_MARGIN_S = 5.0  # uvicorn waits this much past the cut-off for the cancelled requests' 503s to go out


class _Server(uvicorn.Server):
    """uvicorn's server with spct's drain: on the signal, /health and new requests answer 503; after
    `shutdown_timeout` seconds the engine's unfinished requests are cancelled, so their handlers answer 503 while
    uvicorn still waits for them (its own grace period is `GRACE_MARGIN_S` longer)."""

    def __init__(self, config: uvicorn.Config, state, shutdown_timeout: float):
        super().__init__(config)
        self.spct_state, self.shutdown_timeout = state, shutdown_timeout
        self.cutoff: threading.Timer | None = None

    def handle_exit(self, sig: int, frame) -> None:
        self.spct_state.draining = True
        if self.cutoff is None:
            self.cutoff = threading.Timer(self.shutdown_timeout, self.spct_state.engine.shutdown)
            self.cutoff.daemon = True
            self.cutoff.start()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for the requests in flight
        else:
            self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"spct serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)


def load(model: str, *, dtype: str = "bfloat16", max_batch: int = 256, kv_cache_mb: float | None = None,
         meta_rm: str | None = None):
    """(GRM on the online engine, Meta RM or None) of `spct serve --model ... --meta-rm ...`; a ValueError naming
    --model for a model the online engine does not run."""
    import spct

    engine = spct.Engine.from_pretrained(model, dtype=dtype, max_batch=max_batch, kv_cache_mb=kv_cache_mb)
    if not hasattr(engine.runner, "new_paged_kv"):
        raise ValueError(f"--model {model}: spct serve needs the online engine, which runs the Llama family; "
                         f"this model runs on transformers ({engine.runner.why})")
    grm = spct.GenerativeRewardModel(engine)
    return grm, None if meta_rm is None else spct.MetaRewardModel.from_pretrained(meta_rm, dtype=dtype)


def run(grm, config: Config, *, host: str = "127.0.0.1", port: int = 8000, meta_rm=None, api_key: str | None = None,
        shutdown_timeout: float = 30.0, log_level: str = "warning", access_log: bool = False) -> None:
    """Serves until SIGTERM or Ctrl-C, then drains (see the module docstring)."""
    app = create_app(grm, config, meta_rm=meta_rm, api_key=api_key)
    uv = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                        timeout_graceful_shutdown=shutdown_timeout + GRACE_MARGIN_S, lifespan="off")
    server = _Server(uv, app.state.spct, shutdown_timeout)
    try:
        server.run()
    finally:
        if server.cutoff is not None:
            server.cutoff.cancel()
        grm.engine.shutdown()
