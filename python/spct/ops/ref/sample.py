"""Reference sampler in plain torch: the oracle, the fallback and the benchmark baseline of spct.sample.

Written for clarity, vectorized over rows: a full stable sort gives the order (logit desc, index asc), top-k and
top-p are prefixes of that order, the draw walks the kept tokens in index order. Weights are computed with the
kernels' exact float32 recipe and every mass is an exact int64 sum, so the kernels give the same tokens bit for
bit (semantics: python/spct/ops/sample.py). Philox4x32-10 comes from ops/ref/philox.py.
"""

from __future__ import annotations

import torch

from spct.ops.ref.philox import random_bits24 as uniform_bits  # word 0 of Philox4x32-10 >> 8 (shared with vote)
from spct.ops.ref.philox import uniform as philox_uniform  # uniform_bits * 2^-24, float32

# exp_weight's float32 constants (the exact float32 values of csrc/include/spct/sample.h).
CUTOFF = -80.0
LOG2E = 1.4426950216293335
LN2_HI = 0.693359375
LN2_LO = -0.00021219444170128554
POLY = (0.00019875691214110702, 0.001398199936375022, 0.008333452045917511, 0.04166579619050026,
        0.1666666567325592, 0.5)

MASS_BITS = 40  # q = floor(w * 2^40): exact int64 masses for vocabularies under 2^23
OK, NAN, POSINF, ALL_NEGINF = 0, 1, 2, 3  # per-row status, as the kernels report it


def draw_target(bits: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """floor(bits * 2^-24 * total) exactly in int64, for total < 2^63 (split so no product overflows)."""
    return bits * (total >> 24) + ((bits * (total & 0xFFFFFF)) >> 24)


def exp_weight(z: torch.Tensor) -> torch.Tensor:
    """z: float32 tensor (<= 0). returns: exp(z) as the kernels compute it (one rounding per op), 0 below CUTOFF."""

    def f32(v: float) -> torch.Tensor:  # float32 operands keep every op a float32 op
        return torch.tensor(v, dtype=torch.float32, device=z.device)

    zc = torch.clamp_min(z, CUTOFF)
    n = torch.floor(zc * f32(LOG2E) + f32(0.5))
    r = zc - n * f32(LN2_HI)
    r = r - n * f32(LN2_LO)
    r2 = r * r
    p = torch.full_like(r, POLY[0])
    for c in POLY[1:]:
        p = p * r + f32(c)
    y = (p * r2 + r) + f32(1.0)
    scale = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(z < CUTOFF, f32(0.0), y * scale)


def row_status(x: torch.Tensor) -> torch.Tensor:
    """x: (N, V) float32. returns: (N,) int32 status: NAN, else POSINF, else ALL_NEGINF, else OK."""
    status = torch.where((x == float("-inf")).all(1), ALL_NEGINF, OK)
    status = torch.where(torch.isposinf(x).any(1), POSINF, status)
    return torch.where(torch.isnan(x).any(1), NAN, status).to(torch.int32)


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.int32).argmax(1)  # argmax returns the first maximal index


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: (N, V) float32/bfloat16; temperature, top_p, min_p: (N,) float32; top_k, seed, offset: (N,) int64.
    returns: tokens (N,) int64 (rows with a bad status hold garbage) and status (N,) int32."""
    x = logits.float()
    rows, vocab = x.shape
    status = row_status(x)
    m = x.max(1).values
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    w = exp_weight((x - m[:, None]) / t[:, None])
    q = (w * torch.tensor(2.0**MASS_BITS, dtype=torch.float32, device=x.device)).to(torch.int64)
    order = torch.sort(x, dim=1, descending=True, stable=True).indices  # (logit desc, index asc)
    positions = torch.arange(vocab, device=x.device).expand(rows, vocab)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    k = torch.where((top_k == 0) | (top_k >= vocab), vocab, top_k)
    in_k = rank < k[:, None]
    qk = torch.where(in_k, q, 0)
    threshold = top_p.double() * qk.sum(1).double()
    ahead = torch.cumsum(qk.gather(1, order), 1) - qk.gather(1, order)  # mass ahead in the order (exact)
    keep_sorted = (ahead.double() < threshold[:, None]) | (top_p >= 1)[:, None]
    in_p = keep_sorted.gather(1, rank)
    kept = in_k & in_p & (w >= min_p[:, None]) & (q > 0)
    running = torch.cumsum(torch.where(kept, q, 0), 1)  # index order
    target = draw_target(uniform_bits(seed, offset), running[:, -1])
    tokens = _first_true(kept & (running > target[:, None]))  # exists: running ends at its total > target
    tokens = torch.where(temperature == 0, x.argmax(1), tokens)
    return tokens, status


def sample_multinomial(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       min_p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The common torch recipe, a second benchmark baseline: softmax(logits / T), sort, top-k and top-p masks on
    the sorted probabilities, min-p, torch.multinomial. Same distribution as `sample` (up to float rounding), but
    torch's generator instead of Philox, so not the same tokens. temperature > 0. returns: (N,) int64."""
    probs = torch.softmax(logits.float() / temperature[:, None], -1)
    sorted_p, index = probs.sort(dim=-1, descending=True, stable=True)
    vocab = probs.shape[1]
    k = torch.where((top_k == 0) | (top_k >= vocab), vocab, top_k)
    sorted_p = sorted_p.masked_fill(torch.arange(vocab, device=probs.device) >= k[:, None], 0.0)
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    exclusive = sorted_p.cumsum(-1) - sorted_p
    sorted_p = sorted_p.masked_fill((exclusive >= top_p[:, None]) & (top_p < 1)[:, None], 0.0)
    sorted_p = sorted_p.masked_fill(sorted_p < min_p[:, None] * sorted_p[:, :1], 0.0)
    choice = torch.multinomial(sorted_p, 1, generator=generator)
    return index.gather(1, choice).squeeze(1)
