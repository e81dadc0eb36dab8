"""The Engine on a CUDA device (skipped without one; `bash bench/gpu_suite.sh` runs it, docs/gpu.md): greedy decoding
equals transformers' greedy generate on the same device (float32, as tests/test_engine.py on the CPU); a seeded
sample's tokens do not depend on k or on the other prompts of a call (float32 and bfloat16); submit gives what
generate gives; and the native CUDA paged attention kernel the engine decodes with equals the reference and keeps
its per-row rule bit for bit (its Triton kernel: tests/test_paged_attention_triton.py, run on the GPU there).

Prompts are real text: GRM judging prompts whose responses are Python standard-library sources, cut to lengths from
20 to 1,500 tokens (the same on every machine with this Python)."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from conftest import TOLERANCES
from test_paged_attention import AWKWARD, DTYPES, bits, make_layout, run, three_levels

import spct
from spct.ops import dispatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (run bash bench/gpu_suite.sh on a CUDA machine)")

NEW_TOKENS = 24
LENGTHS = [20, 120, 600, 1500]
MODULES = ["textwrap", "heapq", "statistics", "difflib", "shlex"]
SAMPLING = {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.95, "top_k": 100}
KV_MB = 512  # the requests here need a few MiB; the default budget is a quarter of the free GPU memory


def grm_prompt(i: int) -> str:
    a = inspect.getsource(importlib.import_module(MODULES[i % len(MODULES)]))
    b = inspect.getsource(importlib.import_module(MODULES[(i + 1) % len(MODULES)]))
    return (f"You are a skilled judge. Read the query and both responses, write your principles and a critique, "
            f"then score each response from 1 to 10.\n\n[Query]\nWhich implementation is easier to maintain?\n\n"
            f"[Response 1]\n{a[:2500]}\n\n[Response 2]\n{b[:4000]}\n")


@pytest.fixture(scope="module", autouse=True)
def full_float32():
    """float32 matmuls in float32 (no TF32) for the engine and transformers alike: TF32 rounds both to 10-bit
    mantissas and can flip a near tie of the greedy argmax."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer) -> list[list[int]]:
    out = []
    for i, n in enumerate(LENGTHS):
        ids = smollm2_tokenizer(grm_prompt(i)).input_ids
        assert len(ids) >= n, (i, len(ids))
        out.append(ids[:n])
    return out


def cuda_engine(model_dir, dtype: str):
    engine = spct.Engine.from_pretrained(model_dir, dtype=dtype, device="cuda", kv_cache_mb=KV_MB)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def engine32(default_model_dir):
    yield from cuda_engine(default_model_dir, "float32")


@pytest.fixture(scope="module")
def engine16(default_model_dir):
    yield from cuda_engine(default_model_dir, "bfloat16")


@pytest.fixture(scope="module")
def hf_greedy(default_model_dir, prompts) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, float32 on the GPU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).to("cuda").eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids], device="cuda"), do_sample=False, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, pad_token_id=2)
            outs.append(gen[0, len(ids):].tolist())
    del model
    torch.cuda.empty_cache()
    return outs


def tokens(samples) -> list[list[int]]:
    return [s.token_ids for s in samples]


# ---- the engine on CUDA ----------------------------------------------------------------------------------------
def test_the_engine_runs_on_the_gpu(engine32):
    """The weights and the KV live on the GPU; attention and sampling run the CUDA kernels (Triton where spct._C was
    built without CUDA)."""
    assert engine32.runner.device.type == "cuda"
    assert engine32.runner.new_paged_kv(1, 16).is_cuda
    kernel = "native" if dispatch.native_available("paged_attention", "cuda") else "triton"
    assert dispatch.pick("paged_attention", "cuda") == dispatch.pick("sample", "cuda") == kernel


def test_greedy_equals_transformers_one_by_one(engine32, prompts, hf_greedy):
    for ids, want in zip(prompts, hf_greedy):
        got = engine32.generate([ids], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0.0)
        assert got[0][0].token_ids == want, len(ids)
        assert got[0][0].finish_reason == "length"


