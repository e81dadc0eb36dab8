"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed over it, so a reader
(or a resumed run) sees the old content or the new, never half of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["append_lines", "complete_lines", "write_json", "write_jsonl", "write_text"]


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, record) -> Path:
    return write_text(path, json.dumps(record, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, records) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """One write of whole lines, fsynced: a kill leaves at most a torn last line, which `complete_lines` cuts off."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_lines(path: str | os.PathLike) -> list[str]:
    """The whole, non-empty lines of an append-only file (none if it does not exist); a torn last line (the writer
    was killed mid-write) is truncated away so that appends continue on a line boundary."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return [line for line in data[:end].decode("utf-8").splitlines() if line.strip()]
