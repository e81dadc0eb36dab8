"""Tensors handed to the native module by address: `view(t)` -> `spct._C.View` (data pointer, dtype name, shape,
strides in elements, device index; -1 for the host). The op wrappers build them after checking the tensors, so
bindings only marshal (csrc/bindings/common.h)."""

from __future__ import annotations

import torch

from spct.ops import dispatch

__all__ = ["view", "views"]


def view(t: torch.Tensor | None):
    """A `spct._C.View` of `t`, or None for None."""
    if t is None:
        return None
    device = t.device.index if t.device.type == "cuda" else -1
    if device is None:
        device = torch.cuda.current_device()
    return dispatch.native().View(t.data_ptr(), str(t.dtype).removeprefix("torch."), list(t.shape), list(t.stride()),
                                  device)


def views(*tensors: torch.Tensor | None) -> list:
    return [view(t) for t in tensors]
