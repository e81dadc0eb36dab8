"""The native layer loop (spct.engine.native_decoder, spct/decoder.h) on the real default model in bfloat16: the same
tokens and logprobs (so the same logits, bit for bit) as forward_paged's Python loop over a prefill in chunks and a
batch of decode steps; a bad slot named in one line; used only where it applies. On a tiny random Qwen3 (q and k
norms), Gemma 2 (sandwich norms, GeGLU, sliding-window and global layers, soft-capped attention) and Gemma 3 (q and k
norms, RoPE tables by layer type): every step's output, residual stream and KV equal the Python loop's bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import spct
from spct.engine.native_decoder import NativeDecoder
from spct.ops import paged_attention as paged
from spct.ops.linear import native_bf16_available


@pytest.fixture(scope="module")
def engine(default_model_dir):
    if not native_bf16_available(torch.device("cpu")):
        pytest.skip("this CPU runs no native bf16 linear (it needs AVX2): the native layer loop does not apply")
    return spct.Engine.from_pretrained(default_model_dir, dtype="bfloat16", kv_cache_mb=32, prefill_chunk=64)


def run(engine, native: bool) -> tuple[list, int]:
    """The outputs, and how many steps the native loop ran."""
    runner = engine.runner
    saved, steps = runner.native_decoder, []
    forward = saved.forward

    def counted(*args):
        out = forward(*args)
        steps.append(out is not None)
        return out

    saved.forward = counted
    runner.native_decoder = saved if native else None
    try:
        prompts = ["Name three colors.", "Write a haiku about the sea, then explain why it works " * 6]
        return engine.generate(prompts, k=[3, 2], max_new_tokens=10, temperature=0.8, seed=[5, 6],
                               return_logprobs=True), sum(steps)
    finally:
        runner.native_decoder = saved
        del saved.forward


def test_same_tokens_and_logprobs_as_the_python_loop(engine):
    assert engine.runner.native_decoder is not None
    (native, steps), (python, none) = run(engine, True), run(engine, False)
    assert steps >= 10 and none == 0  # a prefill of several chunks and 9 decode steps, all native
    for got, want in zip(native, python):
        assert [s.token_ids for s in got] == [s.token_ids for s in want]
        assert [s.logprobs for s in got] == [s.logprobs for s in want]  # exact: the same logits
    assert sum(len(s.token_ids) for out in native for s in out) == 50


def test_bad_values_are_named(engine):
    runner = engine.runner
    kv = runner.new_paged_kv(4, 16)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    plan = paged.Plan(i32([0]), i32([0, 1]), i32([1]), i32([0, 1]), i32([0]), scale=runner.scale)
    x = runner.embed[torch.tensor([1])]
    out = runner.native_decoder.forward({0: plan}, x.clone(), torch.tensor([0]), torch.tensor([0]), kv)
    assert out.shape == x.shape and out.isfinite().all()
    with pytest.raises(ValueError, match=r"^slots\[0\] = 64 is outside \[0, 64\)$"):
        runner.native_decoder.forward({0: plan}, x, torch.tensor([0]), torch.tensor([64]), kv)
    with pytest.raises(ValueError, match=r"^positions\[0\] = -1 is outside \[0, "):
        runner.native_decoder.forward({0: plan}, x, torch.tensor([-1]), torch.tensor([0]), kv)
    outside = paged.Plan(i32([4]), i32([0, 1]), i32([1]), i32([0, 1]), i32([0]), scale=runner.scale)
    with pytest.raises(ValueError, match=r"^block_ids\[0\] = 4 is outside \[0, 4\)$"):
        runner.native_decoder.forward({0: outside}, x, torch.tensor([0]), torch.tensor([0]), kv)


def test_used_only_where_it_applies(engine, monkeypatch):
    assert NativeDecoder.of(engine.runner) is not None
    monkeypatch.setenv("SPCT_NATIVE_DECODER", "0")
    assert NativeDecoder.of(engine.runner) is None
    monkeypatch.delenv("SPCT_NATIVE_DECODER")
    runner = engine.runner
    runner.dtype = torch.float32  # what `of` reads first; restored below
    try:
        assert NativeDecoder.of(runner) is None
    finally:
        runner.dtype = torch.bfloat16


def test_threads_stepping_one_runner_at_once(engine):
    """Engines that share a runner step it from their own threads at once: two threads, 3 and 7 rows, 15 steps
    each, every result equal to the same step run alone (each thread has its own work buffers)."""
    runner = engine.runner
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731

    def step(rows: int) -> torch.Tensor:
        kv = runner.new_paged_kv(rows, 16)
        kv.zero_()
        plan = paged.Plan(i32(list(range(rows))), i32(list(range(rows + 1))), i32([1] * rows),
                          i32(list(range(rows + 1))), i32(list(range(rows))), scale=runner.scale)
        x = runner.embed[torch.arange(rows) + 100]
        return runner.native_decoder.forward({0: plan}, x, torch.zeros(rows, dtype=torch.int64),
                                             torch.arange(rows) * 16, kv)

    alone = {rows: step(rows) for rows in (3, 7)}
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(lambda rows: [step(rows) for _ in range(15)], rows) for rows in (3, 7)]
        for rows, run_ in zip((3, 7), runs):
            assert all(torch.equal(out, alone[rows]) for out in run_.result())


# -- Qwen3 (a norm over each q and k head), Gemma 2 and 3 (sandwich norms, GeGLU, windows, RoPE by layer type) ---


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    """arch -> a bf16 engine on its tiny random checkpoint (tests/tiny_models.py)."""
    import tiny_models

    if not native_bf16_available(torch.device("cpu")):
        pytest.skip("this CPU runs no native bf16 linear (it needs AVX2): the native layer loop does not apply")
    root = tmp_path_factory.mktemp("tiny")
    return lambda arch: spct.Engine.from_pretrained(tiny_models.build(arch, root / arch, default_model_dir),
                                                    dtype="bfloat16", kv_cache_mb=8, prefill_chunk=64)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)  # NaN bits compare too (an unwritten KV slot may hold any)


@pytest.mark.parametrize(("arch", "layouts"), [("qwen3", 1), ("gemma2", 2), ("gemma3", 2)])
def test_steps_equal_the_python_loop_bit_for_bit(tiny, smollm2_tokenizer, arch, layouts):
    """Every step of a generation on a tiny model (prefill chunks of 64 rows, then decode steps): the native loop's
    final norm, residual stream and paged KV equal the Python loop's (`_layers_paged`) run on copies. A 64-row
    chunk's q norm (64 x 4 heads x 32 values) is split over the threads, as in the Python loop. The prompt is longer
    than the Gemmas' window, so their sliding-window and global layers see different keys."""
    engine = tiny(arch)
    runner = engine.runner
    assert runner.plain and runner.native_decoder is not None
    native, rows = runner.native_decoder.forward, []

    def both(plans, x, positions, slots, kv):
        assert len(plans) == layouts
        x_py, kv_py = x.clone(), kv.clone()
        out = native(plans, x, positions, slots, kv)
        assert out is not None
        want = runner._layers_paged(plans, x_py, positions, slots, kv_py)
        assert torch.equal(bits(out), bits(want)) and torch.equal(bits(x), bits(x_py))
        assert torch.equal(bits(kv), bits(kv_py))
        rows.append(x.shape[0])
        return out

    runner.native_decoder.forward = both
    try:
        prompts = [smollm2_tokenizer("The sea at night is " * 16).input_ids, "Name three colors."]
        outs = engine.generate(prompts, k=[3, 2], max_new_tokens=6, temperature=0.8, seed=[5, 6])
    finally:
        del runner.native_decoder.forward
        engine.shutdown()
    assert sum(len(s.token_ids) for out in outs for s in out) == 30
    assert 64 in rows and 5 in rows  # a full prefill chunk and a decode step of all 5 samples


def test_of_the_tiny_architectures(tiny):
    """Qwen3's and the Gemmas' layers run natively; Qwen3-MoE's experts do not."""
    for arch, native in (("qwen3", True), ("gemma2", True), ("gemma3", True), ("qwen3_moe", False)):
        engine = tiny(arch)
        try:
            assert (NativeDecoder.of(engine.runner) is not None) is native
            assert (engine.runner.native_decoder is not None) is native
        finally:
            engine.shutdown()
