"""paged_attention: attention of query rows over KV stored in a paged cache, described by shared segments.

The online engine keeps each layer's KV in blocks of a fixed number of tokens. What several rows share (a GRM
query read by every response order, an order's suffix read by its k samples) is stored once, and this op reads it
once per step for all those rows: today's `prefix_attention` optimisation with any number of levels.

Layout (the index tensors are int32, as block tables are in vLLM and FlashInfer: half the bytes of int64 and what
a CUDA kernel indexes with; `causal` is bool; all of them the same for every layer of a step):

    k_cache, v_cache   (N, B, Hkv, D)  N blocks of B tokens each; token i of block b is [b, i]
    segment s          seg_len[s] tokens, in order, in the blocks block_ids[seg_block_indptr[s] :
                       seg_block_indptr[s + 1]], exactly ceil(seg_len[s] / B) of them (the last one may be partial;
                       a segment starts at the start of its first block), read by the distinct rows
                       seg_rows[seg_row_indptr[s] : seg_row_indptr[s + 1]]
    row r              q[r]: (Hq, D); attends to every token of every segment that lists it, with ONE softmax over
                       all of them (per-segment partial results merged by log-sum-exp); query head h reads KV head
                       h // (Hq // Hkv)
    causal (optional)  causal[s] True: token i of segment s sits at position seg_start[s] + i, and row r sees it only
                       if that position is <= q_pos[r]; a non-causal segment is seen whole
    window (optional)  window = W >= 1 (needs causal, q_pos and seg_start): token i of EVERY segment s, causal or not,
                       sits at position seg_start[s] + i, and row r sees it only if that position is > q_pos[r] - W
                       (besides the causal rule): a row sees itself and the W - 1 tokens before it at most, as
                       transformers' sliding window (Mistral, Gemma 2/3's local layers); blocks wholly before a row's
                       window are not read for it
    softcap (optional) softcap = c > 0: each score x = scale * (q . k) becomes c * tanh(x / c) before the softmax
                       (Gemma 2's attn_logit_softcapping)

Every row must see at least one token (within its window). The segments of one row should not overlap (a token in
two of them counts twice; not checked). Levels of sharing are just segments: a GRM decode step whose rows are the k
samples of a few response orders has one segment for the shared query (every row), one per order for that order's
suffix (its samples) and one per sample for its own tokens. A prefill chunk of C tokens of one sequence is C rows
(q_pos their positions) over its cached context (non-causal segments, shareable) and one causal segment holding the
context's partial last block and the chunk's own tokens (seg_start: its first token's position; the chunk's K and V
are written into the cache before the call).

Why a CSR of rows per segment rather than FlashInfer's multi-level cascade (per level, contiguous query ranges and
one block table each, a fixed number of levels): the rows of a continuous batch are not sorted by sharing group
(samples join and leave at any step, and one row is grouped by query and by order at once), and a row may be in
any number of segments, so the engine never reorders rows and never pads levels. A kernel works segment by segment:
it loads a segment's blocks once, computes all its rows, and merges each row's partial output and log-sum-exp.

Backends: the reference (`spct.ops.ref.paged_attention`), the C++ kernel (csrc/cpu/paged_attention*.{cpp,h}; three
builds, `CPU_KERNELS`: for bfloat16 with head_dim % 32 == 0 and block_size % 16 == 0, AMX tiles where the CPU has
AMX-BF16, else AVX-512 BF16 pair products where it has those, chosen by `cpu_kernel` once per process like the bf16
linear's; else float32 vector code of the widest instruction set), the CUDA kernel (csrc/cuda/paged_attention.cu;
head sizes `HEAD_DIMS` for both, any block size; under "auto" another head size runs the reference) and the Triton
kernel (spct.ops.triton.paged_attention); `spct.ops.dispatch.pick` chooses. The kernels follow one rule the
reference does not need (csrc/include/spct/paged_attention.h): a row's output is an online softmax over its blocks,
one update per block, in the order of its segments and of their blocks, so a row's bits depend only on q[r], the
blocks it sees and how many tokens of each: not on the other rows, on how its blocks are split into segments, or on
the thread count. They agree with the reference within the tolerance table. window and softcap run on the C++ kernel
(CPU) and the reference only: under "auto" such a call on CUDA runs the reference, and backend "triton" or "native"
on CUDA refuses them.

Two entry points, as for prefix_attention: `paged_attention(...)`, one call; `Plan(indices...).run(q, k_cache,
v_cache)`, the calls of one step that share the layout (its layers), checked at the first call, which also makes the
C++ kernel's layout (the index addresses and sizes) once. This wrapper checks everything (types, dtypes, shapes,
devices, scale, backend, head_dim for the C++ kernel) and, for the other backends, the index values
(`_check_indices`, a sync on CUDA); the C++ kernel checks the index values itself on every call, worded the same
way, so the same bad value gets the same message whichever backend runs.
"""

