r"""sample: one token per row of (N, V) logits with temperature, top-k, top-p and min-p; exact argmax at T = 0.

Semantics (every backend - torch reference, C++, CUDA, Triton - gives the same token, bit for bit)
--------------------------------------------------------------------------------------------------
Row r has logits l (float32; bfloat16 converts exactly), m = max(l), and its own parameters.
  T = 0     the token is argmax(l), the lowest index on ties; top_k, top_p, min_p, seed and offset are unused.
  weights   T > 0: w_i = exp_weight((l_i - m) / T) in float32, subtraction and division correctly rounded, exp by
            a fixed Cephes recipe (csrc/include/spct/sample.h, within 1 ulp of exp). w_i = 0 where
            (l_i - m) / T < -80 (under 2e-35 of the top token) and for -inf logits; the top token has w = 1.
            So w is softmax(l / T) up to normalization ("probabilities computed in float32").
  masses    q_i = floor(w_i * 2^40), int64 (0 below 2^-40 = 1e-12 of the top token). Every sum below is an exact
            integer sum, so no summation order (sequential, tree, atomics) changes a token.
  order     (logit desc, index asc): equal logits go to the lower index first.
  top-k     K = the first k tokens of the order; k = 0 or k >= V keeps all.
  top-p     P = the tokens of K whose mass ahead in the order (q summed over the K-tokens before them) passes
            float64(ahead) < float64(top_p) * float64(q summed over K) - the shortest prefix of K whose mass,
            renormalized over K, reaches top_p; never empty. top_p = 1 keeps all of K (no comparison).
  min-p     keeps w_i >= min_p (float32 compare), i.e. p_i >= min_p * p_max since the top token has w = 1.
  kept      K and P and min-p and q_i > 0: never empty (the first token of the order is in it).
  draw      bits = (word 0 of Philox4x32-10(counter=(offset lo, offset hi, 0, 0), key=(seed lo, seed hi))) >> 8,
            u = bits * 2^-24 in [0, 1), S = q summed over kept; the token is the first kept token in ascending
            INDEX order whose running sum of q exceeds u * S (computed exactly: running > floor(bits * S / 2^24)).
            The index-order draw keeps the kernels free of sorting.
seed and offset are 64-bit per row (ints in [-2^63, 2^64), taken modulo 2^64; e.g. offset = decoding step), so a
row's token depends on its logits, parameters, seed and offset only: not on N, its position or the backend.

Dispatch: `spct.ops.dispatch.pick("sample", device, backend)` - CPU tensor -> C++ kernel, else the reference;
CUDA tensor -> CUDA kernel, else Triton, else the reference (the torch code of ops/ref/sample.py, on the tensor's
device). backend="native" | "triton" | "reference" forces one (Triton on a CPU tensor needs TRITON_INTERPRET=1).
SPCT_STRICT=1 makes falling back to the reference an error. A CUDA call syncs once, to check the per-row status.
`philox_uniform` (the op "philox": the draw's uniforms alone) dispatches the same way.

Who checks what:
- this wrapper: the arguments - logits' shape, dtype, vocabulary size and row layout (a copy when rows are not
  unit-stride), each parameter's type, length and range (on its value and its float32 rounding);
- the kernels: the logits values, which they read anyway - each row's status (NaN, +inf, all -inf), raised here
  for the first bad row;
- the bindings (csrc/bindings/sample.cpp): nothing, they marshal (host: numpy arrays; CUDA: Views).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch

from spct.ops import _views, dispatch
from spct.ops.ref import sample as ref

MAX_VOCAB = 1 << 23  # q sums stay below 2^63
Scalar = Any  # a number, a sequence of N numbers, or an (N,) or 0-d tensor


# ---- parameters --------------------------------------------------------------------------------------------
# Python scalars are checked in Python and broadcast with torch.full (a few microseconds each); sequences and
# tensors are checked with torch reductions (a CUDA tensor costs a sync).
def _as_tensor(value: Scalar, name: str, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(rows,) tensor on `device` from a sequence or a tensor (0-d broadcasts); `dtype` for sequences."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=dtype)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != rows):
        raise ValueError(f"{name} has shape {tuple(t.shape)} for {rows} rows; give a scalar or one value per row")
    return t.to(device=device).expand(rows)


def _is_scalar(value: Scalar) -> bool:
    return value.dim() == 0 if isinstance(value, torch.Tensor) else not hasattr(value, "__len__")


def _first_bad(bad: torch.Tensor, values: torch.Tensor, name: str, allowed: str, scalar: bool) -> None:
    if bool(bad.any()):
        r = int(torch.nonzero(bad).flatten()[0])
        where = "" if scalar else f" at row {r}"
        raise ValueError(f"{name} must be {allowed}, got {values[r].item()}{where}")


INF = float("inf")
# name: (test on float64 values - Python floats or tensors -, what is allowed)
_FLOAT_RULES = {
    "temperature": (lambda v: (abs(v) < INF) & (v >= 0), "finite and >= 0"),
    "top_p": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
    "min_p": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
}


@functools.lru_cache(maxsize=256)
def _filled(value: float | int, dtype: torch.dtype, rows: int, device: torch.device) -> torch.Tensor:
    """(rows,) of a scalar parameter, made once per value, dtype, shape and device (no kernel writes to its
    parameters). Why: an engine step passes the same temperature, top_k, top_p, min_p and seed every step, and
    torch.full took about 20 us each there."""
    return torch.full((rows,), value, dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _float_scalar(v: float, name: str, rows: int, device: torch.device) -> torch.Tensor:
    """_float_param of a Python real, checked and made once per value (an error is raised again on every call)."""
    ok, allowed = _FLOAT_RULES[name]
    if not (ok(v) and ok(float(torch.tensor(v, dtype=torch.float32)))):
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return _filled(v, torch.float32, rows, device)


def _float_param(value: Scalar, name: str, rows: int, device: torch.device) -> torch.Tensor:
    """(rows,) float32; the rule is checked on the value given and on its float32 rounding (1e-50 -> 0)."""
    ok, allowed = _FLOAT_RULES[name]
    if not isinstance(value, torch.Tensor) and _is_scalar(value):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real number, got {value!r}") from None
        return _float_scalar(v, name, rows, device)
    t = _as_tensor(value, name, rows, torch.float64, device)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    wide, narrow = t.double(), t.float()
    _first_bad(~ok(wide) | ~ok(narrow.double()), wide, name, allowed, _is_scalar(value))
    return narrow.contiguous()


def _to_int(v: Any, name: str, wrap: bool) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {v!r}") from None
    if not wrap:
        return min(i, (1 << 63) - 1)  # top_k beyond int64 means "all", like any k >= V
    if not -(1 << 63) <= i < (1 << 64):
        raise ValueError(f"{name} must be in [-2^63, 2^64), got {i}")
    return i - (1 << 64) if i >= (1 << 63) else i  # the same 64 bits as int64


def _int_param(value: Scalar, name: str, rows: int, device: torch.device, wrap: bool = True) -> torch.Tensor:
    """(rows,) int64. wrap: 64-bit values (seed, offset) taken modulo 2^64."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
    elif _is_scalar(value):
        return _filled(_to_int(value, name, wrap), torch.int64, rows, device)
    else:
        value = torch.tensor([_to_int(v, name, wrap) for v in value], dtype=torch.int64)
    return _as_tensor(value, name, rows, torch.int64, device).to(torch.int64).contiguous()


