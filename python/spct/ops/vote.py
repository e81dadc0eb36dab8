"""vote: voting@k and Meta-RM guided voting over k sampled GRM judgements per item, in one fused pass.

The rules are written out in `spct.ops.ref.vote` (the reference); every backend follows them exactly:
used samples (valid; with meta scores, the k_meta best by (meta desc, index asc)), rewards as float32 sums in
ascending sample order per original response, best = argmax with exact ties broken by Philox(seed, item).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spct import _native
from spct.ops.ref import vote as ref

BACKENDS = ("auto", "native", "triton", "reference")


@dataclass
class Vote:
    """rewards: (B, n) float32, NaN for padding and for items with no used sample; num_used: (B,) int32;
    best: (B,) int64, -1 where no sample was used."""

    rewards: torch.Tensor
    num_used: torch.Tensor
    best: torch.Tensor


def _first_bad(mask: torch.Tensor) -> tuple[int, ...] | None:
    bad = torch.nonzero(mask)
    return None if bad.shape[0] == 0 else tuple(int(v) for v in bad[0])


def _check_shapes(scores, valid, perm, meta_scores, num_responses) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.dtype != torch.float32:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float32 tensor (B, k, n), got {got}"
                         f"{' ' + str(scores.dtype) if isinstance(scores, torch.Tensor) else ''}")
    batch, k, n = scores.shape
    expected = {"valid": (valid, (batch, k)), "perm": (perm, (batch, k, n)),
                "meta_scores": (meta_scores, (batch, k)), "num_responses": (num_responses, (batch,))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match scores {tuple(scores.shape)}, "
                             f"got {tuple(t.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    if perm is not None and (perm.dtype.is_floating_point or perm.dtype == torch.bool):
        raise ValueError(f"perm must be an integer tensor, got {perm.dtype}")
    if meta_scores is not None and not meta_scores.dtype.is_floating_point:
        raise ValueError(f"meta_scores must be a float tensor, got {meta_scores.dtype}")


def _check_arguments(scores, meta_scores, k_meta, n_item, seed) -> None:
    n = scores.shape[2]
    if k_meta is not None and (meta_scores is None or not isinstance(k_meta, int) or k_meta < 1):
        raise ValueError(f"k_meta must be an int >= 1 used with meta_scores, got {k_meta!r}"
                         f"{'' if meta_scores is not None else ' without meta_scores'}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if n_item is not None and (bad := _first_bad((n_item < 1) | (n_item > n))) is not None:
        raise ValueError(f"num_responses[{bad[0]}] = {int(n_item[bad[0]])} is outside [1, n = {n}]")


def _check_values(scores, valid, perm, meta_scores, n_item) -> None:
    """Finite scores and meta scores in valid samples, perm a permutation (the C++ kernel checks these itself)."""
    batch, _, n = scores.shape
    if n_item is None:
        n_item = torch.full((batch,), n, dtype=torch.int64, device=scores.device)
    live = torch.arange(n, device=scores.device)[None, :] < n_item[:, None]
    if (bad := _first_bad(valid[:, :, None] & live[:, None, :] & ~torch.isfinite(scores))) is not None:
        raise ValueError(f"scores[{bad[0]}, {bad[1]}, {bad[2]}] = {float(scores[bad])} is not finite in a valid "
                         "sample (mark the sample invalid instead)")
    if meta_scores is not None and (bad := _first_bad(valid & torch.isnan(meta_scores))) is not None:
        raise ValueError(f"meta_scores[{bad[0]}, {bad[1]}] is NaN for a valid sample")
    if perm is not None:
        pos = torch.arange(n, device=scores.device)
        shown = torch.where(live[:, None, :], perm.to(torch.int64), pos)  # padding positions: identity
        ok = (shown.sort(-1).values == pos).all(-1)
        if (bad := _first_bad(~ok)) is not None:
            b, j = bad
            raise ValueError(f"perm[{b}, {j}] = {perm[b, j, : int(n_item[b])].tolist()} is not a permutation of "
                             f"range({int(n_item[b])})")


def _vote_impl(scores: torch.Tensor, valid: torch.Tensor, perm: torch.Tensor | None, meta_scores: torch.Tensor | None,
             k_meta: int, num_responses: torch.Tensor | None, seed: int, backend: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked inputs of `vote` -> (rewards, num_used, best) on scores' device. k_meta <= 0: all valid."""
    lib = None if backend == "triton" else _native.native("vote", scores.device.type, backend)
    if lib is None and (backend == "triton" or (scores.is_cuda and backend == "auto")):
        kernel = _triton_vote()
        if kernel is not None:
            return kernel(scores, valid, perm, meta_scores, k_meta, num_responses, seed)
        if backend == "triton":
            raise RuntimeError("backend='triton' but triton is not installed (pip install 'spct[triton]')")
    if lib is None:
        return ref.vote(scores, valid, perm, meta_scores, k_meta if k_meta > 0 else None, num_responses, seed)
    if scores.is_cuda:
        return _vote_cuda(lib, scores, valid, perm, meta_scores, k_meta, num_responses, seed)
    args = [t.numpy() if t is not None else None for t in (scores, valid, perm, meta_scores)]
    out = lib.vote(*args, k_meta, None if num_responses is None else num_responses.numpy(), seed)
    return tuple(torch.from_numpy(a) for a in out)


