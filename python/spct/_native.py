"""Loads the native module and decides, per call, whether an op may fall back to its reference."""

from __future__ import annotations

import os
from types import ModuleType

try:
    from spct import _C as _module

    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # a source tree without a build: ops fall back to their references
    _module = None
    _IMPORT_ERROR = exc


def strict() -> bool:
    """True when SPCT_STRICT=1: a missing native kernel is an error instead of a silent fallback."""
    return os.environ.get("SPCT_STRICT", "0") not in ("", "0")


def native(op: str, device: str = "cpu") -> ModuleType | None:
    """The native module if it has `op` for `device`, else None (or RuntimeError under SPCT_STRICT=1)."""
    if _module is not None and (device == "cpu" or getattr(_module, "has_cuda", False)):
        return _module
    if strict():
        why = f"import failed: {_IMPORT_ERROR}" if _module is None else "spct._C was built without CUDA"
        raise RuntimeError(f"SPCT_STRICT=1 and no native {op} kernel for device {device!r} ({why})")
    return None
