"""spct.sample: weights bit-identical across backends (Philox and the uniforms: test_philox.py); support,
frequency and determinism; batch invariance; C++ == reference == Triton (interpreter, small shapes) exactly; bf16,
per-row parameters, awkward shapes, strided rows; every bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TOLERANCES
from extract_helpers import native_lib, need
from hypothesis import given, settings
from hypothesis import strategies as st

from spct.ops import sample as sample_op
from spct.ops.ref import sample as ref

sample = sample_op.sample
INF = float("inf")
BACKENDS = ["native", "reference", "triton"]


def triton_module():
    need("triton")
    from spct.ops.triton import sample as triton_sample

    return triton_sample


def random_params(rows: int, gen: torch.Generator) -> dict:
    """Per-row parameters covering greedy rows and every filter on and off."""
    temperature = torch.rand(rows, generator=gen) * 1.5 + 0.05
    temperature[torch.rand(rows, generator=gen) < 0.15] = 0.0
    top_k = torch.randint(1, 40, (rows,), generator=gen)
    top_k[torch.rand(rows, generator=gen) < 0.4] = 0
    top_p = torch.rand(rows, generator=gen) * 0.95 + 0.05
    top_p[torch.rand(rows, generator=gen) < 0.3] = 1.0
    min_p = torch.rand(rows, generator=gen) * 0.3
    min_p[torch.rand(rows, generator=gen) < 0.5] = 0.0
    seed = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen)
    offset = torch.randint(0, 2**40, (rows,), generator=gen)
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, offset=offset)


def random_logits(rows: int, vocab: int, gen: torch.Generator, dtype=torch.float32, scale: float = 3.0):
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[torch.rand(rows, vocab, generator=gen) < 0.05] = -INF  # masked tokens
    return x.to(dtype)


def row(params: dict, r: int) -> dict:
    return {name: value[r] for name, value in params.items()}


# ---- weights (Philox and the uniforms: tests/test_philox.py) ------------------------------------------------
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_weights_are_bitwise_equal_and_within_one_ulp_of_exp(backend):
    need(backend)
    z = torch.cat([-torch.rand(200_000, generator=torch.Generator().manual_seed(2)) * 85,
                   torch.tensor([0.0, -0.0, -1e-30, -80.0, -80.00001, -79.99999, -INF, -1e30])])
    want = ref.exp_weight(z)
    got = torch.from_numpy(native_lib().sample_exp_weight(z.numpy())) if backend == "native" else (
        triton_module().exp_weight(z))
    assert torch.equal(got, want)
    live = z >= ref.CUTOFF
    assert bool((want[~live] == 0).all()) and float(want[z == 0].min()) == 1.0
    exact = torch.exp(z[live].double())
    ulp = (want[live].double() - exact).abs() / torch.finfo(torch.float32).eps / exact
    assert float(ulp.max()) <= 1.0
    torch.testing.assert_close(want[live], exact.float(), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("build", ["auto", "avx512", "avx2", "baseline"])
@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 3.0])
def test_masses_are_bitwise_equal_across_the_skipped_range(temperature, build):
    """Each build of the native first pass (AVX-512 and AVX2 skip the exp for 16 or 8 logits all more than 28.5 T
    below the maximum) gives the reference's masses q = floor(w * 2^40) for every token, and their total."""
    need("native")
    gen = torch.Generator().manual_seed(int(temperature * 100))
    t = torch.tensor(temperature)
    gap = -torch.rand(4099, generator=gen) * 60 * temperature  # 0 .. 60 T below the maximum, either side of 28.5 T
    edge = torch.tensor([-28.0, -28.5, -28.49999, -28.50001, -27.99999, -40.0]) * t  # near the cutoffs
    x = torch.cat([torch.tensor([5.0]), 5.0 + gap, 5.0 + edge, torch.tensor([-INF] * 17)])
    x[1000:1016] = 5.0 - 29 * t  # a whole block of 16 just past the skip bound
    x[2000:2016] = 5.0 - 28.4 * t  # and one just inside it
    want = (ref.exp_weight((x - 5.0) / t) * 2.0**ref.MASS_BITS).to(torch.int64)
    try:
        q, total = native_lib().sample_masses(x.numpy(), 5.0, float(t), build)
    except ValueError as e:
        assert build in ("avx512", "avx2"), e
        pytest.skip(f"this CPU has no {build} build of the first pass ({e})")
    assert torch.equal(torch.from_numpy(q), want)
    assert total == int(want.sum())