_vote_op = torch.library.custom_op("spct::vote", mutates_args=())(_vote_impl)


def _triton_vote():
    try:
        from spct.ops.triton import vote as kernels
    except ImportError:
        return None
    return kernels.vote


@_vote_op.register_fake
def _(scores, valid, perm, meta_scores, k_meta, num_responses, seed, backend):
    batch, _, n = scores.shape
    dev = scores.device
    return (torch.empty((batch, n), dtype=torch.float32, device=dev), torch.empty(batch, dtype=torch.int32, device=dev),
            torch.empty(batch, dtype=torch.int64, device=dev))


def _vote_cuda(lib, scores, valid, perm, meta_scores, k_meta, num_responses, seed):
    batch, k, n = scores.shape
    dev = scores.device
    rewards = torch.empty((batch, n), dtype=torch.float32, device=dev)
    used = torch.empty(batch, dtype=torch.int32, device=dev)
    best = torch.empty(batch, dtype=torch.int64, device=dev)
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    lib.vote_cuda(ptr(scores), ptr(valid), ptr(perm), ptr(meta_scores), ptr(num_responses), batch, k, n, k_meta, seed,
                  rewards.data_ptr(), used.data_ptr(), best.data_ptr(), torch.cuda.current_stream(dev).cuda_stream)
    return rewards, used, best


def vote(
    scores: torch.Tensor,
    valid: torch.Tensor,
    *,
    perm: torch.Tensor | None = None,
    meta_scores: torch.Tensor | None = None,
    k_meta: int | None = None,
    num_responses: torch.Tensor | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> Vote:
    """Vote over k samples per item.

    scores: (B, k, n) float32, each sample's scores in the order its prompt showed the responses;
    valid: (B, k) bool; perm: (B, k, n) int, perm[b, j, p] = original index of the response at position p of
    sample j (None: identity); meta_scores: (B, k) float32 Meta RM scores with k_meta: int >= 1 (None: all valid
    samples); num_responses: (B,) responses per item when fewer than n (padding ignored); seed: tie-break seed.
    backend: "auto" (the native kernel for the device when built; on CUDA else Triton; else the reference),
    "native", "triton" or "reference".
    returns: Vote(rewards (B, n) float32, num_used (B,) int32, best (B,) int64).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_shapes(scores, valid, perm, meta_scores, num_responses)
    dev = scores.device
    n_item = None if num_responses is None else num_responses.to(device=dev, dtype=torch.int64)
    _check_arguments(scores, meta_scores, k_meta, n_item, seed)
    if scores.is_cuda or backend == "triton" or _native.native("vote", dev.type, backend) is None:
        _check_values(scores, valid, perm, meta_scores if k_meta is not None else None, n_item)
    contiguous = lambda t, dtype: None if t is None else t.to(device=dev, dtype=dtype).contiguous()  # noqa: E731
    # Eager calls skip the op dispatcher (a tenth of a call at B = 4,096, measured); compiled graphs use the op.
    op = torch.ops.spct.vote if torch.compiler.is_compiling() else _vote_impl
    rewards, used, best = op(
        scores.contiguous(), valid.contiguous(), contiguous(perm, torch.int64),
        contiguous(meta_scores if k_meta is not None else None, torch.float32), k_meta or 0,
        None if n_item is None else n_item.contiguous(), seed, backend)
    return Vote(rewards, used, best)
