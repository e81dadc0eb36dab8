"""The one place that decides which backend runs an op: the native kernel, Triton, or the torch reference.

    backend = dispatch.pick("vote", scores.device, backend)      # "native" | "triton" | "reference"
    lib = dispatch.native()                                     # spct._C, once pick() said "native"
    kernels = dispatch.triton("vote")                           # spct.ops.triton.vote, once pick() said "triton"

Rules (docs/design.md, "The native module and its kernels"), for an op registered in `KERNELS` with the backends it has:
- backend="auto": a CPU tensor runs the C++ kernel; a CUDA tensor runs the CUDA kernel, else the Triton kernel;
  anything else (no kernel for the device, no build) runs the reference.
- backend="native" | "triton" | "reference" forces one; a forced backend that cannot run is an error that says why.
  Triton on a CPU tensor runs only in its interpreter (TRITON_INTERPRET=1, set before triton is imported).
- SPCT_STRICT=1 (set in CI) turns an "auto" fall-back to the reference into an error, when the op has a native
  kernel for that device that did not load. SPCT_STRICT and TRITON_INTERPRET are read once, at the first pick.
Every op module calls `pick` once per call; the engine asks the op (e.g. `prefix_attention.native_cpu`), never
`spct._C` or this module's internals.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

from spct import _native

__all__ = ["BACKENDS", "KERNELS", "check_backend", "native", "native_available", "pick", "strict", "triton"]

BACKENDS = ("auto", "native", "triton", "reference")

# op -> where it has kernels besides its reference: "cpu" (C++), "cuda" (CUDA C++), "triton"
KERNELS: dict[str, frozenset[str]] = {
    "extract_scores": frozenset({"cpu", "cuda"}),
    "layer_ops": frozenset({"cpu"}),
    "linear": frozenset({"cpu"}),
    "paged_attention": frozenset({"cpu", "cuda", "triton"}),
    "philox": frozenset({"cpu", "cuda", "triton"}),
    "prefix_attention": frozenset({"cpu", "cuda", "triton"}),
    "sample": frozenset({"cpu", "cuda", "triton"}),
    "score_group": frozenset({"cpu"}),
    "vote": frozenset({"cpu", "cuda", "triton"}),
}


def strict() -> bool:
    """True when SPCT_STRICT=1: a native kernel that should run but did not load is an error, never a fall-back."""
    return _native.strict()


def check_backend(op: str, backend: str) -> None:
    """A ValueError naming the allowed backends of `op` when `backend` is not one of them."""
    allowed = ("auto", "native", *(("triton",) if "triton" in KERNELS[op] else ()), "reference")
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed} for {op}, got {backend!r}")


def native() -> ModuleType:
    """The loaded native module (spct._C); only valid after `pick` returned "native"."""
    lib = _native.module()
    if lib is None:
        raise RuntimeError(f"spct._C is not loaded ({_native.import_error()})")
    return lib


def native_available(op: str, device: torch.device | str) -> bool:
    """Whether `op` has a native kernel that loaded for `device` (built, and for CUDA compiled with CUDA)."""
    kind = torch.device(device).type
    lib = _native.module()
    if kind not in KERNELS[op] or lib is None:
        return False
    return kind == "cpu" or bool(getattr(lib, "has_cuda", False))


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_why_not(device: torch.device) -> str | None:
    if not _triton_installed():
        return "triton is not installed (pip install 'spct[triton]')"
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return f"a {device.type} tensor needs a CUDA device or TRITON_INTERPRET=1"


def _why_no_native(op: str, device: torch.device) -> str:
    if device.type not in KERNELS[op]:
        return f"{op} has no native kernel for {device.type} tensors"
    if _native.module() is None:
        return f"spct._C failed to import: {_native.import_error()}"
    return "spct._C was built without CUDA"


def pick(op: str, device: torch.device | str, backend: str = "auto") -> str:
    """"native", "triton" or "reference" for running `op` on a tensor on `device` (rules: module docstring)."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    # What decides the answer is the cache key, so a call costs a dictionary look-up (ops call this once per call,
    # and a small call such as score_group's mask costs a few microseconds in all). Raised errors are not cached.
    return _pick(op, kind, backend, *_environment())


@functools.lru_cache(maxsize=1)
def _environment() -> tuple[bool, str | None]:
    """(SPCT_STRICT, TRITON_INTERPRET), read once per process: Triton reads TRITON_INTERPRET once, when it is
    imported, and a read of os.environ costs microseconds on the hot path (measured: 1.8-3.3 us each here)."""
    return strict(), os.environ.get("TRITON_INTERPRET")


@functools.lru_cache(maxsize=None)
def _pick(op: str, kind: str, backend: str, strict_mode: bool, interpret: str | None) -> str:
    check_backend(op, backend)
    device = torch.device(kind)
    if backend == "reference":
        return "reference"
    if backend == "triton":
        why = _triton_why_not(device)
        if why is not None:
            raise RuntimeError(f"backend='triton' for {op}: {why}")
        return "triton"
    if native_available(op, device):
        return "native"
    if backend == "native":
        raise RuntimeError(f"backend='native' for {op}: {_why_no_native(op, device)}")
    if kind == "cuda" and "triton" in KERNELS[op] and _triton_why_not(device) is None:
        return "triton"
    if strict_mode and kind in KERNELS[op]:
        raise RuntimeError(f"SPCT_STRICT=1 and no native {op} kernel for {kind}: {_why_no_native(op, device)}")
    return "reference"


def triton(op: str) -> ModuleType:
    """The Triton kernels of `op` (spct.ops.triton.<op>); imports triton, so only once pick() said "triton"."""
    return importlib.import_module(f"spct.ops.triton.{op}")