# ---- backends agree exactly ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 111), (7, 111), (989, 111), (1, 49152), (7, 49152)])
def test_native_equals_reference(rows, vocab, dtype):
    need("native")
    gen = torch.Generator().manual_seed(rows * vocab)
    x, params = random_logits(rows, vocab, gen, dtype), random_params(rows, gen)
    assert torch.equal(sample(x, **params, backend="native"), sample(x, **params, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 5), (7, 111), (3, 1000)])
def test_triton_equals_reference(rows, vocab, dtype):
    need("triton")
    gen = torch.Generator().manual_seed(rows + vocab)
    x, params = random_logits(rows, vocab, gen, dtype), random_params(rows, gen)
    assert torch.equal(sample(x, **params, backend="triton"), sample(x, **params, backend="reference"))


# Tie-heavy rows: small integer logits (bf16 makes more), -inf entries, every filter. Ties in logit, at the top-k
# boundary, at the top-p boundary and in the draw are where index rules show.
tie_rows = st.integers(1, 6).flatmap(lambda v: st.lists(
    st.lists(st.sampled_from([-INF, -3.0, -1.0, 0.0, -0.0, 0.5, 2.0, 2.0, 7.0]), min_size=v, max_size=v),
    min_size=1, max_size=5))


@settings(deadline=None)  # the first call pays for torch's lazy initialization
@given(logits=tie_rows, temperature=st.sampled_from([0.0, 0.3, 1.0, 4.0]), top_k=st.integers(0, 7),
       top_p=st.sampled_from([0.05, 0.3, 0.5, 0.75, 0.999, 1.0]), min_p=st.sampled_from([0.0, 0.1, 0.5, 0.99]),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 1000))
def test_native_equals_reference_on_ties(logits, temperature, top_k, top_p, min_p, seed, offset):
    need("native")
    x = torch.tensor(logits)
    x[:, 0] = torch.where(torch.isinf(x).all(1), 1.0, x[:, 0])  # no all -inf row
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, offset=offset)
    assert torch.equal(sample(x, **kw, backend="native"), sample(x, **kw, backend="reference"))


def test_triton_equals_reference_on_ties():
    need("triton")
    x = torch.tensor([[2.0, 7.0, 7.0, -INF, 2.0, 0.0, 7.0, 2.0]] * 12)
    params = dict(temperature=torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0]),
                  top_k=torch.tensor([0, 1, 2, 3, 4, 5, 0, 0, 0, 2, 4, 8]),
                  top_p=torch.tensor([1.0, 1.0, 1.0, 0.5, 0.4, 0.9, 0.34, 0.67, 0.999, 1.0, 0.6, 0.2]),
                  min_p=torch.tensor([0.0, 0.0, 0.2, 0.0, 0.0, 0.1, 0.0, 0.5, 0.0, 0.9, 0.0, 0.0]),
                  seed=torch.arange(12), offset=torch.arange(12) * 7)
    assert torch.equal(sample(x, **params, backend="triton"), sample(x, **params, backend="reference"))


