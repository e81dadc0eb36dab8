"""philox: Philox4x32-10 for Triton kernels, bit-identical to csrc/include/spct/philox.h and spct/ops/ref/philox.py.

`philox4x32` and `uniform_bits` are the jit functions the sample and vote kernels call; `philox_uniform` (the op's
launcher, as spct.ops.sample.philox_uniform dispatches it) and `philox4x32_words` (one block, for the known-answer
tests) run them alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 words (the rounds of csrc/include/spct/philox.h)."""
    m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
    m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        hi0, lo0 = tl.umulhi(m0, c0), m0 * c0
        hi1, lo1 = tl.umulhi(m1, c2), m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def uniform_bits(seed, offset):
    """(word 0 of Philox(counter=(offset lo, offset hi, 0, 0), key=(seed lo, seed hi))) >> 8, as int64."""
    seed = seed.to(tl.int64)  # pass 64-bit values from int64 tensors: a scalar argument may arrive as (u)int32
    offset = offset.to(tl.int64)
    c0 = (offset & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.zeros_like(c0)
    w0, _, _, _ = philox4x32(c0, c1, zero, zero, k0, k1)
    return (w0 >> 8).to(tl.int64)


@triton.jit
def _uniform_kernel(seed, offset, out, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < n
    bits = uniform_bits(tl.load(seed + i, mask=live, other=0), tl.load(offset + i, mask=live, other=0))
    tl.store(out + i, bits.to(tl.float32) * 5.9604644775390625e-08, mask=live)


def philox_uniform(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """seed, offset: (n,) int64. returns: (n,) float32 uniforms, bit for bit those of the other backends."""
    n = seed.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=seed.device)
    _uniform_kernel[(triton.cdiv(n, 256),)](seed, offset, out, n, BLOCK=256)
    return out


@triton.jit
def _philox_kernel(words, out):
    """words: (6,) int64 counter c0..c3 and key k0, k1; out: (4,) int64."""
    c0, c1, c2, c3 = philox4x32(tl.load(words).to(tl.uint32), tl.load(words + 1).to(tl.uint32),
                                tl.load(words + 2).to(tl.uint32), tl.load(words + 3).to(tl.uint32),
                                tl.load(words + 4).to(tl.uint32), tl.load(words + 5).to(tl.uint32))
    tl.store(out, c0.to(tl.int64))
    tl.store(out + 1, c1.to(tl.int64))
    tl.store(out + 2, c2.to(tl.int64))
    tl.store(out + 3, c3.to(tl.int64))


def philox4x32_words(counter, key) -> tuple[int, int, int, int]:
    """Philox4x32-10 of one counter (4 words) and key (2 words), for the known-answer tests."""
    words = torch.tensor([*counter, *key], dtype=torch.int64)
    out = torch.empty(4, dtype=torch.int64)
    _philox_kernel[(1,)](words, out)
    return tuple(int(v) for v in out)
