"""Loads the native module (spct._C, or the build named by SPCT_NATIVE_LIB) once; `spct.ops.dispatch` decides per
call which backend runs an op."""

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


def module() -> ModuleType | None:
    """The loaded native module, or None when it failed to import (see `import_error`)."""
    return _module


def import_error() -> ImportError | None:
    """Why the native module did not load (None when it did)."""
    return _IMPORT_ERROR


def strict() -> bool:
    """True when SPCT_STRICT=1: a missing native kernel is an error instead of a silent fallback."""
    return os.environ.get("SPCT_STRICT", "0") not in ("", "0")