# ---- support, frequency, determinism ------------------------------------------------------------------------
# One row with well separated logits (no boundary within float rounding), its allowed set written by hand.
SUPPORT_LOGITS = torch.tensor([1.0, 6.0, -INF, 3.0, 5.5, 0.0, 4.0, 5.0, -INF, 2.0, 4.5, -1.0])
# probabilities at T = 1, in order 1 (6.0), 4 (5.5), 7 (5.0), 10 (4.5), 6 (4.0), 3 (3.0), 9 (2.0), 0 (1.0), ...
SUPPORT_CASES = [
    (dict(temperature=3.0), {0, 1, 3, 4, 5, 6, 7, 9, 10, 11}),  # every finite logit (the least likely: 0.023)
    (dict(temperature=1.0, top_k=3), {1, 4, 7}),
    (dict(temperature=1.0, top_p=0.5), {1, 4}),  # token 1 holds 0.41 of the mass, 1 and 4 hold 0.67
    (dict(temperature=1.0, top_k=5, top_p=0.9), {1, 4, 7, 10}),  # of the top 5: 0.43, 0.69, 0.85 | 0.94
    (dict(temperature=1.0, min_p=0.3), {1, 4, 7}),  # exp(-1) = 0.37 >= 0.3 > exp(-1.5) = 0.22
    (dict(temperature=0.5, top_k=6, min_p=0.04), {1, 4, 7, 10}),  # exp(-3) = 0.050 >= 0.04 > exp(-4) = 0.018
]


@pytest.mark.parametrize(("params", "allowed"), SUPPORT_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_support(backend, params, allowed):
    need(backend)
    draws = 24 if backend == "triton" else 4000
    x = SUPPORT_LOGITS.expand(draws, -1)  # one row, many offsets (stride-0 rows)
    tokens = sample(x, **params, seed=11, offset=torch.arange(draws), backend=backend)
    seen = set(tokens.tolist())
    assert seen <= allowed
    if backend != "triton":
        assert seen == allowed  # and every allowed token turns up


def expected_distribution(x: torch.Tensor, params: dict) -> torch.Tensor:
    """The renormalized distribution over the kept set, in float64 from first principles (sort-based)."""
    t, k, p, mp = params["temperature"], params["top_k"], params["top_p"], params["min_p"]
    probs = torch.softmax(x.double() / t, -1)
    order = torch.sort(x, descending=True, stable=True).indices
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[: k or len(x)]] = True
    in_k = torch.where(keep, probs, 0.0)
    ahead = torch.cumsum(in_k[order], 0) - in_k[order]
    in_p = torch.zeros_like(keep)
    in_p[order] = ahead < p * in_k.sum() if p < 1 else True
    kept = keep & in_p & (probs >= mp * probs.max())
    out = torch.where(kept, probs, 0.0)
    return out / out.sum()


FREQUENCY_PARAMS = dict(temperature=0.8, top_k=12, top_p=0.93, min_p=0.02)


def assert_frequencies(tokens: torch.Tensor, want: torch.Tensor, sigmas: float) -> None:
    """Every token's frequency within `sigmas` binomial standard deviations of its probability; tokens outside
    the support never drawn."""
    n = tokens.numel()
    freq = torch.bincount(tokens, minlength=want.numel()).double() / n
    assert bool((freq[want == 0] == 0).all())
    bound = sigmas * torch.sqrt(want * (1 - want) / n) + 1e-12
    assert bool(((freq - want).abs() <= bound).all()), (freq - want).abs().max()


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_frequencies_match_the_renormalized_distribution(backend):
    need(backend)
    x = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 2
    n = 20_000
    tokens = sample(x.expand(n, -1), **FREQUENCY_PARAMS, seed=5, offset=torch.arange(n), backend=backend)
    # 5.5 sigma per token, at most 12 tokens: a correct sampler fails with probability < 1e-6 (Bonferroni).
    assert_frequencies(tokens, expected_distribution(x, FREQUENCY_PARAMS), sigmas=5.5)