from __future__ import annotations

import math
import numbers

import torch

from spct.ops import dispatch
from spct.ops.ref import paged_attention as ref

__all__ = ["CPU_KERNELS", "DTYPES", "HEAD_DIMS", "Plan", "cpu_kernel", "native_cpu", "paged_attention"]

OP = "paged_attention"
DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (8, 16, 32, 64, 128, 256)  # the head sizes the C++ kernel is compiled for
# the C++ kernel's builds: AMX tiles and AVX-512 BF16 pair products (bfloat16), or float32 on the widest vectors
CPU_KERNELS = ("amx", "avx512bf16", "vector")
INDEX = ("block_ids", "seg_block_indptr", "seg_len", "seg_row_indptr", "seg_rows", "causal", "q_pos", "seg_start")


def _scale(scale: float | None, dim: int) -> float:
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _options(window, softcap, index: tuple) -> tuple[int, float]:
    """window and softcap checked, as an int and a float (0: none)."""
    if window is None:
        window = 0
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or not 0 <= window < 2**31:
        raise ValueError(f"window must be an int in [1, 2**31 - 1] (None or 0: no window), got {window!r}")
    if softcap is None:
        softcap = 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not (math.isfinite(softcap)
                                                                                    and softcap >= 0):
        raise ValueError(f"softcap must be finite and > 0 (None or 0: none), got {softcap!r}")
    if window and any(t is None for t in index[5:]):
        raise ValueError("window needs causal, q_pos and seg_start (every segment's token positions; causal may be "
                         "all False)")
    return int(window), float(softcap)


def _describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check_tensors(q, k_cache, v_cache) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.dtype not in DTYPES:
        raise ValueError(f"q must be a float32 or bfloat16 tensor (R, Hq, D), got {_describe(q)}")
    heads, dim = q.shape[1:]
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] < 1 or t.shape[3] != dim:
            raise ValueError(f"{name} must have shape (N, B >= 1, Hkv, D = {dim}), got {_describe(t)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must match q ({q.dtype} on {q.device}), got {t.dtype} on {t.device}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    kv_heads = k_cache.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q's {heads} heads must be a multiple of the {kv_heads} KV heads")


def _check_layout(index: tuple, rows: int, device: torch.device) -> None:
    """The index tensors' types, shapes and devices (not their values)."""
    named = dict(zip(INDEX, index))
    given = [name for name in ("causal", "q_pos", "seg_start") if named[name] is not None]
    if given and len(given) < 3:
        raise ValueError(f"causal, q_pos and seg_start go together, got only {', '.join(given)}")
    if not isinstance(named["seg_len"], torch.Tensor) or named["seg_len"].dim() != 1:
        raise ValueError(f"seg_len must be a 1-D int32 tensor on {device}, got {_describe(named['seg_len'])}")
    segments = named["seg_len"].shape[0]
    shapes = {"seg_block_indptr": ("S + 1", segments + 1), "seg_row_indptr": ("S + 1", segments + 1),
              "causal": ("S", segments), "seg_start": ("S", segments), "q_pos": ("R", rows)}
    for name, t in named.items():
        if t is None:
            continue
        dtype = torch.bool if name == "causal" else torch.int32
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != dtype or t.device != device:
            raise ValueError(f"{name} must be a 1-D {str(dtype)[6:]} tensor on {device}, got {_describe(t)}")
        if name in shapes and t.shape[0] != shapes[name][1]:
            symbol, size = shapes[name]
            raise ValueError(f"{name} must have shape ({symbol},) = ({size},), got {tuple(t.shape)}")


