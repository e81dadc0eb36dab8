"""Loads the native module and decides, per call, whether an op may fall back to its reference."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

def _load() -> ModuleType:
    """spct._C, or the build named by SPCT_NATIVE_LIB (a path to a _C*.so, e.g. a sanitizer build)."""
    path = os.environ.get("SPCT_NATIVE_LIB")
    if not path:
        from spct import _C

        return _C
    spec = importlib.util.spec_from_file_location("spct._C", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ImportError(f"SPCT_NATIVE_LIB={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["spct._C"] = module
    return module


try:
    _module: ModuleType | None = _load()
    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # a source tree without a build: ops fall back to their references
    _module = None
    _IMPORT_ERROR = exc


def strict() -> bool:
    """True when SPCT_STRICT=1: a missing native kernel is an error instead of a silent fallback."""
    return os.environ.get("SPCT_STRICT", "0") not in ("", "0")


BACKENDS = ("auto", "native", "reference")


def native(op: str, device: str = "cpu", backend: str = "auto") -> ModuleType | None:
    """The native module if it should run `op` on `device`, else None (the caller runs the reference).

    backend: "auto" (native when built, else the reference; under SPCT_STRICT=1 a missing kernel is an error),
    "native" (a missing kernel is always an error) or "reference".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return None
    if _module is not None and (device == "cpu" or getattr(_module, "has_cuda", False)):
        return _module
    if backend == "native" or strict():
        why = f"import failed: {_IMPORT_ERROR}" if _module is None else "spct._C was built without CUDA"
        flag = "backend='native'" if backend == "native" else "SPCT_STRICT=1"
        raise RuntimeError(f"{flag} and no native {op} kernel for device {device!r} ({why})")
    return None