def _params(rows: int, device: torch.device, temperature: Scalar, top_k: Scalar, top_p: Scalar, min_p: Scalar,
            seed: Scalar, offset: Scalar) -> tuple[torch.Tensor, ...]:
    """The six per-row parameter tensors, checked: temperature, top_p, min_p float32; top_k, seed, offset int64."""
    floats = {name: _float_param(value, name, rows, device)
              for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p))}
    k = _int_param(top_k, "top_k", rows, device, wrap=False)
    if isinstance(top_k, torch.Tensor) or not _is_scalar(top_k):
        _first_bad(k < 0, k, "top_k", ">= 0 (0 = off)", _is_scalar(top_k))
    elif operator.index(top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    return (floats["temperature"], k, floats["top_p"], floats["min_p"], _int_param(seed, "seed", rows, device),
            _int_param(offset, "offset", rows, device))


def _check_logits(logits: Any) -> torch.Tensor:
    x = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)
    if x.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, V), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"logits must be float32 or bfloat16, got {x.dtype}")
    vocab = x.shape[1]
    if vocab == 0 and x.shape[0] > 0:
        raise ValueError("logits has an empty vocabulary (V = 0): no token to sample")
    if vocab >= MAX_VOCAB:
        raise ValueError(f"logits has V = {vocab} tokens; at most {MAX_VOCAB - 1} are supported")
    rows_ok = (x.stride(1) == 1 or vocab <= 1) and x.stride(0) >= 0  # the kernels step rows by stride(0)
    return x.detach() if rows_ok else x.detach().contiguous()


# ---- backends ------------------------------------------------------------------------------------------------
def _native_cpu(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, Any]:
    bf16 = x.dtype == torch.bfloat16
    array = x.view(torch.int16).numpy() if bf16 else x.numpy()
    temperature, top_k, top_p, min_p, seed, offset = (p.numpy() for p in params)
    tokens, status = dispatch.native().sample(logits=array, bf16=bf16, temperature=temperature, top_k=top_k,
                                              top_p=top_p, min_p=min_p, seed=seed, offset=offset)
    return torch.from_numpy(tokens), status  # a numpy status: checking it costs no torch op


