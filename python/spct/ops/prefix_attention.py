"""prefix_attention: decode attention of k samples over ONE shared prompt KV plus each sample's own KV.

GRM prompts (a query and every response) dominate the KV; the k samples of a prompt read its keys and values once
per step instead of k times. Every query row s attends to all tokens of its prompt (prefix_k[indptr[p] :
indptr[p + 1]] with p = prefix_index[s]) and to the first own_len[s] tokens of its own slot own_k[own_index[s]],
softmax over both parts together (the kernels merge per-part results by log-sum-exp). Query head h reads KV head
h // (Hq // Hkv). Backends: reference (`spct.ops.ref.prefix_attention`), C++ (CPU), CUDA and Triton; all agree with
the reference within the dtype's tolerance; `spct.ops.dispatch.pick` chooses (CPU: C++; CUDA: CUDA, else Triton;
else the reference).

Two entry points: `prefix_attention(...)`, one call; `Plan(indices...).run(q, k, v, ...)`, the calls of one step
that share their rows (the layers of a decode step), checked at the first call and then run at once.

Who checks what:
- this wrapper: the arguments - types, dtypes, shapes, devices, scale, backend, head_dim for a native kernel
  (`_check`) - and, for every backend but the C++ kernel, the index values (`_check_indices`; on CUDA a sync, once
  per Plan);
- the C++ kernel (csrc/cpu/prefix_attention.cpp): the index values, on every call, worded as `_check_indices`
  words them (the same first bad index);
- the bindings (csrc/bindings/prefix_attention.cpp): nothing, they marshal addresses and sizes;
- the CUDA and Triton kernels: nothing (the wrapper checked the index values).
"""

from __future__ import annotations

import math

import torch

from spct.ops import dispatch
from spct.ops.ref import prefix_attention as ref

__all__ = ["DTYPES", "HEAD_DIMS", "Plan", "native_cpu", "prefix_attention"]

BACKENDS = dispatch.BACKENDS
DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (32, 64, 128, 256)  # the head sizes the C++ and CUDA kernels are compiled for


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _scale(scale: float | None, dim: int) -> float:
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


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


def native_cpu() -> bool:
    """Whether CPU tensors run the C++ kernel under backend="auto" (the engine sizes its prefill chunks by it)."""
    return dispatch.native_available("prefix_attention", "cpu")