def _first_bad(name: str, values: torch.Tensor, bad: torch.Tensor, allowed: str) -> None:
    where = torch.nonzero(bad)
    if where.shape[0]:
        i = int(where[0, 0])
        raise ValueError(f"{name}[{i}] = {int(values[i])} {allowed}")


def _check_indptr(name: str, indptr: torch.Tensor, items: str, nnz: int) -> None:
    _first_bad(name, indptr[:1], indptr[:1] != 0, "must be 0")
    steps = torch.cat([indptr[:1] * 0, indptr.diff()])
    _first_bad(name, indptr, steps < 0, "is below the entry before it (must be non-decreasing)")
    last = int(indptr[-1])
    if last != nnz:
        raise ValueError(f"{name}[-1] = {last} must equal len({items}) = {nnz}")


def _check_blocks(block_ids, seg_block_indptr, seg_len, num_blocks: int, block_size: int) -> None:
    _check_indptr("seg_block_indptr", seg_block_indptr, "block_ids", block_ids.shape[0])
    _first_bad("block_ids", block_ids, (block_ids < 0) | (block_ids >= num_blocks), f"is outside [0, {num_blocks})")
    _first_bad("seg_len", seg_len, seg_len < 0, "must be >= 0")
    need = (seg_len.long() + block_size - 1) // block_size
    have = seg_block_indptr.diff().long()
    where = torch.nonzero(need != have)
    if where.shape[0]:
        s = int(where[0, 0])
        n = int(seg_len[s])
        raise ValueError(f"seg_len[{s}] = {n} needs ceil({n} / {block_size}) = {int(need[s])} blocks, segment {s} "
                         f"has {int(have[s])} in block_ids")


def _check_rows(seg_row_indptr, seg_rows, rows: int) -> torch.Tensor:
    """Checks the row lists; returns each entry's segment: (nnz_rows,) int64."""
    _check_indptr("seg_row_indptr", seg_row_indptr, "seg_rows", seg_rows.shape[0])
    _first_bad("seg_rows", seg_rows, (seg_rows < 0) | (seg_rows >= rows), f"is outside [0, {rows}) (R rows of q)")
    counts = seg_row_indptr.diff().long()
    segment = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    pairs, order = torch.sort(segment * max(rows, 1) + seg_rows.long(), stable=True)
    twice = torch.nonzero(pairs.diff() == 0)
    if twice.shape[0]:
        i = int(order[int(twice[0, 0]) + 1])
        raise ValueError(f"seg_rows[{i}] = {int(seg_rows[i])} lists row {int(seg_rows[i])} twice in segment "
                         f"{int(segment[i])} (a segment's rows must be distinct)")
    return segment


def _check_visible(seg_len, seg_rows, segment, causal, q_pos, seg_start, rows: int, window: int = 0) -> None:
    """Every row is in a segment and sees at least one token of its segments (within its window)."""
    members = seg_rows.long()
    covered = torch.zeros(rows, dtype=torch.int64, device=seg_rows.device).index_add_(0, members,
                                                                                        torch.ones_like(members))
    where = torch.nonzero(covered == 0)
    if where.shape[0]:
        raise ValueError(f"row {int(where[0, 0])} of q is in no segment (every row needs one, in seg_rows)")
    seen = seg_len.long()[segment]
    if causal is not None:
        _first_bad("q_pos", q_pos, q_pos < 0, "must be >= 0")
        _first_bad("seg_start", seg_start, seg_start < 0, "must be >= 0")
        upto = (q_pos.long()[members] - seg_start.long()[segment] + 1).clamp(min=0)
        seen = torch.where(causal[segment], torch.minimum(seen, upto), seen)
        if window:  # tokens from index q_pos - window + 1 - seg_start on
            start = q_pos.long()[members] - window + 1 - seg_start.long()[segment]
            seen = (seen - start.clamp(min=0)).clamp(min=0)
    visible = torch.zeros(rows, dtype=torch.int64, device=seg_rows.device).index_add_(0, members, seen)
    where = torch.nonzero(visible == 0)
    if where.shape[0]:
        r = int(where[0, 0])
        after = f" or start after q_pos[{r}] = {int(q_pos[r])}" if causal is not None else ""
        if window:
            after = (f", start after q_pos[{r}] = {int(q_pos[r])} or end before its window of {window} (positions > "
                     f"{int(q_pos[r]) - window})")
        raise ValueError(f"row {r} of q sees no token: its segments are empty{after}")


