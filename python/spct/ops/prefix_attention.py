"""prefix_attention: decode attention of k samples over ONE shared prompt KV plus each sample's own KV.

GRM prompts (a query and every response) dominate the KV; the k samples of a prompt read its keys and values once
per step instead of k times. Every query row s attends to all tokens of its prompt (prefix_k[indptr[p] :
indptr[p + 1]] with p = prefix_index[s]) and to the first own_len[s] tokens of its own slot own_k[own_index[s]],
softmax over both parts together (the kernels merge per-part results by log-sum-exp). Query head h reads KV head
h // (Hq // Hkv). Backends: reference (`spct.ops.ref.prefix_attention`), C++ (CPU), CUDA and Triton; all agree with
the reference within the dtype's tolerance.
"""

from __future__ import annotations

import math

import torch

from spct import _native
from spct.ops.ref import prefix_attention as ref

BACKENDS = ("auto", "native", "triton", "reference")
DTYPES = (torch.float32, torch.bfloat16)


def _check(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.dtype not in DTYPES:
        got = f"{tuple(q.shape)} {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be a float32 or bfloat16 tensor (S, Hq, D), got {got}")
    rows, heads, dim = q.shape
    for name, t in (("prefix_k", prefix_k), ("prefix_v", prefix_v)):
        if t.dim() != 3 or t.shape[2] != dim:
            raise ValueError(f"{name} must have shape (T, Hkv, D = {dim}), got {tuple(t.shape)}")
    kv_heads = prefix_k.shape[1]
    if prefix_v.shape != prefix_k.shape:
        raise ValueError(f"prefix_v must have prefix_k's shape {tuple(prefix_k.shape)}, got {tuple(prefix_v.shape)}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q's {heads} heads must be a multiple of the {kv_heads} KV heads")
    for name, t in (("own_k", own_k), ("own_v", own_v)):
        if t.dim() != 4 or t.shape[2:] != (kv_heads, dim):
            raise ValueError(f"{name} must have shape (C, M, Hkv = {kv_heads}, D = {dim}), got {tuple(t.shape)}")
    if own_v.shape != own_k.shape:
        raise ValueError(f"own_v must have own_k's shape {tuple(own_k.shape)}, got {tuple(own_v.shape)}")
    for name, t in (("prefix_k", prefix_k), ("prefix_v", prefix_v), ("own_k", own_k), ("own_v", own_v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must match q ({q.dtype} on {q.device}), got {t.dtype} on {t.device}")
    if prefix_indptr.dim() != 1 or prefix_indptr.shape[0] < 1:
        raise ValueError(f"prefix_indptr must have shape (P + 1,), got {tuple(prefix_indptr.shape)}")
    for name, t in (("prefix_index", prefix_index), ("own_index", own_index), ("own_len", own_len)):
        if t.shape != (rows,):
            raise ValueError(f"{name} must have shape (S,) = ({rows},), got {tuple(t.shape)}")
    for name, t in (("prefix_indptr", prefix_indptr), ("prefix_index", prefix_index), ("own_index", own_index),
                    ("own_len", own_len)):
        if t.dtype != torch.int64 or t.device != q.device:
            raise ValueError(f"{name} must be an int64 tensor on {q.device}, got {t.dtype} on {t.device}")


def _check_indices(prefix_indptr, prefix_index, own_index, own_len, prefix_tokens, slots, capacity) -> None:
    """The index values, for the backends that do not check them themselves (the C++ kernel does)."""
    prompts = prefix_indptr.shape[0] - 1
    checks = [
        ("prefix_indptr", prefix_indptr[:1], prefix_indptr[:1] != 0, "must be 0"),
        ("prefix_indptr", prefix_indptr, torch.cat([prefix_indptr[:1] * 0, prefix_indptr.diff()]).lt(0)
         | prefix_indptr.gt(prefix_tokens), f"must be non-decreasing and <= {prefix_tokens} prefix tokens"),
        ("prefix_index", prefix_index, prefix_index.lt(0) | prefix_index.ge(prompts), f"is outside [0, {prompts})"),
        ("own_index", own_index, own_index.lt(0) | own_index.ge(slots), f"is outside [0, {slots})"),
        ("own_len", own_len, own_len.lt(0) | own_len.gt(capacity), f"is outside [0, {capacity}]"),
    ]
    for name, values, bad, allowed in checks:
        where = torch.nonzero(bad)
        if where.shape[0]:
            i = int(where[0, 0])
            raise ValueError(f"{name}[{i}] = {int(values[i])} {allowed}")


def _sizes(q, prefix_k, prefix_indptr, own_k) -> list[int]:
    return [q.shape[0], q.shape[1], prefix_k.shape[1], q.shape[2], prefix_indptr.shape[0] - 1, prefix_k.shape[0],
            own_k.shape[0], own_k.shape[1]]


def run_native_cpu(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len,
                   scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """The C++ kernel on contiguous CPU tensors already checked by `_check` (the engine checks a step's layout once
    and calls this for each layer). The kernel checks the index values itself."""
    out = torch.empty_like(q) if out is None else out
    ptr = torch.Tensor.data_ptr
    _native._module.prefix_attention(
        ptr(q), ptr(prefix_k), ptr(prefix_v), ptr(prefix_indptr), ptr(prefix_index), ptr(own_k), ptr(own_v),
        ptr(own_index), ptr(own_len), ptr(out), _sizes(q, prefix_k, prefix_indptr, own_k), scale,
        q.dtype == torch.bfloat16)
    return out


def _triton_kernel():
    try:
        from spct.ops.triton import prefix_attention as kernels
    except ImportError:
        return None
    return kernels.prefix_attention


def _impl(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_indptr: torch.Tensor,
          prefix_index: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor, own_index: torch.Tensor,
          own_len: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    args = (q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len)
    lib = None if backend == "triton" else _native.native("prefix_attention", q.device.type, backend)
    if lib is not None and not q.is_cuda:
        return run_native_cpu(*args, scale)
    _check_indices(prefix_indptr, prefix_index, own_index, own_len, prefix_k.shape[0], own_k.shape[0],
                   own_k.shape[1])
    if lib is not None:
        out = torch.empty_like(q)
        ptr = torch.Tensor.data_ptr
        with torch.cuda.device(q.device):  # the kernel launches (and allocates its workspace) on the current device
            lib.prefix_attention_cuda(*(ptr(t) for t in args), ptr(out), _sizes(q, prefix_k, prefix_indptr, own_k),
                                      scale, q.dtype == torch.bfloat16,
                                      torch.cuda.current_stream(q.device).cuda_stream)
        return out
    if backend == "triton" or (q.is_cuda and backend == "auto"):
        kernel = _triton_kernel()
        if kernel is not None:
            return kernel(*args, scale)
        if backend == "triton":
            raise RuntimeError("backend='triton' but triton is not installed (pip install 'spct[triton]')")
    return ref.prefix_attention(*args, scale)


_op = torch.library.custom_op("spct::prefix_attention", mutates_args=())(_impl)


@_op.register_fake
def _(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len, scale, backend):
    return torch.empty_like(q)


def prefix_attention(
    q: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_indptr: torch.Tensor,
    prefix_index: torch.Tensor,
    own_k: torch.Tensor,
    own_v: torch.Tensor,
    own_index: torch.Tensor,
    own_len: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode attention over a shared prompt KV plus each row's own KV (module docstring).

    q: (S, Hq, D) float32 or bfloat16, one query per sample row; prefix_k, prefix_v: (T, Hkv, D), the prompts'
    tokens packed one after another; prefix_indptr: (P + 1,) int64, prompt p = tokens [indptr[p], indptr[p + 1]);
    prefix_index: (S,) int64, the prompt of each row; own_k, own_v: (C, M, Hkv, D), per-sample slots of capacity M;
    own_index: (S,) int64, the slot of each row; own_len: (S,) int64, its own tokens (<= M); scale: multiplies
    q . k (default 1 / sqrt(D)); backend: "auto", "native", "triton" or "reference".
    returns: (S, Hq, D) in q's dtype; a row with no token at all gets zeros.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    op = torch.ops.spct.prefix_attention if torch.compiler.is_compiling() else _impl
    c = torch.Tensor.contiguous
    return op(c(q), c(prefix_k), c(prefix_v), c(prefix_indptr), c(prefix_index), c(own_k), c(own_v), c(own_index),
              c(own_len), scale, backend)
