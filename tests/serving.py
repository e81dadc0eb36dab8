"""Starting a real `spct serve` for a test: a subprocess on 127.0.0.1 and a free port, ready once it prints its URL.

    with serving.server(model_dir, "--k", "2") as srv:
        httpx.post(f"{srv.url}/v1/score", json=...)
    srv.proc.returncode  # after the with block: the server was sent SIGTERM and waited for

`srv.stderr_lines()` is what the server printed on stderr so far (read by a thread, so the pipe never fills).
`free_port()` and `pids_titled(title)` serve the tests that start Ray processes (tests/test_ray*.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field

import pytest

READY = re.compile(r"spct serve: listening on (http://\S+)")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def stderr_lines(self) -> list[str]:
        return list(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends sig (if still running) and waits; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"spct serve did not exit within {timeout} s of signal {sig}") from None


def start(model, *args: str, env: dict | None = None, timeout: float = 180.0) -> Server:
    """Starts `python -m spct serve --model model --port 0 *args` and waits for its ready line."""
    cmd = [sys.executable, "-m", "spct", "serve", "--model", str(model), "--port", "0", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env)
    srv = Server(proc)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            srv.lines.append(line.rstrip("\n"))
            m = READY.search(line)
            if m and not ready.is_set():
                srv.url = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if time.monotonic() > deadline:
            break
    if not srv.url:
        srv.stop(signal.SIGKILL)
        tail = "\n".join(srv.lines[-20:])
        pytest.fail(f"spct serve did not become ready within {timeout} s (exit {proc.returncode}):\n{tail}")
    return srv


@contextmanager
def server(model, *args: str, env: dict | None = None, timeout: float = 180.0):
    """A started server (`start`), stopped with SIGTERM at the end of the block."""
    srv = start(model, *args, env=env, timeout=timeout)
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_titled(title: str) -> list[int]:
    """The processes whose command line starts with `title` (a Ray actor's process title, e.g.
    "ray::ServeReplica:spct:Replica")."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title.encode()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
