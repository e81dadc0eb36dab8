"""layer_ops: the fused element-wise steps of a decoder layer against their torch reference (spct.ops.ref.layer_ops):
RoPE and the residual add exactly, the norm, SiLU and tanh GELU to the bfloat16 tolerance; rows independent of the
batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES

from spct.ops import layer_ops
from spct.ops.ref import layer_ops as ref

needs_native = pytest.mark.skipif(not layer_ops.native_cpu(torch.empty(0, dtype=torch.bfloat16)),
                                  reason="spct._C is not loaded (the ops run their reference)")
HQ, HKV, D, POSITIONS = 9, 3, 64, 512


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@needs_native
@pytest.mark.parametrize(("rows", "h"), [(1, 576), (16, 576), (5, 37), (300, 960)])
@pytest.mark.parametrize("residual", [False, True])
def test_add_rms_norm_matches_torch(rows, h, residual):
    g = _gen(rows * h)
    x = torch.randn((rows, h), generator=g).bfloat16() * 3
    delta = torch.randn((rows, h), generator=g).bfloat16() if residual else None
    w = torch.randn(h, generator=g).bfloat16()
    got_x = x.clone()
    got = layer_ops.add_rms_norm(got_x, delta, w, 1e-5)
    want_x = x + delta if residual else x
    assert torch.equal(got_x, want_x)  # the residual add: torch's bits
    want = ref.rms_norm(want_x.float(), w.float(), 1e-5)
    torch.testing.assert_close(got.float(), want, **TOLERANCES[torch.bfloat16])
    assert (got != ref.rms_norm(want_x, w, 1e-5)).float().mean() < 0.01  # nearly always torch's bfloat16 bits


@needs_native
@pytest.mark.parametrize("rows", [1, 16, 37])
def test_rope_qkv_matches_torch_exactly(rows):
    g = _gen(rows)
    cos, sin = torch.randn((POSITIONS, D), generator=g).bfloat16(), torch.randn((POSITIONS, D), generator=g).bfloat16()
    qkv = torch.randn((rows, (HQ + 2 * HKV) * D), generator=g).bfloat16()
    positions = torch.randint(0, POSITIONS, (rows,), generator=g)
    slots = torch.randperm(64, generator=g)[:rows]
    k_cache, v_cache = torch.zeros((64, HKV, D), dtype=torch.bfloat16), torch.zeros((64, HKV, D), dtype=torch.bfloat16)
    q = layer_ops.rope_qkv(qkv, cos, sin, positions, k_cache, v_cache, slots, HQ, HKV)
    x = qkv.view(rows, HQ + 2 * HKV, D)
    want = ref.rope(x[:, : HQ + HKV], cos[positions][:, None], sin[positions][:, None])
    assert torch.equal(q, want[:, :HQ])
    assert torch.equal(k_cache[slots], want[:, HQ:])
    assert torch.equal(v_cache[slots], x[:, HQ + HKV:])
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[slots] = False
    assert not k_cache[untouched].any() and not v_cache[untouched].any()


@needs_native
@pytest.mark.parametrize(("name", "value"), [("slots", 64), ("slots", -1), ("positions", POSITIONS)])
def test_rope_qkv_refuses_an_index_out_of_range_and_writes_nothing(name, value):
    cos = torch.zeros((POSITIONS, D), dtype=torch.bfloat16)
    qkv = torch.ones((3, (HQ + 2 * HKV) * D), dtype=torch.bfloat16)
    index = {"positions": torch.tensor([0, 1, 2]), "slots": torch.tensor([4, 5, 6])}
    index[name][1] = value
    k_cache, v_cache = torch.zeros((64, HKV, D), dtype=torch.bfloat16), torch.zeros((64, HKV, D), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=rf"{name}\[1\] = {value} is outside \[0, "):
        layer_ops.rope_qkv(qkv, cos, cos, index["positions"], k_cache, v_cache, index["slots"], HQ, HKV)
    assert not k_cache.any() and not v_cache.any()


@needs_native
@pytest.mark.parametrize(("rows", "n"), [(1, 1536), (16, 1536), (7, 45)])
def test_silu_mul_matches_torch(rows, n):
    g = _gen(rows + n)
    gate_up = torch.randn((rows, 2 * n), generator=g).bfloat16() * 4
    got = layer_ops.silu_mul(gate_up)
    torch.testing.assert_close(got.float(), ref.silu_mul(gate_up.float()), **TOLERANCES[torch.bfloat16])
    assert (got != ref.silu_mul(gate_up)).float().mean() < 0.01


@needs_native
@pytest.mark.parametrize(("rows", "n"), [(1, 1536), (16, 1536), (7, 45)])
def test_gelu_tanh_mul_matches_torch(rows, n):
    g = _gen(rows + n + 1)
    gate_up = torch.randn((rows, 2 * n), generator=g).bfloat16() * 4
    tails = torch.tensor([-100.0, 100.0, 0.0, -3e4])  # exp's clamps, zero: in the vector body and the scalar tail
    gate_up[0, :4], gate_up[0, n - 4: n] = tails, tails
    got = layer_ops.gelu_tanh_mul(gate_up)
    torch.testing.assert_close(got.float(), ref.gelu_tanh_mul(gate_up.float()), **TOLERANCES[torch.bfloat16])
    # torch's bits where |gelu(gate)| > 0.01; below, torch's 1 + tanh(y) cancels (to 0 from gate < -5 or so) where
    # the kernel's x / (1 + exp(-2y)) keeps the tiny value
    gate = gate_up[:, :n].float()
    big = (gate * torch.sigmoid(1.5957691216057308 * (gate + 0.044715 * gate ** 3))).abs() > 0.01
    assert (got != ref.gelu_tanh_mul(gate_up))[big].float().mean() < 0.01


@needs_native
def test_a_row_does_not_depend_on_the_batch():
    g = _gen(5)
    x = torch.randn((40, 576), generator=g).bfloat16()
    w = torch.randn(576, generator=g).bfloat16()
    gate_up = torch.randn((40, 3072), generator=g).bfloat16()
    full, act = layer_ops.add_rms_norm(x.clone(), None, w, 1e-5), layer_ops.silu_mul(gate_up)
    for rows in (1, 7, 16, 39):
        assert torch.equal(layer_ops.add_rms_norm(x[rows - 1: rows].clone(), None, w, 1e-5), full[rows - 1: rows])
        assert torch.equal(layer_ops.silu_mul(gate_up[:rows]), act[:rows])


def test_float32_runs_the_reference():
    g = _gen(9)
    x, delta, w = torch.randn((4, 8), generator=g), torch.randn((4, 8), generator=g), torch.randn(8, generator=g)
    got_x = x.clone()
    assert torch.equal(layer_ops.add_rms_norm(got_x, delta, w, 1e-6), ref.rms_norm(x + delta, w, 1e-6))
    assert torch.equal(got_x, x + delta)
    gate_up = torch.randn((4, 8), generator=g)
    assert torch.equal(layer_ops.silu_mul(gate_up), ref.silu_mul(gate_up))
    assert torch.equal(layer_ops.gelu_tanh_mul(gate_up), ref.gelu_tanh_mul(gate_up))
    gate, up = gate_up.chunk(2, dim=-1)  # exactly the torch ops the runner ran before (fp32 greedy equality)
    assert torch.equal(layer_ops.gelu_tanh_mul(gate_up), F.gelu(gate, approximate="tanh") * up)
