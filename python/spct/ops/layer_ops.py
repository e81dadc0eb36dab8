"""The element-wise steps of a decoder layer between its matmuls, fused: one call each instead of a handful of torch
ops (a 16-row decode step of SmolLM2-135M spent 23 of its 80 ms in those ops).

    h = add_rms_norm(x, delta, weight, eps)      # x += delta in place (delta may be None), h = rms_norm(x)
    q = rope_qkv(qkv, cos, sin, positions, k_cache, v_cache, slots, num_heads, num_kv_heads)
    a = silu_mul(gate_up)                         # silu(gate) * up
    a = gelu_tanh_mul(gate_up)                    # gelu_tanh(gate) * up (Gemma's GeGLU)

The native kernels run for bfloat16 CPU tensors (csrc/cpu/layer_ops.cpp); anything else runs the reference
(`spct.ops.ref.layer_ops`: the torch ops they replace). RoPE and the residual add give the reference's bits; the
norm and the activations equal it to the bfloat16 tolerance (their float32 sums and exp are not torch's).

Checks: these wrappers check dtypes, shapes and contiguity; the RoPE kernel checks every position and slot before it
writes anything (a few integers, in C++: per-layer checks in Python cost more than the op), and the wrapper turns
a bad one into a ValueError naming it.
"""

from __future__ import annotations

import torch

from spct.ops import dispatch
from spct.ops.ref import layer_ops as ref

__all__ = ["add_rms_norm", "gelu_tanh_mul", "native_cpu", "rope_qkv", "silu_mul"]


def native_cpu(x: torch.Tensor) -> bool:
    """Whether x (a layer's activations) goes to the native kernels: bfloat16 on the CPU, spct._C loaded."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and dispatch.pick("layer_ops", x.device) == "native"


def _need(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape or t.dtype != torch.bfloat16 or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous bfloat16 tensor of shape {shape}, got {t.dtype} "
                         f"{tuple(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}")


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (M, H) += delta (M, H) in place when delta is given; returns weight * x / rms(x) (M, H)."""
    if not native_cpu(x):
        if delta is not None:
            x += delta
        return ref.rms_norm(x, weight, eps)
    m, h = x.shape
    _need(x, "x", (m, h))
    _need(weight, "weight", (h,))
    if delta is not None:
        delta = delta.contiguous()  # a matmul's output cut to its columns
        _need(delta, "delta", (m, h))
    out = torch.empty_like(x)
    dispatch.native().add_rms_norm_bf16(x.data_ptr(), 0 if delta is None else delta.data_ptr(), weight.data_ptr(),
                                        float(eps), m, h, out.data_ptr())
    return out


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
             k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, num_heads: int,
             num_kv_heads: int) -> torch.Tensor:
    """qkv (M, (Hq + 2 Hkv) D): RoPE (cos, sin: (P, D)) on q and k at positions (M,); k and v written to
    k_cache[slots], v_cache[slots] (caches viewed as (S, Hkv, D)); returns q (M, Hq, D)."""
    m, d = qkv.shape[0], cos.shape[-1]
    if not native_cpu(qkv):
        x = qkv.view(m, num_heads + 2 * num_kv_heads, d)
        c, s = cos[positions][:, None, :], sin[positions][:, None, :]
        qk = ref.rope(x[:, : num_heads + num_kv_heads], c, s)
        k_cache.view(-1, num_kv_heads, d)[slots] = qk[:, num_heads:]
        v_cache.view(-1, num_kv_heads, d)[slots] = x[:, num_heads + num_kv_heads:]
        return qk[:, :num_heads]
    qkv = qkv.contiguous()
    _need(qkv, "qkv", (m, (num_heads + 2 * num_kv_heads) * d))
    _need(cos, "cos", tuple(cos.shape))
    _need(sin, "sin", tuple(cos.shape))
    num_slots = k_cache.numel() // (num_kv_heads * d)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _need(cache, name, tuple(k_cache.shape))
    for name, t in (("positions", positions), ("slots", slots)):
        if t.dtype != torch.int64 or tuple(t.shape) != (m,) or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous int64 tensor of shape ({m},), got {t.dtype} "
                             f"{tuple(t.shape)}")
    q = torch.empty((m, num_heads, d), dtype=torch.bfloat16)
    bad = dispatch.native().rope_qkv_bf16(qkv.data_ptr(), m, num_heads, num_kv_heads, d, cos.data_ptr(),
                                          sin.data_ptr(), cos.shape[0], positions.data_ptr(), num_slots,
                                          slots.data_ptr(), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr())
    if bad >= 0:
        p, s = int(positions[bad]), int(slots[bad])
        name, value, hi = ("positions", p, cos.shape[0]) if not 0 <= p < cos.shape[0] else ("slots", s, num_slots)
        raise ValueError(f"{name}[{bad}] = {value} is outside [0, {hi})")
    return q


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (M, 2n) = [gate | up] per row -> silu(gate) * up (M, n)."""
    return _gated(gate_up, ref.silu_mul, "silu_mul_bf16")


def gelu_tanh_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (M, 2n) = [gate | up] per row -> gelu(gate, approximate="tanh") * up (M, n): exactly the torch ops
    in float32 (and anywhere else the native kernel does not run), the native kernel's bits in bfloat16 on the CPU."""
    return _gated(gate_up, ref.gelu_tanh_mul, "gelu_tanh_mul_bf16")


def _gated(gate_up: torch.Tensor, reference, kernel: str) -> torch.Tensor:
    if not native_cpu(gate_up):
        return reference(gate_up)
    m, n2 = gate_up.shape
    if n2 % 2:
        raise ValueError(f"gate_up must have an even number of columns, got {n2}")
    gate_up = gate_up.contiguous()
    _need(gate_up, "gate_up", (m, n2))
    out = torch.empty((m, n2 // 2), dtype=torch.bfloat16)
    getattr(dispatch.native(), kernel)(gate_up.data_ptr(), m, n2 // 2, out.data_ptr())
    return out
