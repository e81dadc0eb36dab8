"""philox: Philox4x32-10 known answers on every backend; the sampler's uniforms (spct.ops.sample.philox_uniform)
bit-identical across backends, 24-bit, with 64-bit seeds and offsets. (vote's tie-break draws: test_vote.py.)"""

from __future__ import annotations


import pytest
import torch
from extract_helpers import native_lib, need

from spct.ops import sample as sample_op
from spct.ops.ref import philox as ref_philox

BACKENDS = ["native", "reference", "triton"]

# Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
@pytest.mark.parametrize("backend", BACKENDS)
def test_philox_known_answers(backend, counter, key, expected):
    need(backend)
    if backend == "reference":
        words = [int(w) for w in ref_philox.philox4x32_10([torch.tensor(c) for c in counter],
                                                          [torch.tensor(k) for k in key])]
    elif backend == "native":
        words = list(native_lib().philox4x32(counter, key))
    else:
        from spct.ops.triton import philox as triton_philox

        words = list(triton_philox.philox4x32_words(counter, key))
    assert words == expected


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_uniforms_are_bitwise_equal_across_backends(backend):
    need(backend)
    gen = torch.Generator().manual_seed(1)
    seed = torch.randint(-(2**63), 2**63 - 1, (4096,), generator=gen, dtype=torch.int64)
    offset = torch.randint(-(2**63), 2**63 - 1, (4096,), generator=gen, dtype=torch.int64)
    seed[:4] = torch.tensor([0, -1, 2**63 - 1, -(2**63)])
    offset[:4] = torch.tensor([0, 2**32, -1, 1])
    want = sample_op.philox_uniform(seed, offset, backend="reference")
    got = sample_op.philox_uniform(seed, offset, backend=backend)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert float(want.min()) >= 0.0 and float(want.max()) < 1.0
    assert torch.equal(want, (want * 2**24).floor() / 2**24)  # 24-bit values


def test_uniform_seeds_are_64_bit():
    u = sample_op.philox_uniform
    assert torch.equal(u(2**64 - 1, 5), u(-1, 5))
    assert torch.equal(u([2**63, 7], [1, 2**64 - 1]), u(torch.tensor([-(2**63), 7]), torch.tensor([1, -1])))
    assert not torch.equal(u(1, 0), u(1 + 2**32, 0))  # the high word of the seed matters
    assert not torch.equal(u(0, 1), u(0, 1 + 2**32))  # and of the offset
    with pytest.raises(ValueError, match="seed must be in"):
        u(2**64, 0)


@pytest.mark.parametrize("backend", ["auto", "native", "reference", "triton"])
def test_uniform_backends_and_bad_backend(backend):
    """philox_uniform goes through the one dispatch (op "philox"): every backend gives the reference's bits."""
    if backend != "auto":
        need(backend)
    seed = torch.arange(5, dtype=torch.int64)
    assert torch.equal(sample_op.philox_uniform(seed, 9, backend=backend),
                       sample_op.philox_uniform(seed, 9, backend="reference"))
    with pytest.raises(ValueError, match="backend must be one of"):
        sample_op.philox_uniform(seed, 9, backend="cuda")
