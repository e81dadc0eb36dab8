"""The native module's OpenMP runtime: `release_pool` frees the calling thread's pool of worker threads (why the
engine does: spct/engine/threads.py)."""

from __future__ import annotations

from spct import _native

__all__ = ["release_pool"]


def release_pool() -> bool:
    """Frees the calling thread's OpenMP worker pool (omp_pause_resource_all); its next parallel region makes a new
    one. False where nothing was freed: no native module, or a call from inside a parallel region."""
    native = _native.module()
    if native is None or not hasattr(native, "release_thread_pool"):
        return False
    return bool(native.release_thread_pool())
