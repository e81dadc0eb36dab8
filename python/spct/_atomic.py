"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed over it, so a reader
(or a resumed run) sees the old content or the new, never half of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["write_json", "write_jsonl", "write_text"]


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