@pytest.mark.slow
def test_frequencies_chi_square_long():
    need("native")
    gen = torch.Generator().manual_seed(4)
    for vocab, n, params in [(1000, 1_000_000, dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)),
                             (1000, 1_000_000, dict(temperature=0.7, top_k=50, top_p=0.9, min_p=0.0)),
                             (49152, 100_000, dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.001))]:
        x = torch.randn(vocab, generator=gen) * 2
        tokens = sample(x.expand(n, -1), **params, seed=9, offset=torch.arange(n))
        want = expected_distribution(x, params)
        live = want * n >= 5  # chi-square cells with enough expected counts; the rest pooled
        count = torch.bincount(tokens, minlength=vocab).double()
        observed = torch.cat([count[live], count[~live].sum().reshape(1)])
        expected = torch.cat([want[live] * n, (want[~live].sum() * n).reshape(1)])
        keep = expected > 0
        chi2 = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
        df = int(keep.sum()) - 1
        z = 4.75  # one-sided p = 1e-6; Wilson-Hilferty quantile of chi-square(df)
        critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
        assert chi2 < critical, (vocab, chi2, critical)


@pytest.mark.parametrize("backend", BACKENDS)
def test_determinism_and_greedy_ties(backend):
    need(backend)
    gen = torch.Generator().manual_seed(6)
    x, params = random_logits(6, 111, gen), random_params(6, gen)
    assert torch.equal(sample(x, **params, backend=backend), sample(x, **params, backend=backend))
    plain = dict(temperature=1.0, seed=params["seed"])  # the full distribution: another offset, other tokens
    assert not torch.equal(sample(x, **plain, offset=0, backend=backend), sample(x, **plain, offset=1, backend=backend))
    # Temperature 0: the exact argmax, lowest index on ties (-0 ties with +0), whatever the other parameters.
    ties = torch.tensor([[1.0, 5.0, 5.0, -INF], [-INF, -2.0, -INF, -2.0], [0.0, -0.0, -1.0, -0.0],
                         [-0.0, 0.0, 0.0, -5.0], [3.0, 3.0, 3.0, 3.0]])
    greedy = sample(ties, temperature=0.0, top_k=1, top_p=0.1, min_p=0.5, seed=123, backend=backend)
    assert greedy.tolist() == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_to_zero_and_top_k_one_agree_with_greedy(backend):
    need(backend)
    gen = torch.Generator().manual_seed(7)
    x = torch.stack([torch.randperm(111, generator=gen) * 0.1 for _ in range(5)])  # logits 0.1 apart
    x[:, ::9] = -INF
    greedy = sample(x, temperature=0.0, backend=backend)
    assert torch.equal(sample(x, temperature=1.0, top_k=1, seed=3, backend=backend), greedy)
    assert torch.equal(sample(x, temperature=1e-3, seed=3, backend=backend), greedy)  # the rest: below exp(-80)
    assert torch.equal(sample(x, temperature=0.7, top_p=1e-6, seed=3, backend=backend), greedy)


def test_batch_invariance():
    need("native")
    gen = torch.Generator().manual_seed(8)
    batch, params = random_logits(989, 49152, gen, scale=2.0), random_params(989, gen)
    params["temperature"][700], params["top_k"][700], params["top_p"][700] = 0.9, 0, 0.95  # the long path
    alone = {name: value[700:701] for name, value in params.items()}
    everyone = sample(batch, **params, backend="native")
    reference = [sample(batch[700:701], **alone, backend=b) for b in ("native", "reference")]
    assert everyone[700] == reference[0][0] == reference[1][0]
    as_scalars = {name: value.item() for name, value in row(params, 700).items()}
    assert sample(batch[700:701], **as_scalars, backend="native")[0] == everyone[700]
    spot = torch.tensor([0, 1, 350, 988])  # other rows: native over the full batch equals the reference alone
    picked = {name: value[spot] for name, value in params.items()}
    assert torch.equal(everyone[spot], sample(batch[spot], **picked, backend="reference"))


