"""Philox4x32-10 for Triton kernels, bit-identical to csrc/include/spct/philox.h and spct/ops/ref/philox.py."""

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