def test_greedy_equals_transformers_batched_with_k_samples(engine32, prompts, hf_greedy):
    got = engine32.generate(prompts, k=2, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0.0)
    assert [tokens(g) for g in got] == [[want, want] for want in hf_greedy]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_sample_does_not_depend_on_k_or_the_other_prompts(request, prompts, dtype):
    """Sample j of a seeded request: the same alone, with more samples beside it (k = 3 and k = 7), and in a call
    with other prompts (rows of other lengths in the same steps)."""
    engine = request.getfixturevalue("engine32" if dtype == "float32" else "engine16")
    alone = tokens(engine.generate([prompts[2]], k=3, seed=77, **SAMPLING)[0])
    assert len({tuple(t) for t in alone}) > 1  # each sample draws from its own stream
    assert tokens(engine.generate([prompts[2]], k=7, seed=77, **SAMPLING)[0])[:3] == alone
    batch = engine.generate([prompts[1], prompts[2], prompts[3]], k=[2, 3, 5], seed=[5, 77, 9], **SAMPLING)
    assert tokens(batch[1]) == alone
    assert tokens(engine.generate([prompts[2]], k=3, seed=78, **SAMPLING)[0]) != alone


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_submit_gives_what_generate_gives(request, prompts, dtype):
    """Three requests submitted together (decoded in the same steps) each give what generate gives for it alone."""
    engine = request.getfixturevalue("engine32" if dtype == "float32" else "engine16")
    reqs = [(prompts[0], 2, 11), (prompts[3], 3, 12), (prompts[1], 1, 13)]
    handles = [engine.submit(ids, k=k, seed=seed, **SAMPLING) for ids, k, seed in reqs]
    got = [tokens(h.result(timeout=300)) for h in handles]
    assert got == [tokens(engine.generate([ids], k=k, seed=seed, **SAMPLING)[0]) for ids, k, seed in reqs]


# ---- the native CUDA paged attention kernel --------------------------------------------------------------------
def need_cuda_kernel():
    if not dispatch.native_available("paged_attention", "cuda"):
        pytest.skip("spct._C was built without CUDA (SPCT_CUDA=ON pip install .)")


def on_gpu(layout: dict) -> dict:
    return {name: t.cuda() for name, t in layout.items()}


def causal_layout(dtype) -> dict:
    """Chunk rows 1, 3, 5, 6 at positions 21..24 over a 16-token context and their causal segment from position 16,
    beside decode rows 0, 2, 4 (tests/test_paged_attention.py's prefill-chunk case, smaller)."""
    return make_layout([16, 9, 5], [[0, 1, 2, 3, 4, 5, 6], [1, 3, 5, 6], [0, 2, 4]], 7, heads=6, kv_heads=2, dim=32,
                       block_size=8, dtype=dtype, seed=5, causal=[False, True, False], q_pos=[0, 21, 0, 22, 0, 23, 24],
                       seg_start=[0, 16, 0])


def layouts(dtype) -> dict:
    out = {"three-levels": three_levels(dtype), "causal-chunk": causal_layout(dtype)}
    for case, (seg_lens, seg_rows, rows, heads, kv_heads, block_size) in AWKWARD.items():
        out[case] = make_layout(seg_lens, seg_rows, rows, heads=heads, kv_heads=kv_heads, dim=16,
                                block_size=block_size, dtype=dtype, seed=3)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_paged_attention_cuda_kernel_equals_reference(dtype):
    need_cuda_kernel()
    for case, layout in layouts(dtype).items():
        got = run(on_gpu(layout), backend="native")
        assert got.is_cuda and got.dtype == dtype, case
        torch.testing.assert_close(got.cpu(), run(layout, backend="reference"), **TOLERANCES[dtype], msg=case)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_paged_attention_cuda_rows_do_not_depend_on_segments_or_other_rows(dtype):
    """Row 0 over 5 blocks (the last one partial) as one segment alone, and as row 2 among 4 rows with its blocks
    split into 3 segments shared differently: the same bits (the rule that makes the engine batch-invariant)."""
    need_cuda_kernel()
    cache = make_layout([19], [[0]], 4, heads=6, kv_heads=2, dim=64, block_size=4, dtype=dtype, seed=9,
                        spare_blocks=3)
    mine = cache["block_ids"].tolist()
    q = cache["q"]
    alone = dict(cache, q=q[:1])
    moved = q[[1, 2, 0, 3]]  # row 0 becomes row 2
    split = [(mine[:2], 8, [2, 0, 3]), (mine[2:4], 8, [1, 2]), (mine[4:], 3, [2]), ([5, 6], 6, [0, 1, 3])]
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    beside = dict(cache, q=moved, block_ids=i32([b for ids, _, _ in split for b in ids]),
                  seg_block_indptr=i32([0, 2, 4, 5, 7]), seg_len=i32([n for _, n, _ in split]),
                  seg_row_indptr=i32([0, 3, 5, 6, 9]), seg_rows=i32([r for _, _, rows in split for r in rows]))
    a = run(on_gpu(alone), backend="native")[0]
    b = run(on_gpu(beside), backend="native")[2]
    assert torch.equal(bits(a), bits(b))
    torch.testing.assert_close(a.cpu(), run(alone, backend="reference")[0], **TOLERANCES[dtype])