def _check_indices(index: tuple, rows: int, num_blocks: int, block_size: int, window: int = 0) -> None:
    """The index values against q's R rows and the cache's N blocks of B tokens (a sync on CUDA)."""
    block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows, causal, q_pos, seg_start = index
    _check_blocks(block_ids, seg_block_indptr, seg_len, num_blocks, block_size)
    segment = _check_rows(seg_row_indptr, seg_rows, rows)
    _check_visible(seg_len, seg_rows, segment, causal, q_pos, seg_start, rows, window)


def _checked_natively(q: torch.Tensor, backend: str) -> bool:
    """Whether the C++ kernel (CPU) will run these calls: it checks the index values itself on every call, worded
    as _check_indices words them, so the wrapper leaves them to it (a decode step's layout was checked twice)."""
    return not q.is_cuda and q.shape[2] in HEAD_DIMS and dispatch.pick(OP, q.device, backend) == "native"


def _picked(q: torch.Tensor, backend: str, options: bool) -> str:
    """dispatch.pick's backend for q, where a window or softcap (options) keeps the CUDA and Triton kernels out:
    "auto" runs the reference instead, a forced one is refused."""
    picked = dispatch.pick(OP, q.device, backend)
    if options and (picked == "triton" or picked == "native" and q.is_cuda):
        if backend != "auto":
            raise ValueError("window and softcap run on the C++ CPU kernel and the reference; the CUDA and Triton "
                             f"kernels lack them (backend={backend!r} on {q.device})")
        picked = "reference"
    return picked


def _contiguous(index: tuple) -> tuple:
    return tuple(t.contiguous() if isinstance(t, torch.Tensor) else t for t in index)


def native_cpu() -> bool:
    """Whether CPU tensors run the C++ kernel under backend="auto"."""
    return dispatch.native_available(OP, "cpu")


def cpu_kernel(dtype: torch.dtype, head_dim: int, block_size: int) -> str:
    """The C++ kernel's build that CPU tensors run by default: for bfloat16 with head_dim a multiple of 32 and
    block_size a multiple of 16, "amx" on a CPU with AMX-BF16, else "avx512bf16" on one with AVX-512 BF16; else
    "vector" (float32 arithmetic on the widest vectors the CPU has). One build per process for a given model and
    cache (a row's bits must not change with the batch), as for the bf16 linear (spct.ops.linear)."""
    have = _cpu_kernels(dtype, head_dim, block_size)
    return next(kernel for kernel in CPU_KERNELS if kernel in have)


def _cpu_kernels(dtype: torch.dtype, head_dim: int, block_size: int) -> set[str]:
    """The builds that can run these shapes on this CPU."""
    if not (dtype == torch.bfloat16 and head_dim % 32 == 0 and block_size % 16 == 0):
        return {"vector"}
    lib = dispatch.native()
    have = {"amx": lib.linear_bf16_amx_supported(), "avx512bf16": lib.linear_bf16_supported(), "vector": True}
    return {kernel for kernel, ok in have.items() if ok}


def _check_cpu_kernel(kernel: str | None) -> None:
    if kernel is not None and kernel not in CPU_KERNELS:
        raise ValueError(f"cpu_kernel {kernel!r} is not one of {', '.join(map(repr, CPU_KERNELS))} (or None: auto)")


CPU_NEEDS = {"amx": "AMX-BF16", "avx512bf16": "AVX-512 BF16"}