def _native_cuda(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    status = torch.empty(x.shape[0], dtype=torch.int32, device=x.device)
    temperature, top_k, top_p, min_p, seed, offset = _views.views(*params)
    dispatch.native().sample_cuda(
        logits=_views.view(x), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
        offset=offset, tokens=_views.view(tokens), status=_views.view(status),
        stream=torch.cuda.current_stream(x.device).cuda_stream)
    return tokens, status


def _triton(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch.triton("sample").sample(x, *params)  # imports triton: only when asked for


def _reference(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return ref.sample(x, *params)


_MESSAGES = {ref.NAN: "contains NaN", ref.POSINF: "contains +inf", ref.ALL_NEGINF: "is all -inf: no token to sample"}


def _raise_for_status(status: Any) -> None:
    """status: (N,) int32, a tensor or a numpy array."""
    if bool(status.any()):  # on CUDA: the one sync of a call
        r = int(status.nonzero()[0][0])
        raise ValueError(f"logits row {r} {_MESSAGES[int(status[r])]}")


def _sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, backend: str) -> torch.Tensor:
    """logits: (N, V) float32/bfloat16, rows contiguous; temperature, top_p, min_p: (N,) float32; top_k, seed,
    offset: (N,) int64, all on logits' device and checked. returns: (N,) int64."""
    if logits.shape[0] == 0:
        return logits.new_empty(0, dtype=torch.int64)
    kind = dispatch.pick("sample", logits.device, backend)
    run = {"native": _native_cpu if logits.device.type == "cpu" else _native_cuda, "triton": _triton,
           "reference": _reference}[kind]
    tokens, status = run(logits, (temperature, top_k, top_p, min_p, seed, offset))
    _raise_for_status(status)
    return tokens


@torch.library.custom_op("spct::sample", mutates_args=())
def _sample_op(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, backend: str) -> torch.Tensor:
    """The sampler as a torch op (arguments: `_sample`), for torch.compile graphs."""
    return _sample(logits, temperature, top_k, top_p, min_p, seed, offset, backend)


@_sample_op.register_fake
def _(logits, temperature, top_k, top_p, min_p, seed, offset, backend):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)


def sample(logits: torch.Tensor, *, temperature: Scalar = 1.0, top_k: Scalar = 0, top_p: Scalar = 1.0,
           min_p: Scalar = 0.0, seed: Scalar = 0, offset: Scalar = 0, backend: str = "auto") -> torch.Tensor:
    """One token per row (semantics: module docstring).

    logits: (N, V) float32 or bfloat16, CPU or CUDA. Each parameter is a scalar or one value per row (a sequence
    or an (N,) tensor): temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), top_p in (0, 1] (1 = off),
    min_p in [0, 1) (0 = off), seed and offset 64-bit integers (the Philox key and counter).
    backend: "auto", "native", "triton" or "reference".
    returns: (N,) int64 on logits' device.
    """
    x = _check_logits(logits)
    dispatch.pick("sample", x.device, backend)  # a bad backend fails before the parameters are looked at
    params = _params(x.shape[0], x.device, temperature, top_k, top_p, min_p, seed, offset)
    if torch.compiler.is_compiling():
        return torch.ops.spct.sample(x, *params, backend)
    # Eager calls skip the op dispatcher: 15 us of the 45 us a small call costs on this machine (measured).
    return _sample(x, *params, backend)


def philox_uniform(seed: Scalar, offset: Scalar = 0, *, backend: str = "auto") -> torch.Tensor:
    """The sampler's uniforms u = bits * 2^-24 (module docstring; the op "philox") for seeds and offsets (scalars or
    1-D, broadcast against each other). returns: (n,) float32, on the device of a tensor argument (else the CPU)."""
    device = next((v.device for v in (seed, offset) if isinstance(v, torch.Tensor)), torch.device("cpu"))
    lengths = [len(v) for v in (seed, offset) if not _is_scalar(v)]
    n = max(lengths, default=1)
    seed_t, offset_t = _int_param(seed, "seed", n, device), _int_param(offset, "offset", n, device)
    kind = dispatch.pick("philox", device, backend)
    if kind == "reference":
        return ref.philox_uniform(seed_t, offset_t)
    if kind == "triton":
        return dispatch.triton("philox").philox_uniform(seed_t, offset_t)
    lib = dispatch.native()
    if device.type == "cpu":
        return torch.from_numpy(lib.philox_uniform(seed=seed_t.numpy(), offset=offset_t.numpy()))
    out = torch.empty(n, dtype=torch.float32, device=device)
    lib.philox_uniform_cuda(seed=_views.view(seed_t), offset=_views.view(offset_t), out=_views.view(out),
                            stream=torch.cuda.current_stream(device).cuda_stream)
    return out
