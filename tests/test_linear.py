"""linear: the packed bfloat16 kernel against torch.nn.functional.linear (the reference), rows independent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES

from spct.ops import dispatch
from spct.ops.linear import KERNELS, Linear, kernel_name, native_bf16_available, supported_kernels

HAS_NATIVE = native_bf16_available(torch.device("cpu"))
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="no native build runs here (no AVX2, or spct._C not built)")
WHY = {"amx": "this CPU has no AMX-BF16 (or the OS did not grant the tile registers)",
       "avx512bf16": "this CPU has no AVX-512 BF16", "avx2": "this CPU has no AVX2 and FMA"}


def _kernel(name: str) -> str:
    """name, or a skip that says why this CPU cannot run it."""
    if not HAS_NATIVE:
        pytest.skip("no native build runs here (no AVX2, or spct._C not built)")
    if name not in supported_kernels():
        pytest.skip(WHY[name])
    return name


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (100, 30), (17, 7), (16, 2), (49152, 64)])
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13, 16, 17, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_native_matches_torch(kernel, n, k, rows, bias):
    g = torch.Generator().manual_seed(n * 7 + k + rows)
    w = (torch.randn((n, k), generator=g) / k**0.5).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    x = torch.randn((rows, k), generator=g).bfloat16()
    lin = Linear(w, b, kernel=_kernel(kernel))
    assert lin.native and lin.kernel == kernel
    got = lin(x)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    want = F.linear(x.float(), w.float(), None if b is None else b.float()).bfloat16()
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCES[torch.bfloat16])
    assert torch.equal(lin.unpacked(), w)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_row_does_not_depend_on_the_batch(kernel):
    g = torch.Generator().manual_seed(0)
    lin = Linear((torch.randn((300, 200), generator=g) / 14).bfloat16(), kernel=_kernel(kernel))
    x = torch.randn((40, 200), generator=g).bfloat16()
    full = lin(x)
    for rows in range(1, 40):
        assert torch.equal(lin(x[:rows]), full[:rows]), rows
        assert torch.equal(lin(x[rows - 1: rows]), full[rows - 1: rows]), rows


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [112, 400, 960])
def test_a_row_does_not_depend_on_the_thread_count(kernel, n):
    """Each thread's share of the blocks starts anywhere in a group of the grouped layout (7, 25 and 60 blocks over
    1-3 threads): the same bits whatever the split."""
    g = torch.Generator().manual_seed(n)
    lin = Linear((torch.randn((n, 96), generator=g) / 10).bfloat16(), kernel=_kernel(kernel))
    x = torch.randn((7, 96), generator=g).bfloat16()
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append((lin(x), lin(x[:1])))
    finally:
        torch.set_num_threads(before)
    for full, one in outs[1:]:
        assert torch.equal(full, outs[0][0]) and torch.equal(one, outs[0][1])


@needs_native
def test_the_default_kernel_is_the_fastest_the_cpu_runs():
    lib = dispatch.native()
    want = "amx" if lib.linear_bf16_amx_supported() else "avx512bf16" if lib.linear_bf16_supported() else "avx2"
    assert kernel_name() == want
    assert Linear(torch.ones(16, 32).bfloat16()).kernel == want


@needs_native
def test_a_kernel_this_cpu_cannot_run_is_refused():
    for name in set(KERNELS) - set(supported_kernels()):
        with pytest.raises(ValueError, match=f"kernel '{name}' needs a bfloat16 CPU weight and a CPU with"):
            Linear(torch.ones(16, 32).bfloat16(), kernel=name)
    with pytest.raises(ValueError, match="kernel 'avx2' needs a bfloat16 CPU weight"):
        Linear(torch.ones(16, 32), kernel="avx2")  # float32 runs torch


@needs_native
def test_the_binding_refuses_an_unknown_kernel():
    lin = Linear(torch.ones(16, 32).bfloat16())
    x, y = torch.ones(1, 32).bfloat16(), torch.empty(1, 16).bfloat16()
    with pytest.raises(ValueError, match="kernel sse is not one of 'amx', 'avx512bf16', 'avx2'"):
        dispatch.native().linear_bf16(lin._packed, x.data_ptr(), 1, y.data_ptr(), "sse")


@pytest.mark.parametrize("kernel", KERNELS)
def test_rounding_to_bfloat16_is_torchs(kernel):
    """Sums that land exactly halfway between two bfloat16 values round to the even one, as torch rounds."""
    k = 32
    w = torch.zeros((16, k), dtype=torch.bfloat16)
    w[:, 0] = 1.0
    w[:, 1] = torch.tensor([2.0**-8, 3 * 2.0**-8, 2.0**-9, -(2.0**-8)] * 4)
    x = torch.zeros((1, k), dtype=torch.bfloat16)
    x[0, 0], x[0, 1] = 1.0, 1.0  # 1 + 2^-8 (halfway: to 1), 1 + 3 * 2^-8 (halfway: to 1 + 2^-6), ...
    got = Linear(w, kernel=_kernel(kernel))(x)
    want = (x.double() @ w.double().T).float().bfloat16()
    assert torch.equal(got, want)


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        Linear(torch.ones(16, 32).bfloat16(), kernel="sse")


def test_float32_is_torch_linear():
    w, b, x = torch.randn(8, 4), torch.randn(8), torch.randn(3, 4)
    lin = Linear(w, b)
    assert not lin.native
    assert torch.equal(lin(x), F.linear(x, w, b))