def _kernel(q: torch.Tensor, block_size: int, kernel: str | None) -> str:
    """The C++ kernel's build for these arguments (cpu_kernel None: cpu_kernel's choice)."""
    if kernel is None:
        return cpu_kernel(q.dtype, q.shape[2], block_size)
    if kernel not in _cpu_kernels(q.dtype, q.shape[2], block_size):
        raise ValueError(f"cpu_kernel {kernel!r} needs bfloat16 (got {q.dtype}), head_dim a multiple of 32 (got "
                         f"{q.shape[2]}), block_size a multiple of 16 (got {block_size}) and a CPU with "
                         f"{CPU_NEEDS[kernel]}")
    return kernel


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _bind(index: tuple, q: torch.Tensor, k_cache: torch.Tensor, scale: float, backend: str,
          kernel: str | None = None, window: int = 0, softcap: float = 0.0):
    """The backend for checked, contiguous arguments shaped like q: (R, Hq, D) and k_cache: (N, B, Hkv, D), as a
    function (q, k_cache, v_cache) -> (R, Hq, D); the C++ kernel's layout is made here, once. It holds the index
    tensors' addresses: the caller keeps them alive while it uses the function (a Plan holds them)."""
    picked = _picked(q, backend, bool(window or softcap))
    rows, heads, dim = q.shape
    if picked == "native" and dim not in HEAD_DIMS:
        if backend == "native":
            raise ValueError(f"head_dim {dim} has no native kernel (built: {', '.join(map(str, HEAD_DIMS))})")
        picked = "reference"
    if picked == "reference":
        return lambda q, k_cache, v_cache: ref.paged_attention(q, k_cache, v_cache, *index, scale, window, softcap)
    block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows = index[:5]
    if picked == "triton":
        kernels = dispatch.triton(OP)
        row_map = kernels.row_segments(seg_row_indptr, seg_rows, rows)  # once for every layer of the step
        return lambda q, k_cache, v_cache: kernels.paged_attention(q, k_cache, v_cache, *index, scale,
                                                                   row_map=row_map)
    lib = dispatch.native()
    # positional, in the binding's order: the eight index addresses (0: no causal segment), then rows, heads,
    # kv_heads, head_dim, num_blocks, block_size, segments, nnz_blocks, nnz_rows, scale, bf16, amx, dpbf16, window,
    # softcap
    build = "vector" if q.is_cuda else _kernel(q, k_cache.shape[1], kernel)
    layout = lib.PagedAttentionLayout(*map(_address, index), rows, heads, k_cache.shape[2], dim, k_cache.shape[0],
                                      k_cache.shape[1], seg_len.shape[0], block_ids.shape[0], seg_rows.shape[0],
                                      scale, q.dtype == torch.bfloat16, build == "amx", build == "avx512bf16", window,
                                      softcap)

    def native(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        lib.paged_attention(layout, q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr())
        return out

    native.layout = layout  # for Plan.cpu_layout

    def native_cuda(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        with torch.cuda.device(q.device):  # the kernel launches (and allocates its workspace) on the current device
            lib.paged_attention_cuda(layout, q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
                                     torch.cuda.current_stream(q.device).cuda_stream)
        return out

    return native_cuda if q.is_cuda else native


class Plan:
    """paged_attention for the calls of one step that share the layout (its layers).

        plan = Plan(block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows)  # once per step
        out = plan.run(q, k_cache, v_cache)                                          # per layer -> (R, Hq, D)

    The index tensors, causal/q_pos/seg_start, scale, backend, cpu_kernel, window and softcap are
    `paged_attention`'s and must not change while the plan is used. The first `run` checks what `paged_attention`
    checks and binds the backend (the C++ kernel's layout); a later call whose tensors have the same shapes, dtypes
    and devices runs at once (any other is checked and bound again).
    """

    def __init__(self, block_ids: torch.Tensor, seg_block_indptr: torch.Tensor, seg_len: torch.Tensor,
                 seg_row_indptr: torch.Tensor, seg_rows: torch.Tensor, *, causal: torch.Tensor | None = None,
                 q_pos: torch.Tensor | None = None, seg_start: torch.Tensor | None = None,
                 scale: float | None = None, backend: str = "auto", cpu_kernel: str | None = None,
                 window: int | None = None, softcap: float | None = None):
        dispatch.check_backend(OP, backend)
        if scale is not None:
            _scale(scale, 1)
        self._index = _contiguous((block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows, causal, q_pos,
                                   seg_start))
        _check_cpu_kernel(cpu_kernel)
        self._window, self._softcap = _options(window, softcap, self._index)
        self._scale_arg, self._backend, self._cpu_kernel, self._key = scale, backend, cpu_kernel, None

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q: (R, Hq, D); k_cache, v_cache: (N, B, Hkv, D) -> (R, Hq, D) in q's dtype."""
        self._prepare(q, k_cache, v_cache)
        return self._run(q.contiguous(), k_cache.contiguous(), v_cache.contiguous())

    def cpu_layout(self, q: torch.Tensor, k_cache: torch.Tensor):
        """The C++ kernel's layout (spct._C.PagedAttentionLayout) for calls shaped like q over k_cache, checked as
        `run` checks them: what a native loop over the layers takes (spct/decoder.h). None where such calls do not
        run the C++ kernel (another backend, a head size it lacks, CUDA tensors)."""
        self._prepare(q, k_cache, k_cache)
        return getattr(self._run, "layout", None) if not q.is_cuda else None

    def _prepare(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        _check_tensors(q, k_cache, v_cache)
        key = (q.shape, q.dtype, q.device, k_cache.shape, v_cache.shape)
        if key != self._key:
            _check_layout(self._index, q.shape[0], q.device)
            if not _checked_natively(q, self._backend):
                _check_indices(self._index, q.shape[0], k_cache.shape[0], k_cache.shape[1], self._window)
            self._run = _bind(self._index, q, k_cache, _scale(self._scale_arg, q.shape[2]), self._backend,
                              self._cpu_kernel, self._window, self._softcap)
            self._key = key


def _impl(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_ids: torch.Tensor,
          seg_block_indptr: torch.Tensor, seg_len: torch.Tensor, seg_row_indptr: torch.Tensor, seg_rows: torch.Tensor,
          causal: torch.Tensor | None, q_pos: torch.Tensor | None, seg_start: torch.Tensor | None, scale: float,
          backend: str, cpu_kernel: str | None = None, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    index = (block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows, causal, q_pos, seg_start)
    if not _checked_natively(q, backend):
        _check_indices(index, q.shape[0], k_cache.shape[0], k_cache.shape[1], window)
    return _bind(index, q, k_cache, scale, backend, cpu_kernel, window, softcap)(q, k_cache, v_cache)


_op = torch.library.custom_op("spct::paged_attention", mutates_args=())(_impl)


@_op.register_fake
def _(q, k_cache, v_cache, block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows, causal, q_pos, seg_start,
      scale, backend, cpu_kernel=None, window=0, softcap=0.0):
    return torch.empty_like(q)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,
    seg_block_indptr: torch.Tensor,
    seg_len: torch.Tensor,
    seg_row_indptr: torch.Tensor,
    seg_rows: torch.Tensor,
    *,
    causal: torch.Tensor | None = None,
    q_pos: torch.Tensor | None = None,
    seg_start: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    cpu_kernel: str | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of R query rows over segments of a paged KV cache (layout: module docstring).

    q: (R, Hq, D) float32 or bfloat16; k_cache, v_cache: (N, B, Hkv, D), q's dtype and device, Hq a multiple of
    Hkv; block_ids: (nnz_blocks,) int32, each segment's blocks in order, < N; seg_block_indptr: (S + 1,) int32;
    seg_len: (S,) int32, tokens per segment; seg_row_indptr: (S + 1,) int32; seg_rows: (nnz_rows,) int32, each
    segment's rows, < R; causal: (S,) bool, q_pos: (R,) int32, seg_start: (S,) int32, all three or none; scale:
    multiplies q . k (default 1 / sqrt(D)); backend: "auto", "native" (the C++ or CUDA kernel, D in HEAD_DIMS),
    "triton" or "reference"; cpu_kernel: the C++ kernel's build, "amx", "avx512bf16" or "vector" (CPU_KERNELS;
    None: `cpu_kernel`'s choice); window: the sliding window W >= 1, a row sees positions > q_pos - W (needs
    causal, q_pos and seg_start; None or 0: none); softcap: c > 0 caps each scaled score x to c * tanh(x / c)
    before the softmax (None or 0: none); both run on the C++ CPU kernel and the reference only (module
    docstring). returns: (R, Hq, D) in q's dtype, accumulated in float32.
    """
    dispatch.check_backend(OP, backend)
    _check_cpu_kernel(cpu_kernel)
    _check_tensors(q, k_cache, v_cache)
    index = (block_ids, seg_block_indptr, seg_len, seg_row_indptr, seg_rows, causal, q_pos, seg_start)
    _check_layout(index, q.shape[0], q.device)
    scale = _scale(scale, q.shape[2])
    window, softcap = _options(window, softcap, index)
    op = torch.ops.spct.paged_attention if torch.compiler.is_compiling() else _impl
    return op(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), *_contiguous(index), scale, backend,
              cpu_kernel, window, softcap)
