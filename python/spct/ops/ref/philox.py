"""Philox4x32-10 in plain torch integer ops: the reference counter-based generator.

Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), with the constants of Random123 and
curand. Every native backend reproduces these words bit for bit.
"""

from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * b for a constant a and b < 2^32 (int64 tensor), without int64 overflow."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    ll, lh, hl, hh = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF)
    low = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    high = hh + (lh >> 16) + (hl >> 16) + (mid >> 16)
    return high, low


def philox4x32_10(counter: list[torch.Tensor], key: list[torch.Tensor]) -> list[torch.Tensor]:
    """Four output words (int64 tensors holding uint32 values) for counter words c0..c3 and key words k0, k1."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _MASK32 for c in counter)
    k0, k1 = (k.to(torch.int64) & _MASK32 for k in key)
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return [c0, c1, c2, c3]


def random_bits24(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """24 random bits per element: word 0 of Philox(counter=(lo, hi, 0, 0), key=(seed lo, seed hi)) >> 8.

    seed, counter: int64 tensors (broadcast), values in [0, 2^63)."""
    seed, counter = torch.broadcast_tensors(seed.to(torch.int64), counter.to(torch.int64))
    zero = torch.zeros_like(counter)
    words = philox4x32_10([counter & _MASK32, counter >> 32, zero, zero], [seed & _MASK32, seed >> 32])
    return words[0] >> 8


def uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [0, 1): random_bits24 * 2^-24 (exact)."""
    return random_bits24(seed, counter).to(torch.float32) * (1.0 / (1 << 24))