class Plan:
    """prefix_attention for calls that share their rows: the layers of a decode step (or of a prefill chunk).

        plan = Plan(prefix_indptr, prefix_index, own_index, own_len, scale=scale)   # once per step
        out = plan.run(q, prefix_k, prefix_v, own_k, own_v)                        # per layer -> (S, Hq, D)

    The index tensors, scale and backend are `prefix_attention`'s; they must not change while the plan is used.
    The first `run` checks what `prefix_attention` checks (the index values too, except on the C++ path whose
    kernel checks them on every call) and binds the native layout; a later call whose tensors have the same shapes,
    dtypes and devices goes straight to the kernel (any other is checked again).
    """

    def __init__(self, prefix_indptr: torch.Tensor, prefix_index: torch.Tensor, own_index: torch.Tensor,
                 own_len: torch.Tensor, *, scale: float | None = None, backend: str = "auto"):
        _check_backend(backend)
        if scale is not None:
            _scale(scale, 1)
        c = torch.Tensor.contiguous
        self._index = (c(prefix_indptr), c(prefix_index), c(own_index), c(own_len))
        self._scale_arg, self._backend = scale, backend
        self._key = None

    @classmethod
    def _checked(cls, index: tuple, scale: float, backend: str) -> Plan:
        """A plan on contiguous index tensors, scale and backend that `prefix_attention` has checked."""
        plan = cls.__new__(cls)
        plan._index, plan._scale_arg, plan._backend, plan._key = index, scale, backend, None
        return plan

    def run(self, q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, own_k: torch.Tensor,
            own_v: torch.Tensor) -> torch.Tensor:
        """q: (S, Hq, D); prefix_k, prefix_v: (T, Hkv, D); own_k, own_v: (C, M, Hkv, D) -> (S, Hq, D)."""
        c = torch.Tensor.contiguous
        q, prefix_k, prefix_v, own_k, own_v = c(q), c(prefix_k), c(prefix_v), c(own_k), c(own_v)
        key = (q.shape, q.dtype, q.device, prefix_k.shape, prefix_k.dtype, prefix_k.device, prefix_v.shape,
               prefix_v.dtype, prefix_v.device, own_k.shape, own_k.dtype, own_k.device, own_v.shape, own_v.dtype,
               own_v.device)
        if key != self._key:
            indptr, index, slots, lengths = self._index
            _check(q, prefix_k, prefix_v, indptr, index, own_k, own_v, slots, lengths)
            self._bind(q, prefix_k, own_k)
            self._key = key
        return self._run(q, prefix_k, prefix_v, own_k, own_v)

    def _bind(self, q: torch.Tensor, prefix_k: torch.Tensor, own_k: torch.Tensor) -> None:
        """Chooses the backend for tensors shaped like these (already checked) and prepares it."""
        indptr, index, slots, lengths = self._index
        rows, heads, dim = q.shape
        cuda = q.is_cuda
        self.scale = _scale(self._scale_arg, dim)
        backend = dispatch.pick("prefix_attention", q.device, self._backend)
        if backend == "native" and dim not in HEAD_DIMS:
            raise ValueError(f"head_dim {dim} has no {'CUDA' if cuda else 'CPU'} kernel "
                             f"(built: {', '.join(map(str, HEAD_DIMS))})")
        if backend != "native" or cuda:
            _check_indices(indptr, index, slots, lengths, prefix_k.shape[0], own_k.shape[0], own_k.shape[1])
        if backend == "native":
            self._lib = dispatch.native()
            # positional, in the binding's order (keywords cost ~3 us a call, a fifth of the one-shot overhead)
            self._layout = self._lib.PrefixAttentionLayout(
                indptr.data_ptr(), index.data_ptr(), slots.data_ptr(), lengths.data_ptr(),  # prefix_indptr,
                # prefix_index, own_index, own_len; then rows, heads, kv_heads, head_dim, prompts, prefix_tokens,
                # slots, capacity, scale, bf16
                rows, heads, prefix_k.shape[1], dim, indptr.shape[0] - 1, prefix_k.shape[0], own_k.shape[0],
                own_k.shape[1], self.scale, q.dtype == torch.bfloat16)
            self._run = self._run_cuda if cuda else self._run_cpu
        elif backend == "triton":
            self._kernel = dispatch.triton("prefix_attention").prefix_attention
            self._run = self._run_other
        else:
            self._kernel = ref.prefix_attention
            self._run = self._run_other

    def _run_cpu(self, q, prefix_k, prefix_v, own_k, own_v) -> torch.Tensor:
        out = torch.empty_like(q)
        self._lib.prefix_attention(self._layout, q.data_ptr(), prefix_k.data_ptr(), prefix_v.data_ptr(),
                                   own_k.data_ptr(), own_v.data_ptr(), out.data_ptr())
        return out

    def _run_cuda(self, q, prefix_k, prefix_v, own_k, own_v) -> torch.Tensor:
        out = torch.empty_like(q)
        with torch.cuda.device(q.device):  # the kernel launches (and allocates its workspace) on the current device
            self._lib.prefix_attention_cuda(self._layout, q.data_ptr(), prefix_k.data_ptr(), prefix_v.data_ptr(),
                                            own_k.data_ptr(), own_v.data_ptr(), out.data_ptr(),
                                            torch.cuda.current_stream(q.device).cuda_stream)
        return out

    def _run_other(self, q, prefix_k, prefix_v, own_k, own_v) -> torch.Tensor:
        indptr, index, slots, lengths = self._index
        return self._kernel(q, prefix_k, prefix_v, indptr, index, own_k, own_v, slots, lengths, self.scale)


def _impl(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_indptr: torch.Tensor,
          prefix_index: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor, own_index: torch.Tensor,
          own_len: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    plan = Plan._checked((prefix_indptr, prefix_index, own_index, own_len), scale, backend)
    plan._bind(q, prefix_k, own_k)  # the arguments were checked by prefix_attention()
    return plan._run(q, prefix_k, prefix_v, own_k, own_v)


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
    _check_backend(backend)
    _check(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len)
    scale = _scale(scale, q.shape[2])
    op = torch.ops.spct.prefix_attention if torch.compiler.is_compiling() else _impl
    c = torch.Tensor.contiguous
    return op(c(q), c(prefix_k), c(prefix_v), c(prefix_indptr), c(prefix_index), c(own_k), c(own_v), c(own_index),
              c(own_len), scale, backend)
