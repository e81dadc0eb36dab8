"""Atomic writes, the only place in the package that creates temporary files or renames: every file (or directory)
is written under a temporary name beside its target, flushed and fsynced, then renamed over the target and the
folder fsynced, so a reader (or a resumed run) sees the old content or the new, never half of it. A writer that
raises leaves no temporary behind.

Temporary names start with ``.tmp-`` (``.tmp-{name}.{random}{suffix}``, the target's suffix kept so that writers
which pick a format from the extension still work); a directory that holds them may remove any ``.tmp-*`` entry
left by a killed process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_PREFIX", "append_lines", "atomic_dir", "atomic_file", "check_writable", "complete_lines", "fsync_path",
           "remove_tree", "scratch_dir", "write_bytes", "write_json", "write_jsonl", "write_text"]

TMP_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` for a writer that takes a file name (safetensors, savefig); when the
    block ends it is fsynced and renamed over `path`; when the block raises it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes it 0600, and writers that replace the file (safetensors) do too; the result is as readable
        # as any other output
        os.chmod(tmp, 0o644)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, record) -> Path:
    return write_text(path, json.dumps(record, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, records) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def remove_tree(path: str | os.PathLike) -> None:
    """Rename a directory out of sight first (atomic), then delete it: a process killed while deleting leaves only a
    ``.tmp-`` directory, never a half-deleted one under the real name."""
    path = Path(path)
    hidden = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}old-{path.name}."))
    os.replace(path, hidden / path.name)  # into a fresh hidden folder: never collides with a leftover
    shutil.rmtree(hidden)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def _swap_in(tmp: Path, path: Path, keep_existing: bool) -> Path | None:
    """Rename `tmp` to `path`; returns the hidden folder holding the old `path` (to delete), if there was one."""
    if keep_existing:
        try:
            os.replace(tmp, path)  # succeeds onto a missing or empty directory
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished `path` first: keep its copy
        return None
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}old-{path.name}."))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    return old


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory beside `path` (mode 0755) to fill; when the block ends, every file in it
    is fsynced and it is renamed to `path`; when the block raises it is removed and `path` is untouched.
    An existing `path` is first renamed out of sight, then deleted; with keep_existing, a non-empty `path` (another
    process finished it first, e.g. a shared cache) is kept and ours discarded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the result is as readable as any other output
    try:
        yield tmp
        _fsync_tree(tmp)
        old = _swap_in(tmp, path, keep_existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str = "spct-") -> Iterator[Path]:
    """A private temporary directory for intermediate files (downloads, unpacking), removed when the block ends:
    nothing in it is a result, so it is neither fsynced nor renamed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Append whole lines, fsynced, all or nothing: a write that fails part-way (disk full, file size limit, I/O
    error) is cut back to the file's previous end before the error propagates, and a kill leaves at most a torn
    last line, which `complete_lines` cuts off."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (it does at a file size limit)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike) -> None:
    """Raise the OSError a write into `folder` would meet (missing, not a folder, read-only, no space for a file
    entry), by creating and removing an empty temporary file there; nothing is left behind."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}probe.")
    os.close(fd)
    os.unlink(tmp)


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
