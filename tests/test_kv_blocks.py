"""spct.engine.kv_blocks: the block pool, the radix prefix cache and the budget, unit by unit, then a random state
machine that checks the module's invariants after every step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spct.engine.kv_blocks import BlockPool, RadixCache, blocks_for_budget


def counts(pool: BlockPool) -> tuple[int, int, int]:
    return pool.num_free, pool.num_cached, pool.num_used


# ---------------------------------------------------------------- BlockPool


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (-1, 4), (4, 0), (2.0, 4), (4, None)])
def test_pool_rejects_bad_sizes(num_blocks, block_size):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        BlockPool(num_blocks, block_size)


def test_allocate_hands_out_distinct_blocks_with_count_one():
    pool = BlockPool(5, 4)
    a, b = pool.allocate(2), pool.allocate(3)
    assert sorted(a + b) == list(range(5))
    assert all(pool.refcount(x) == 1 and pool.state(x) == "used" for x in a + b)
    assert counts(pool) == (0, 0, 5)
    assert pool.allocate(0) == []


@pytest.mark.parametrize("n", [-1, 1.5, "2", None])
def test_allocate_rejects_a_bad_n(n):
    with pytest.raises(ValueError, match=r"allocate\(n=.*must be an int >= 0"):
        BlockPool(3, 2).allocate(n)


def test_allocate_past_the_pool_is_none_and_changes_nothing():
    pool = BlockPool(4, 2)
    held = pool.allocate(3)
    assert pool.allocate(2) is None
    assert pool.allocate(5) is None
    assert counts(pool) == (1, 0, 3)
    assert pool.allocate(1) is not None and pool.allocate(1) is None
    assert [pool.refcount(b) for b in held] == [1, 1, 1]


def test_incref_decref_and_free_order():
    pool = BlockPool(4, 2)
    a = pool.allocate(2)
    pool.incref(a + [a[0]])
    assert [pool.refcount(b) for b in a] == [3, 2]
    pool.decref([a[0], a[0], a[1]])
    assert [pool.refcount(b) for b in a] == [1, 1]
    pool.decref(a[::-1])
    assert counts(pool) == (4, 0, 0) and pool.state(a[0]) == "free"
    # most recently freed first (a[0], then a[1]), then the never-used blocks, lowest first
    assert a == [0, 1] and pool.allocate(4) == [a[0], a[1], 2, 3]


def test_decref_below_zero_names_the_block_and_its_count_and_changes_nothing():
    pool = BlockPool(3, 2)
    a = pool.allocate(2)
    with pytest.raises(ValueError, match=rf"decref of block {a[1]} 2 time\(s\): its count is 1"):
        pool.decref([a[0], a[1], a[1]])
    assert [pool.refcount(b) for b in a] == [1, 1] and counts(pool) == (1, 0, 2)
    pool.decref(a)
    with pytest.raises(ValueError, match=rf"block {a[0]} 1 time\(s\): its count is 0"):
        pool.decref([a[0]])


@pytest.mark.parametrize("block", [-1, 3, 99, "1", 1.0, True, None])
def test_unknown_ids_are_errors_everywhere(block):
    pool = BlockPool(3, 2)
    pool.allocate(3)
    for call in (pool.incref, pool.decref):
        with pytest.raises(ValueError, match=rf"block {block!r} does not exist: ids are ints 0..2"):
            call([block])
    for call in (pool.refcount, pool.is_cached, pool.state, pool.cache_block, pool.uncache_block):
        with pytest.raises(ValueError, match="does not exist"):
            call(block)
    assert counts(pool) == (0, 0, 3)


def test_incref_of_a_free_block_is_an_error():
    pool = BlockPool(3, 2)
    with pytest.raises(ValueError, match="incref of block 0: it is free"):
        pool.incref([0])
    assert counts(pool) == (3, 0, 0)


def test_cache_and_uncache_block_preconditions():
    pool = BlockPool(3, 2)
    with pytest.raises(ValueError, match=r"cache_block\(0\): the block must be used.*free with count 0"):
        pool.cache_block(0)
    with pytest.raises(ValueError, match=r"uncache_block\(0\): the block is not cached \(count 0\)"):
        pool.uncache_block(0)
    [b] = pool.allocate(1)
    pool.cache_block(b)
    with pytest.raises(ValueError, match="must be used and not cached; it is used with count 1"):
        pool.cache_block(b)
    pool.decref([b])
    assert pool.state(b) == "cached" and counts(pool) == (2, 1, 0)
    pool.incref([b])
    assert pool.state(b) == "used" and counts(pool) == (2, 0, 1)
    pool.decref([b])
    pool.uncache_block(b)
    assert pool.state(b) == "free" and counts(pool) == (3, 0, 0)


# ---------------------------------------------------------------- RadixCache

BS = 4


def cache_with(num_blocks: int = 16) -> tuple[BlockPool, RadixCache]:
    pool = BlockPool(num_blocks, BS)
    return pool, RadixCache(pool)


def computed(pool: BlockPool, cache: RadixCache, tokens: list[int]) -> list[int]:
    """A sequence whose KV is computed: its blocks allocated, the full ones inserted and then released. Returns
    the cached blocks of its full blocks (where its prefix was cached already, the older blocks)."""
    blocks = pool.allocate(math.ceil(len(tokens) / BS))
    cache.insert(tokens, blocks[: len(tokens) // BS])
    pool.decref(blocks)
    return cache.lookup(tokens)


def test_one_cache_per_pool():
    pool, _ = cache_with()
    with pytest.raises(ValueError, match="already has a cache"):
        RadixCache(pool)


def test_match_on_an_empty_cache():
    pool, cache = cache_with()
    assert cache.match([1, 2, 3, 4, 5]) == ([], 0) and cache.match([]) == ([], 0)
    assert counts(pool) == (16, 0, 0)


@pytest.mark.parametrize("length", range(0, 15))
def test_match_after_insert_returns_the_blocks_of_any_prefix_at_block_granularity(length):
    pool, cache = cache_with()
    tokens = list(range(100, 113))  # 3 full blocks and a partial one
    blocks = computed(pool, cache, tokens)
    assert counts(pool) == (13, 3, 0)  # the partial last block is private: freed, not cached
    query = tokens[:length] + [7] * (length > 13)
    got, n = cache.match(query)
    full = min(length, 12) // BS
    assert got == blocks[:full] and n == full * BS
    assert all(pool.refcount(b) == 1 for b in got)
    pool.decref(got)
    assert counts(pool) == (13, 3, 0)


def test_match_stops_at_the_first_block_that_differs():
    pool, cache = cache_with()
    blocks = computed(pool, cache, list(range(12)))
    assert cache.match([0, 1, 2, 3, 4, 5, 6, 99, 8, 9, 10, 11])[0] == blocks[:1]
    assert cache.match([9, 1, 2, 3])[0] == []


def test_shared_prefix_blocks_are_shared():
    pool, cache = cache_with()
    prompt = list(range(8))
    a = pool.allocate(3)  # sequence A: prompt + 4 own tokens
    assert cache.insert(prompt + [1, 1, 1, 1], a) == []
    hit, n = cache.match(prompt + [2, 2, 2, 2])  # sequence B reuses the prompt's 2 blocks
    assert hit == a[:2] and n == 8
    assert [pool.refcount(b) for b in a] == [2, 2, 1]
    [own] = pool.allocate(1)
    assert cache.insert(prompt + [2, 2, 2, 2], hit + [own]) == []
    assert cache.lookup(prompt + [1, 1, 1, 1]) == a and cache.lookup(prompt + [2, 2, 2, 2]) == hit + [own]
    pool.decref(a)
    assert [pool.refcount(b) for b in a] == [1, 1, 0] and pool.state(a[2]) == "cached"
    pool.decref(hit + [own])
    assert counts(pool) == (12, 4, 0) and cache.stats()["cached_blocks"] == 4


def test_insert_keeps_the_cached_blocks_and_returns_the_duplicates():
    pool, cache = cache_with()
    tokens = list(range(12))
    first = computed(pool, cache, tokens)
    again = pool.allocate(3)  # the same prompt computed again by a request that missed the cache
    assert cache.insert(tokens + [5], again) == again
    assert cache.lookup(tokens) == first
    assert not any(pool.is_cached(b) for b in again)
    pool.decref(again)  # freed at once: the cache never took them
    assert counts(pool) == (13, 3, 0)
    assert cache.stats()["duplicate_blocks"] == 3


def test_insert_under_a_duplicate_extends_the_cached_path():
    pool, cache = cache_with()
    first = computed(pool, cache, list(range(8)))
    mine = pool.allocate(3)
    assert cache.insert(list(range(12)), mine) == mine[:2]
    assert cache.lookup(list(range(12))) == first + mine[2:]


def test_insert_errors_change_nothing():
    pool, cache = cache_with()
    blocks = pool.allocate(2)
    with pytest.raises(ValueError, match="insert of 2 blocks of 4 tokens needs at least 8 tokens; got 7"):
        cache.insert(list(range(7)), blocks)
    pool.decref(blocks[1:])
    with pytest.raises(ValueError, match=rf"insert of block {blocks[1]}: its count is 0"):
        cache.insert(list(range(8)), blocks)
    with pytest.raises(ValueError, match="does not exist"):
        cache.insert(list(range(8)), [blocks[0], 16])
    with pytest.raises(ValueError, match=rf"block {blocks[0]} \(count 1\): it is already cached or inserted"):
        cache.insert(list(range(8)), [blocks[0], blocks[0]])
    assert cache.stats()["cached_blocks"] == 0 and counts(pool) == (15, 0, 1)
    assert cache.insert(list(range(4)), blocks[:1]) == []
    with pytest.raises(ValueError, match="already cached or inserted for another prefix"):
        cache.insert([9, 9, 9, 9], blocks[:1])
    assert cache.lookup([9, 9, 9, 9]) == [] and cache.lookup(list(range(4))) == blocks[:1]


def test_evict_is_lru_over_leaves():
    pool, cache = cache_with()
    a = computed(pool, cache, [0] * 4 + [1] * 4)
    b = computed(pool, cache, [0] * 4 + [2] * 4)
    c = computed(pool, cache, [3] * 8)
    pool.decref(cache.match([0] * 4 + [1] * 4)[0])  # a becomes the most recently used
    assert cache.evict(1) == 1 and pool.state(b[1]) == "free"  # b's leaf: oldest leaf
    assert cache.evict(1) == 1 and pool.state(c[1]) == "free"
    assert cache.evict(1) == 1 and pool.state(c[0]) == "free"  # c's root block became a leaf, older than a
    assert cache.evict(1) == 1 and pool.state(a[1]) == "free"
    assert cache.evict(5) == 1 and pool.state(a[0]) == "free"
    assert counts(pool) == (16, 0, 0) and cache.stats()["evicted_blocks"] == 5


def test_a_parent_outlives_its_children():
    pool, cache = cache_with()
    chain = computed(pool, cache, list(range(16)))
    pool.decref(cache.match(list(range(4)))[0])  # the root block is newer, but it is no leaf
    for k in (3, 2, 1, 0):
        assert cache.evict(1) == 1 and pool.state(chain[k]) == "free"
        assert all(pool.state(b) == "cached" for b in chain[:k])


def test_a_referenced_block_is_never_evicted():
    pool, cache = cache_with()
    chain = computed(pool, cache, list(range(12)))
    other = computed(pool, cache, [7] * 8)
    held, _ = cache.match(list(range(8)))
    assert cache.num_evictable() == 3
    assert cache.evict(100) == 3  # chain[2] and the whole other path; held blocks and their ancestors stay
    assert [pool.state(b) for b in chain] == ["used", "used", "free"]
    assert all(pool.state(b) == "free" for b in other)
    assert cache.lookup(list(range(12))) == held
    pool.decref(held)
    assert cache.evict(100) == 2 and counts(pool) == (16, 0, 0)


def test_an_unreferenced_parent_of_a_referenced_block_waits():
    pool, cache = cache_with()
    first = computed(pool, cache, list(range(4)))
    mine = pool.allocate(2)  # a request that computed the prefix again and extended it
    assert cache.insert(list(range(8)), mine) == mine[:1]
    assert pool.state(first[0]) == "cached" and cache.num_evictable() == 0
    assert cache.evict(4) == 0 and pool.allocate(15) is None
    pool.decref(mine)
    assert cache.num_evictable() == 2 and pool.allocate(16) is not None


@pytest.mark.parametrize("n", [-1, 0.5, None])
def test_evict_rejects_a_bad_n(n):
    with pytest.raises(ValueError, match=r"evict\(n=.*must be an int >= 0"):
        cache_with()[1].evict(n)


def test_allocate_evicts_lru_when_too_few_are_free():
    pool, cache = cache_with(8)
    old = computed(pool, cache, [1] * 8)
    new = computed(pool, cache, [2] * 8)
    got = pool.allocate(6)  # 4 free + the 2 oldest cached
    assert len(got) == 6 and set(old) <= set(got)
    assert cache.lookup([1] * 8) == [] and cache.lookup([2] * 8) == new
    assert counts(pool) == (0, 2, 6)


def test_allocate_returns_none_when_referenced_blocks_fill_the_pool():
    pool, cache = cache_with(6)
    computed(pool, cache, [1] * 8)
    held = pool.allocate(4)
    cached_hit, _ = cache.match([1] * 8)  # all 6 blocks referenced now
    for n in (1, 2, 6, 7):
        assert pool.allocate(n) is None
    assert counts(pool) == (0, 0, 6)
    pool.decref(cached_hit)
    assert pool.allocate(3) is None  # 2 evictable: a failed allocation evicts nothing
    assert cache.stats()["cached_blocks"] == 2 and counts(pool) == (0, 2, 4)
    assert pool.allocate(2) is not None and counts(pool) == (0, 0, 6)
    pool.decref(held)


def test_stats_count_hits_inserts_and_evictions():
    pool, cache = cache_with()
    computed(pool, cache, list(range(10)))
    pool.decref(cache.match(list(range(6)))[0])
    pool.decref(cache.match([5, 5, 5, 5])[0])
    cache.evict(1)
    assert cache.stats() == {"cached_blocks": 1, "matches": 2, "query_tokens": 10, "hit_tokens": 4,
                             "inserted_blocks": 2, "duplicate_blocks": 0, "evicted_blocks": 1}


def test_a_deep_path_needs_no_recursion():
    pool = BlockPool(5000, 1)
    cache = RadixCache(pool)
    blocks = pool.allocate(5000)
    cache.insert(list(range(5000)), blocks)
    pool.decref(blocks)
    assert cache.num_evictable() == 5000 and cache.evict(5000) == 5000


# ---------------------------------------------------------------- blocks_for_budget

SMOL = {"layers": 30, "kv_heads": 3, "head_dim": 64, "block_size": 16}  # SmolLM2-135M


@pytest.mark.parametrize("dtype, itemsize", [(torch.bfloat16, 2), (torch.float32, 4), (np.dtype("float16"), 2)])
def test_blocks_for_budget(dtype, itemsize):
    block_bytes = 2 * 30 * 16 * 3 * 64 * itemsize
    assert blocks_for_budget(100, **SMOL, dtype=dtype) == 100 * 2**20 // block_bytes
    assert blocks_for_budget(block_bytes / 2**20, **SMOL, dtype=dtype) == 1


def test_a_budget_below_one_block_names_both_sizes():
    with pytest.raises(ValueError, match=r"kv_cache_mb=0.1 \(104857 bytes\) holds no block: one block of 16 "
                                         r"tokens takes 368640 bytes"):
        blocks_for_budget(0.1, **SMOL, dtype=torch.bfloat16)


@pytest.mark.parametrize("change, message", [
    ({"kv_cache_mb": 0}, "kv_cache_mb=0: must be a finite number > 0"),
    ({"kv_cache_mb": float("inf")}, "kv_cache_mb=inf"),
    ({"kv_cache_mb": "1"}, "kv_cache_mb='1'"),
    ({"layers": 0}, "layers=0: must be an int >= 1"),
    ({"head_dim": 64.0}, "head_dim=64.0"),
    ({"dtype": "bf16"}, "dtype='bf16': expected a torch or numpy dtype"),
])
def test_blocks_for_budget_rejects_bad_arguments(change, message):
    args = {"kv_cache_mb": 10, **SMOL, "dtype": torch.bfloat16, **change}
    with pytest.raises(ValueError, match=message):
        blocks_for_budget(args.pop("kv_cache_mb"), **args)


# ---------------------------------------------------------------- the invariants, under random use

SM_BLOCKS, SM_BS = 8, 2
tokens_st = st.lists(st.integers(0, 1), max_size=9)  # a vocabulary of 2 so that prefixes collide


class BlocksMachine(RuleBasedStateMachine):
    """Sequences that match, allocate, grow, fork, insert and release, as an engine would; the model: each
    sequence's tokens and block table (one reference per block), and the token prefix whose KV each block holds."""

    def __init__(self):
        super().__init__()
        self.pool = BlockPool(SM_BLOCKS, SM_BS)
        self.cache = RadixCache(self.pool)
        self.seqs: list[tuple[list[int], list[int]]] = []  # (tokens, blocks)
        self.content: dict[int, tuple[int, ...]] = {}  # block -> the tokens its KV was computed for

    def compute(self, tokens: list[int], blocks: list[int], first: int) -> None:
        """The KV of blocks[first:] is computed (the engine's prefill)."""
        for i in range(first, len(blocks)):
            self.content[blocks[i]] = tuple(tokens[: (i + 1) * SM_BS])

    def check_hit(self, tokens: list[int], hit: list[int]) -> None:
        assert len(hit) <= len(tokens) // SM_BS
        for i, b in enumerate(hit):  # a hit is the KV of exactly these tokens
            assert self.content[b] == tuple(tokens[: (i + 1) * SM_BS])

    def allocate_or_explain(self, n: int) -> list[int] | None:
        before, can = counts(self.pool), self.pool.num_free + self.cache.num_evictable()
        got = self.pool.allocate(n)
        if got is None:
            assert can < n and counts(self.pool) == before
        else:
            assert len(set(got)) == n and all(self.pool.refcount(b) == 1 for b in got)
        return got

    @precondition(lambda self: len(self.seqs) < 5)
    @rule(tokens=tokens_st, look=st.booleans())
    def start(self, tokens, look):
        """A new sequence; without `look` it computes its prefix anew (as a request admitted in the same step as
        another with its prefix does), which makes duplicates."""
        hit, n = self.cache.match(tokens) if look else ([], 0)
        self.check_hit(tokens, hit)
        assert n == len(hit) * SM_BS
        new = self.allocate_or_explain(math.ceil(len(tokens) / SM_BS) - len(hit))
        if new is None:
            self.pool.decref(hit)
            return
        self.compute(tokens, hit + new, len(hit))
        self.seqs.append((list(tokens), hit + new))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), more=st.lists(st.integers(0, 1), min_size=1, max_size=4))
    def grow(self, data, more):
        tokens, blocks = data.draw(st.sampled_from(self.seqs))
        grown = tokens + more
        new = self.allocate_or_explain(math.ceil(len(grown) / SM_BS) - len(blocks))
        if new is None:
            return
        first = len(tokens) // SM_BS  # a partial last block is private: it grows in place
        tokens[:], blocks[:] = grown, blocks + new
        self.compute(tokens, blocks, first)

    @precondition(lambda self: self.seqs and len(self.seqs) < 5)
    @rule(data=st.data())
    def fork(self, data):
        """A second sample of a sequence: shares its full blocks, copies its partial last block."""
        tokens, blocks = data.draw(st.sampled_from(self.seqs))
        full = len(tokens) // SM_BS
        copy = self.allocate_or_explain(len(blocks) - full)
        if copy is None:
            return
        self.pool.incref(blocks[:full])
        self.seqs.append((list(tokens), blocks[:full] + copy))
        self.compute(tokens, blocks[:full] + copy, full)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), switch=st.booleans())
    def insert(self, data, switch):
        tokens, blocks = data.draw(st.sampled_from(self.seqs))
        k = data.draw(st.integers(0, len(tokens) // SM_BS))
        duplicates = self.cache.insert(tokens, blocks[:k])
        cached = self.cache.lookup(tokens)
        assert len(cached) >= k and duplicates == [b for b, c in zip(blocks[:k], cached) if b != c]
        assert not any(self.pool.is_cached(b) for b in duplicates)
        if switch:  # take the cached blocks, free the duplicates
            hit, _ = self.cache.match(tokens[: k * SM_BS])
            assert hit == cached[:k]
            self.pool.decref(blocks[:k])
            blocks[:k] = hit
        self.check_hit(tokens, cached)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def release(self, data):
        i = data.draw(st.integers(0, len(self.seqs) - 1))
        _, blocks = self.seqs.pop(i)
        self.pool.decref(blocks)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def finish(self, data):
        """What an engine does when a sequence ends: cache its full blocks, then let go of them."""
        tokens, blocks = self.seqs.pop(data.draw(st.integers(0, len(self.seqs) - 1)))
        self.cache.insert(tokens, blocks[: len(tokens) // SM_BS])
        self.check_hit(tokens, self.cache.lookup(tokens))
        self.pool.decref(blocks)

    @rule(tokens=tokens_st)
    def probe(self, tokens):
        before = counts(self.pool)
        hit, _ = self.cache.match(tokens)
        assert hit == self.cache.lookup(tokens)
        self.check_hit(tokens, hit)
        self.pool.decref(hit)
        assert counts(self.pool) == before

    @rule(n=st.integers(0, 4))
    def evict(self, n):
        free, can = self.pool.num_free, self.cache.num_evictable()
        freed = self.cache.evict(n)
        assert freed == min(n, can) and self.pool.num_free == free + freed

    @invariant()
    def invariants(self):
        pool, holders = self.pool, [0] * SM_BLOCKS
        for tokens, blocks in self.seqs:
            assert len(blocks) == math.ceil(len(tokens) / SM_BS) and len(set(blocks)) == len(blocks)
            for i, b in enumerate(blocks):
                holders[b] += 1
                assert self.content[b] == tuple(tokens[: (i + 1) * SM_BS])  # nobody else wrote it
        assert pool.num_free + pool.num_cached + pool.num_used == SM_BLOCKS
        states = [pool.state(b) for b in range(SM_BLOCKS)]
        for b in range(SM_BLOCKS):
            assert pool.refcount(b) == holders[b]
            assert states[b] == ("used" if holders[b] else "cached" if pool.is_cached(b) else "free")
            if states[b] == "free":
                self.content.pop(b, None)  # its KV is garbage from now on
            if pool.is_cached(b):  # the cache finds the block by exactly the tokens it was computed for
                prefix = self.content[b]
                path = self.cache.lookup(prefix)
                assert len(prefix) % SM_BS == 0 and len(path) == len(prefix) // SM_BS and path[-1] == b
        assert (pool.num_free, pool.num_cached, pool.num_used) == \
            (states.count("free"), states.count("cached"), states.count("used"))
        assert self.cache.stats()["cached_blocks"] == sum(pool.is_cached(b) for b in range(SM_BLOCKS))
        assert self.cache.num_evictable() == self.expected_evictable()

    def expected_evictable(self) -> int:
        """Unreferenced cached blocks below which (by their token prefixes) no cached block is referenced."""
        cached = [b for b in range(SM_BLOCKS) if self.pool.is_cached(b)]
        used_prefixes = [self.content[c] for c in cached if self.pool.refcount(c)]
        return sum(not self.pool.refcount(b) and not any(p[: len(self.content[b])] == self.content[b]
                                                         for p in used_prefixes) for b in cached)

    def teardown(self):
        for _, blocks in self.seqs:
            self.pool.decref(blocks)
        cached = self.pool.num_cached
        assert self.cache.num_evictable() == cached and self.cache.evict(SM_BLOCKS) == cached
        assert counts(self.pool) == (SM_BLOCKS, 0, 0) and self.cache.stats()["cached_blocks"] == 0


BlocksMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
test_blocks_machine = BlocksMachine.TestCase