def test_batch_invariance_triton():
    need("triton")
    gen = torch.Generator().manual_seed(9)
    batch, params = random_logits(9, 111, gen), random_params(9, gen)
    alone = sample(batch[5:6], **{name: value[5:6] for name, value in params.items()}, backend="triton")
    assert sample(batch, **params, backend="triton")[5] == alone[0] == sample(
        batch[5:6], **{name: value[5:6] for name, value in params.items()}, backend="reference")[0]


@pytest.mark.slow
def test_batch_invariance_triton_long():
    need("triton")
    gen = torch.Generator().manual_seed(10)
    batch, params = random_logits(989, 111, gen), random_params(989, gen)
    together = sample(batch, **params, backend="triton")
    assert torch.equal(together, sample(batch, **params, backend="reference"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_equals_reference(backend, dtype):
    need(backend)
    if backend == "native" and not native_lib().has_cuda:
        pytest.skip("spct._C was built without CUDA")
    gen = torch.Generator().manual_seed(15)
    for rows, vocab in [(1, 111), (7, 49152), (989, 111), (128, 49152)]:
        x, params = random_logits(rows, vocab, gen, dtype), random_params(rows, gen)
        on_gpu = {name: value.cuda() for name, value in params.items()}
        got = sample(x.cuda(), **on_gpu, backend=backend)
        assert got.is_cuda and torch.equal(got.cpu(), sample(x, **params, backend="reference"))
    seed = torch.randint(-(2**63), 2**63 - 1, (4096,), generator=gen)
    assert torch.equal(sample_op.philox_uniform(seed.cuda(), 3, backend=backend).cpu(),
                       sample_op.philox_uniform(seed, 3, backend="reference"))
    bad = torch.randn(3, 50, device="cuda").to(dtype)
    bad[1, 4] = math.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        sample(bad, backend=backend)


# ---- inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_equals_float32_of_the_same_values(backend):
    need(backend)
    gen = torch.Generator().manual_seed(11)
    x, params = random_logits(4, 111, gen, torch.bfloat16), random_params(4, gen)
    assert torch.equal(sample(x, **params, backend=backend), sample(x.float(), **params, backend=backend))


def test_per_row_parameters_as_tensors_lists_and_scalars():
    need("native")
    gen = torch.Generator().manual_seed(12)
    x, params = random_logits(5, 111, gen), random_params(5, gen)
    as_tensors = sample(x, **params)
    as_lists = sample(x, **{name: value.tolist() for name, value in params.items()})
    assert torch.equal(as_tensors, as_lists)
    for r in range(5):
        as_scalars = {name: value.item() for name, value in row(params, r).items()}
        assert sample(x[r:r + 1], **as_scalars)[0] == as_tensors[r]
    zero_d = {name: value[0] for name, value in params.items()}  # 0-d tensors broadcast
    assert torch.equal(sample(x, **zero_d), sample(x, **{n: v.item() for n, v in zero_d.items()}))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_strided_and_expanded_rows(backend):
    need(backend)
    gen = torch.Generator().manual_seed(13)
    wide, params = random_logits(6, 300, gen), random_params(6, gen)
    want = sample(wide[:, 50:250].contiguous(), **params, backend=backend)
    assert torch.equal(sample(wide[:, 50:250], **params, backend=backend), want)  # row stride 300
    assert torch.equal(sample(wide[:, 50:250].t().contiguous().t(), **params, backend=backend), want)  # column-major
    one = wide[2, 50:250]
    assert torch.equal(sample(one.expand(6, -1), **params, backend=backend),
                       sample(one.repeat(6, 1), **params, backend=backend))


def test_empty_batch_and_one_token():
    need("native")
    assert sample(torch.empty(0, 7)).shape == (0,)
    assert sample(torch.empty(0, 0)).dtype == torch.int64
    assert sample(torch.tensor([[-3.0]] * 3), seed=4).tolist() == [0, 0, 0]


def test_torch_op_compiles():
    need("native")
    x = random_logits(3, 111, torch.Generator().manual_seed(14))
    compiled = torch.compile(lambda t: sample(t, temperature=0.7, top_k=5, seed=2), backend="aot_eager")
    assert torch.equal(compiled(x), sample(x, temperature=0.7, top_k=5, seed=2))
    fake = torch.ops.spct.sample(x.to("meta"), *(torch.zeros(3, device="meta", dtype=d) for d in (
        torch.float32, torch.int64, torch.float32, torch.float32, torch.int64, torch.int64)), "auto")
    assert fake.shape == (3,) and fake.dtype == torch.int64


GOOD = torch.zeros(3, 5)
BAD_CALLS = [
    (dict(logits=torch.zeros(5)), "logits must be 2-D"),
    (dict(logits=torch.zeros(2, 3, 4)), "logits must be 2-D"),
    (dict(logits=torch.zeros(3, 5, dtype=torch.float16)), "float32 or bfloat16, got torch.float16"),
    (dict(logits=torch.zeros(3, 5, dtype=torch.int64)), "float32 or bfloat16"),
    (dict(logits=torch.zeros(3, 0)), "empty vocabulary"),
    (dict(temperature=-0.5), "temperature must be finite and >= 0, got -0.5"),
    (dict(temperature=[1.0, INF, 1.0]), "temperature must be finite and >= 0, got inf at row 1"),
    (dict(temperature=[1.0, 1.0, math.nan]), "temperature must be finite and >= 0, got nan at row 2"),
    (dict(temperature=[1.0, 1.0]), "temperature has shape \\(2,\\) for 3 rows"),
    (dict(top_k=-1), "top_k must be >= 0 .* got -1"),
    (dict(top_k=torch.tensor([3, -2, 1])), "top_k must be >= 0 .* got -2 at row 1"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_k=torch.ones(3)), "top_k must hold integers"),
    (dict(top_k=torch.ones(4, dtype=torch.int64)), "top_k has shape \\(4,\\) for 3 rows"),
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\], got 0.0"),
    (dict(top_p=1e-50), "top_p must be in \\(0, 1\\], got 1e-50"),  # 0 in float32
    (dict(top_p=[0.5, 1.5, 0.5]), "top_p must be in \\(0, 1\\], got 1.5 at row 1"),
    (dict(top_p=math.nan), "top_p must be in \\(0, 1\\], got nan"),
    (dict(min_p=1.0), "min_p must be in \\[0, 1\\), got 1.0"),
    (dict(min_p=torch.tensor([0.0, 0.0, -0.1])), "min_p must be in \\[0, 1\\), got -0.1.* at row 2"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=2**64), "seed must be in \\[-2\\^63, 2\\^64\\)"),
    (dict(offset=[1, 2]), "offset has shape \\(2,\\) for 3 rows"),
    (dict(offset=torch.zeros(3)), "offset must hold integers"),
    (dict(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CALLS)
def test_bad_arguments(kwargs, message):
    logits = kwargs.pop("logits", GOOD)
    with pytest.raises(ValueError, match=message):
        sample(logits, **kwargs)


@pytest.mark.parametrize(("fill", "message"), [(math.nan, "row 1 contains NaN"), (INF, "row 1 contains \\+inf"),
                                               (-INF, "row 1 is all -inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_rows(backend, fill, message):
    need(backend)
    x = torch.randn(3, 20)
    x[1] = -INF if fill == -INF else x[1]
    x[1, 7] = fill
    x[2, 3] = math.nan  # a later bad row: the first one is reported
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(ValueError, match=message):
            sample(x.to(dtype), backend=backend)
        with pytest.raises(ValueError, match=message):
            sample(x.to(dtype), temperature=0.0, backend=backend)  # greedy rows are checked too
