"""What every command checks before it loads a model, and how a failure reaches the user.

A command first checks its numbers, then its paths (inputs exist and can be read, the output location can be
written: a temporary file is created and removed there), then its input records and its model names, and only then
loads a model. Every failure is one line on stderr, ``spct <command>: <what was wrong, where, and what is
allowed>``, with exit code 1 (2 for a malformed command line); ``--debug`` shows the traceback instead. A command
that fails leaves no empty output behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from spct._atomic import check_writable

__all__ = ["HelpFormatter", "Parser", "at_least", "between", "cleanup_on_failure", "describe", "judging", "model",
           "readable", "remove_if_empty", "writable_dir", "writable_file"]


class HelpFormatter(argparse.HelpFormatter):
    """--help shows every option's default (unless the help text already says it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == []
                or default == argparse.SUPPRESS or "default" in text):
            return text
        shown = " ".join(str(x) for x in default) if isinstance(default, (tuple, list)) else default
        return f"{text} (default: {shown})".strip()


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block) and the defaults in --help; subcommands inherit it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def describe(exc: BaseException) -> str:
    """One line for an error: an OSError names its file and the system's reason; a message of several lines keeps
    its first (--debug shows the rest); an error that is not about the input says it is a bug to report."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, (ValueError, TypeError, RuntimeError, OSError)):
        text = str(exc) or type(exc).__name__
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and report it"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    return lines[0] + (" (--debug shows the details)" if len(lines) > 1 else "")


def add_ray_options(p: argparse.ArgumentParser, verb: str) -> None:
    """--ray, --address, --workers, --cpus-per-worker of a batch command (`spct score`, `spct eval`) that can run on
    Ray actors (spct.ray); `verb` says what the actors do ("score", "judge")."""
    p.add_argument("--ray", action="store_true", help=f"{verb} on Ray actors (the ray extra): a local Ray, or the "
                   "cluster at --address; the same output as without")
    p.add_argument("--address", help="with --ray: a running cluster's HOST:PORT (`ray start --head` prints it), "
                   "or 'auto' (default: start a local Ray)")
    p.add_argument("--workers", type=int, help="with --ray: actors, each loading the model once (default: the "
                   "cluster's CPUs over --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="with --ray: CPUs (threads) per actor")


def ray_options(args: argparse.Namespace) -> None:
    """The options of `add_ray_options`: counts of at least 1, and --address and --workers only with --ray."""
    at_least("--workers", args.workers, 1)
    at_least("--cpus-per-worker", args.cpus_per_worker, 1)
    if not args.ray:
        given = [o for o, v in (("--address", args.address), ("--workers", args.workers)) if v is not None]
        if given:
            raise ValueError(f"{given[0]} is for --ray runs: add --ray, or leave {given[0]} out")


def at_least(option: str, value: int | float | None, low: int | float) -> None:
    if value is not None and value < low:
        raise ValueError(f"{option} must be >= {low}, got {value}")


def between(option: str, value: float | None, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    if not (low < value <= high if low_open else low <= value <= high):
        raise ValueError(f"{option} must be in {'(' if low_open else '['}{low}, {high}], got {value}")


def judging(args: argparse.Namespace, k: int) -> None:
    """The numbers `spct score` and `spct eval` share: batch size, tokens, seed, and --k-meta (with --meta-rm, in
    [1, k] for the largest k)."""
    at_least("--batch-size", args.batch_size, 1)
    at_least("--max-new-tokens", args.max_new_tokens, 1)
    at_least("--seed", args.seed, 0)
    if args.k_meta is not None:
        if args.meta_rm is None:
            raise ValueError("--k-meta needs --meta-rm (the Meta RM that picks the samples to vote)")
        between("--k-meta", args.k_meta, 1, k)


def readable(path: str | os.PathLike, option: str, *, folder_ok: bool = False) -> Path:
    """`path` as a Path, after checking that it exists and can be read (a folder only where folder_ok)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: no such file")
    if p.is_dir():
        if folder_ok:
            return p
        raise ValueError(f"{option} {path}: is a folder, expected a file")
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot be read ({exc.strerror})") from None
    return p


def writable_file(path: str | os.PathLike, option: str) -> bool:
    """Check that `path` (a file to write or append to) can be written; returns whether it exists already. Its
    folder must exist: a typo in a folder name is an error, not a new folder."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file name")
    if not p.parent.is_dir():
        what = "is not a folder" if p.parent.exists() else "does not exist (create it first)"
        raise ValueError(f"{option} {path}: the folder {p.parent} {what}")
    try:
        check_writable(p.parent)
        if p.exists():
            os.close(os.open(p, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot be written ({exc.strerror})") from None
    return p.exists()


def writable_dir(path: str | os.PathLike, option: str) -> None:
    """Check that `path` (an output folder, made with its parents when needed) can be made and written in."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {path}: is a file, expected a folder")
    base = p
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{option} {path}: {base} is not a folder")
    try:
        check_writable(base)
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in {base} ({exc.strerror})") from None


def remove_if_empty(folder: Path) -> None:
    """Remove `folder` if nothing but empty folders is in it."""
    if not folder.is_dir():
        return
    for root, _, _ in sorted(os.walk(folder), key=lambda w: -len(w[0])):  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(root)


@contextlib.contextmanager
def cleanup_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """The folders from `folder` up that do not exist yet are removed again if the block raises while they are
    still empty, so a failed command leaves no empty output folder behind (finished work is never removed)."""
    new, p = [], Path(folder)
    while not p.exists() and p != p.parent:
        new.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for made in new:  # deepest first
            remove_if_empty(made)
        raise


def model(name: str, option: str) -> None:
    """A model name (alias, checkpoint folder, .gguf file or Hugging Face id in the local cache) that resolves,
    checked without loading or downloading anything."""
    from spct.engine import models

    try:
        models.check(name)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
