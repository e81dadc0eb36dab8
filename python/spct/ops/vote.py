"""vote: voting@k and Meta-RM guided voting over k sampled GRM judgements per item, in one fused pass.

The rules are written out in `spct.ops.ref.vote` (the reference); every backend follows them exactly:
used samples (valid; with meta scores, the k_meta best by (meta desc, index asc)), rewards as float32 sums in
ascending sample order per original response, best = argmax with exact ties broken by Philox(seed, indices[b]),
the item's number (default its position b), so an item's result does not depend on its batch.

Who checks what:
- this wrapper: the arguments - types, dtypes, shapes, k_meta, seed, the ranges of num_responses and indices
  (torch reductions; on CUDA a sync) - and, for every backend but the C++ kernel, the values (finite scores and
  meta scores in valid samples, perm a permutation: `_check_values`);
- the C++ kernel (csrc/cpu/vote.cpp): those values, in the pass that sums them, worded as `_check_values` words
  them (the same first bad item);
- the bindings (csrc/bindings/vote.cpp): nothing, they marshal contiguous buffers (host: numpy; CUDA: Views).
Backends: `spct.ops.dispatch.pick("vote", device, backend)` (CPU: C++; CUDA: CUDA, else Triton; else reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spct.ops import _views, dispatch
from spct.ops.ref import vote as ref


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


def _check_shapes(scores, valid, perm, meta_scores, num_responses, indices) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.dtype != torch.float32:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float32 tensor (B, k, n), got {got}"
                         f"{' ' + str(scores.dtype) if isinstance(scores, torch.Tensor) else ''}")
    batch, k, n = scores.shape
    expected = {"valid": (valid, (batch, k)), "perm": (perm, (batch, k, n)),
                "meta_scores": (meta_scores, (batch, k)), "num_responses": (num_responses, (batch,)),
                "indices": (indices, (batch,))}
    for name, (t, shape) in expected.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {type(t).__name__}")
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match scores {tuple(scores.shape)}, "
                             f"got {tuple(t.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    for name, t in (("perm", perm), ("indices", indices)):
        if t is not None and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if meta_scores is not None and not meta_scores.dtype.is_floating_point:
        raise ValueError(f"meta_scores must be a float tensor, got {meta_scores.dtype}")


def _check_arguments(scores, meta_scores, k_meta, n_item, seed, indices) -> None:
    n = scores.shape[2]
    if k_meta is not None and (meta_scores is None or not isinstance(k_meta, int) or k_meta < 1):
        raise ValueError(f"k_meta must be an int >= 1 used with meta_scores, got {k_meta!r}"
                         f"{'' if meta_scores is not None else ' without meta_scores'}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if n_item is not None and (bad := _first_bad((n_item < 1) | (n_item > n))) is not None:
        raise ValueError(f"num_responses[{bad[0]}] = {int(n_item[bad[0]])} is outside [1, n = {n}]")
    if indices is not None and (bad := _first_bad(indices < 0)) is not None:
        raise ValueError(f"indices[{bad[0]}] = {int(indices[bad[0]])} is negative (item numbers are >= 0)")


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
               k_meta: int, num_responses: torch.Tensor | None, seed: int, backend: str,
               indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked inputs of `vote` -> (rewards, num_used, best) on scores' device. k_meta <= 0: all valid."""
    kind = dispatch.pick("vote", scores.device, backend)
    if kind == "triton":
        return dispatch.triton("vote").vote(scores, valid, perm, meta_scores, k_meta, num_responses, seed, indices)
    if kind == "reference":
        return ref.vote(scores, valid, perm, meta_scores, k_meta if k_meta > 0 else None, num_responses, seed,
                        indices)
    if scores.is_cuda:
        return _vote_cuda(scores, valid, perm, meta_scores, k_meta, num_responses, seed, indices)
    host = lambda t: None if t is None else t.numpy()  # noqa: E731
    out = dispatch.native().vote(scores=host(scores), valid=host(valid), perm=host(perm),
                                 meta_scores=host(meta_scores), num_responses=host(num_responses),
                                 indices=host(indices), k_meta=k_meta, seed=seed)
    return tuple(torch.from_numpy(a) for a in out)


_vote_op = torch.library.custom_op("spct::vote", mutates_args=())(_vote_impl)


@_vote_op.register_fake
def _(scores, valid, perm, meta_scores, k_meta, num_responses, seed, backend, indices=None):
    batch, _, n = scores.shape
    dev = scores.device
    return (torch.empty((batch, n), dtype=torch.float32, device=dev), torch.empty(batch, dtype=torch.int32, device=dev),
            torch.empty(batch, dtype=torch.int64, device=dev))


def _vote_cuda(scores, valid, perm, meta_scores, k_meta, num_responses, seed, indices):
    batch, k, n = scores.shape
    dev = scores.device
    rewards = torch.empty((batch, n), dtype=torch.float32, device=dev)
    used = torch.empty(batch, dtype=torch.int32, device=dev)
    best = torch.empty(batch, dtype=torch.int64, device=dev)
    v = _views.view
    dispatch.native().vote_cuda(
        scores=v(scores), valid=v(valid), perm=v(perm), meta_scores=v(meta_scores), num_responses=v(num_responses),
        indices=v(indices), k_meta=k_meta, seed=seed, rewards=v(rewards), num_used=v(used), best=v(best),
        stream=torch.cuda.current_stream(dev).cuda_stream)
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
    indices: torch.Tensor | None = None,
    backend: str = "auto",
) -> Vote:
    """Vote over k samples per item.

    scores: (B, k, n) float32, each sample's scores in the order its prompt showed the responses;
    valid: (B, k) bool; perm: (B, k, n) int, perm[b, j, p] = original index of the response at position p of
    sample j (None: identity); meta_scores: (B, k) float32 Meta RM scores with k_meta: int >= 1 (None: all valid
    samples); num_responses: (B,) responses per item when fewer than n (padding ignored); seed: tie-break seed;
    indices: (B,) int64 each item's number >= 0 (None: 0..B-1), the counter of its tie-break draw, so that an
    item's best does not depend on its position in the batch.
    backend: "auto" (the native kernel for the device when built; on CUDA else Triton; else the reference),
    "native", "triton" or "reference".
    returns: Vote(rewards (B, n) float32, num_used (B,) int32, best (B,) int64).
    """
    dispatch.check_backend("vote", backend)
    _check_shapes(scores, valid, perm, meta_scores, num_responses, indices)
    dev = scores.device
    n_item = None if num_responses is None else num_responses.to(device=dev, dtype=torch.int64)
    number = None if indices is None else indices.to(device=dev, dtype=torch.int64)
    _check_arguments(scores, meta_scores, k_meta, n_item, seed, number)
    kind = dispatch.pick("vote", dev, backend)
    if kind != "native" or scores.is_cuda:  # the C++ kernel checks the values itself
        _check_values(scores, valid, perm, meta_scores if k_meta is not None else None, n_item)
    contiguous = lambda t, dtype: None if t is None else t.to(device=dev, dtype=dtype).contiguous()  # noqa: E731
    # Eager calls skip the op dispatcher (a tenth of a call at B = 4,096, measured); compiled graphs use the op.
    op = torch.ops.spct.vote if torch.compiler.is_compiling() else _vote_impl
    rewards, used, best = op(
        scores.contiguous(), valid.contiguous(), contiguous(perm, torch.int64),
        contiguous(meta_scores if k_meta is not None else None, torch.float32), k_meta or 0,
        None if n_item is None else n_item.contiguous(), seed, kind, None if number is None else number.contiguous())
    return Vote(rewards, used, best)
