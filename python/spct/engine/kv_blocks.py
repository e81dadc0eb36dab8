"""KV as blocks: a pool of fixed-size KV blocks with reference counts, and a radix tree that caches full blocks by
the tokens they hold, so that requests sharing a prefix share its KV (issue 15, item 1). Pure Python, no tensors:
the engine keeps the KV itself in one tensor indexed by block id, e.g. (L, 2, num_blocks, block_size, Hkv, D).

Layout
------
- A block holds the K and V of `block_size` consecutive tokens, every layer. Block ids are 0..num_blocks-1.
- A sequence owns a block table: block i holds its tokens [i*block_size, (i+1)*block_size). Only FULL blocks are
  cached and shared (as vLLM does); a partial last block stays private to its sequence.
- The K and V of a token depend on every token before it, so a cached block is named by its whole prefix: the tree
  has one node per full block, each edge keyed by the block's `block_size` token ids, and the path from the root
  spells the prefix. (SGLang's RadixCache compresses runs of tokens into one node; here a node is always one
  block, which keeps splitting out of the picture: a page-granular radix tree.)

Invariants (tested by a random state machine in tests/test_kv_blocks.py)
----------------------------------------------------------------------
- Every block is exactly one of: free (count 0, not cached), cached (count 0, held by the cache, evictable once it
  is a leaf) or used (count > 0, cached or not). `num_free + num_cached + num_used == num_blocks` always.
- A block's count is the number of holders that took it (`allocate`, `incref`, `match`) and did not give it back
  (`decref`); the cache's own hold is not a count, so a cached block with no holder is "cached", not "used".
- The pool never hands out more than num_blocks: `allocate` succeeds in full or returns None and changes nothing
  (it never raises for lack of room).
- Eviction is LRU over unreferenced leaves: a block is evicted only when its count is 0 and no cached block lies
  below it, least recently used (`match` or `insert` of a path through it) first. Evicting a leaf may make its
  parent an evictable leaf; a prefix thus shrinks from its end, and a cached path is always a full prefix.
- Each cached block sits at exactly one place in the tree, and the tokens on its path are the tokens whose KV it
  was inserted with.

Misuse (an unknown id, a count below zero, a negative n, a block cached at another place) is a ValueError naming
the block and its count.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

MIB = 1 << 20  # kv_cache_mb counts MiB


class Evictor(Protocol):
    """What a pool asks of its cache when an allocation needs room."""

    def evict(self, n: int) -> int: ...

    def num_evictable(self) -> int: ...


class BlockPool:
    """`num_blocks` KV blocks of `block_size` tokens, each with a reference count.

    Free blocks are handed out most recently freed first (lowest ids first at the start), so the blocks in use
    stay few and warm in memory (a KV tensor's untouched pages are never faulted in). A cache (`RadixCache(pool)`)
    registers itself as the pool's evictor; `allocate` then evicts unreferenced cached blocks when too few are
    free.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks!r}: must be an int >= 1")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r}: must be an int >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.evictor: Evictor | None = None
        self._count = [0] * num_blocks
        self._cached = [False] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() takes the top
        self._num_used = 0  # blocks with count > 0
        self._num_cached = 0  # cached blocks with count 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Cached blocks nobody references (evictable, if leaves)."""
        return self._num_cached

    @property
    def num_used(self) -> int:
        """Blocks with a count above 0 (cached or not)."""
        return self._num_used

    def refcount(self, block: int) -> int:
        self._check_id(block)
        return self._count[block]

    def is_cached(self, block: int) -> bool:
        self._check_id(block)
        return self._cached[block]

    def state(self, block: int) -> str:
        """"free", "cached" (held by the cache only) or "used" (count > 0)."""
        self._check_id(block)
        return "used" if self._count[block] else "cached" if self._cached[block] else "free"

    def allocate(self, n: int) -> list[int] | None:
        """n free blocks, each with count 1; evicts unreferenced cached blocks if too few are free. None (and
        nothing changed) when fewer than n blocks can be had."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"allocate(n={n!r}): n must be an int >= 0")
        short = n - len(self._free)
        if short > 0:
            if self.evictor is None or self.evictor.num_evictable() < short:
                return None
            self.evictor.evict(short)
            if len(self._free) < n:  # an evictor that evicts less than it counted
                return None
        blocks = [self._free.pop() for _ in range(n)]
        for b in blocks:
            self._count[b] = 1
        self._num_used += n
        return blocks

    def incref(self, blocks: Iterable[int]) -> None:
        """One more holder for each block (a block listed twice gets two). A block must be used or cached: a free
        block has no KV to share (allocate it instead)."""
        blocks = list(blocks)
        for b in blocks:
            self._check_id(b)
            if self._count[b] == 0 and not self._cached[b]:
                raise ValueError(f"incref of block {b}: it is free (count 0, not cached); allocate it instead")
        for b in blocks:
            if self._count[b] == 0:
                self._num_cached -= 1
                self._num_used += 1
            self._count[b] += 1

    def decref(self, blocks: Iterable[int]) -> None:
        """One holder fewer for each block; at count 0 a block becomes cached if the cache holds it, else free.
        All or nothing: a count that would go below 0 changes no block."""
        blocks = list(blocks)
        for b, times in Counter(blocks).items():
            self._check_id(b)
            if self._count[b] < times:
                raise ValueError(f"decref of block {b} {times} time(s): its count is {self._count[b]}; a count "
                                 f"cannot go below 0")
        for b in blocks:
            self._count[b] -= 1
            if self._count[b] == 0:
                self._num_used -= 1
                if self._cached[b]:
                    self._num_cached += 1
                else:
                    self._free.append(b)

    def cache_block(self, block: int) -> None:
        """The cache takes hold of a used block (one whose KV a holder has computed)."""
        self._check_id(block)
        if self._cached[block] or self._count[block] == 0:
            raise ValueError(f"cache_block({block}): the block must be used and not cached; it is "
                             f"{self.state(block)} with count {self._count[block]}")
        self._cached[block] = True

    def uncache_block(self, block: int) -> None:
        """The cache lets go of a block; unreferenced, it becomes free."""
        self._check_id(block)
        if not self._cached[block]:
            raise ValueError(f"uncache_block({block}): the block is not cached (count {self._count[block]})")
        self._cached[block] = False
        if self._count[block] == 0:
            self._num_cached -= 1
            self._free.append(block)

    def _check_id(self, block: int) -> None:
        if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < self.num_blocks:
            raise ValueError(f"block {block!r} does not exist: ids are ints 0..{self.num_blocks - 1}")


class _Node:
    """One cached full block: `key`, the block's tokens; `tick`, when a match or insert last passed through it."""

    __slots__ = ("key", "block", "parent", "children", "tick")

    def __init__(self, key: tuple, block: int, parent: _Node | None, tick: int):
        self.key, self.block, self.parent, self.tick = key, block, parent, tick
        self.children: dict[tuple, _Node] = {}


class RadixCache:
    """Cached full blocks in a tree over token ids (see the module docstring); the pool's evictor.

    The cache holds a block without counting it: a cached block nobody references is "cached" in the pool and may
    be evicted; `match` hands out counted references.
    """

    def __init__(self, pool: BlockPool):
        if pool.evictor is not None:
            raise ValueError("RadixCache(pool): the pool already has a cache; one cache per pool")
        self.pool, self.block_size = pool, pool.block_size
        pool.evictor = self
        self._root = _Node((), -1, None, 0)
        self._nodes: dict[int, _Node] = {}  # block -> its node
        self._leaves: set[_Node] = set()  # nodes without children (the root excluded)
        self._clock = 0
        self._stats = Counter(matches=0, query_tokens=0, hit_tokens=0, inserted_blocks=0, duplicate_blocks=0,
                              evicted_blocks=0)

    def _keys(self, tokens: Sequence[int], n_blocks: int | None = None):
        bs = self.block_size
        n = len(tokens) // bs if n_blocks is None else n_blocks
        return (tuple(tokens[i * bs:(i + 1) * bs]) for i in range(n))

    def _path(self, tokens: Sequence[int]) -> list[_Node]:
        """The cached nodes of the longest cached prefix of tokens, whole blocks."""
        node, path = self._root, []
        for key in self._keys(tokens):
            node = node.children.get(key)
            if node is None:
                break
            path.append(node)
        return path

    def _touch(self, path: list[_Node]) -> None:
        self._clock += 1
        for node in path:
            node.tick = self._clock

    def lookup(self, tokens: Sequence[int]) -> list[int]:
        """The blocks of the longest cached prefix of tokens, without taking them or marking them used (to ask
        how much a request would hit)."""
        return [node.block for node in self._path(tokens)]

    def match(self, tokens: Sequence[int]) -> tuple[list[int], int]:
        """The longest cached prefix of tokens: (its blocks, its length in tokens = len(blocks) * block_size).
        The blocks are increfed for the caller, who decrefs them when done, and marked recently used.

        A caller that needs the logits of the last token matches tokens[:-1] (so at least one token is computed).
        """
        path = self._path(tokens)
        blocks = [node.block for node in path]
        self.pool.incref(blocks)
        self._touch(path)
        self._stats.update(matches=1, query_tokens=len(tokens), hit_tokens=len(blocks) * self.block_size)
        return blocks, len(blocks) * self.block_size

    def extension(self, tokens: Sequence[int]) -> tuple[int, int]:
        """Past the longest cached prefix of tokens (whole blocks): the cached block below it whose tokens share
        the longest start with the rest of tokens -> (that block, how many leading tokens it shares), or (-1, 0).
        Its first tokens' KV are the rest's (the same prefix before them), so a caller may copy them into a block of
        its own and compute only what follows. Nothing is taken or marked used."""
        path = self._path(tokens)
        node = path[-1] if path else self._root
        rest = tuple(tokens[len(path) * self.block_size:(len(path) + 1) * self.block_size])
        best, shared = -1, 0
        for key, child in node.children.items():
            n = _common(key, rest)
            if n > shared:
                best, shared = child.block, n
        return best, shared

    def insert(self, tokens: Sequence[int], blocks: Sequence[int]) -> list[int]:
        """Register blocks[i] as the KV of tokens[i*block_size:(i+1)*block_size] after tokens[:i*block_size].

        The caller holds every block (count >= 1) and keeps its references. Where the prefix is already cached
        under another block, the cached block is kept and the caller's block is a duplicate: the duplicates are
        returned, uncached, for the caller to free (it may switch its table to the cached blocks with `match`).
        """
        blocks = list(blocks)
        if len(blocks) * self.block_size > len(tokens):
            raise ValueError(f"insert of {len(blocks)} blocks of {self.block_size} tokens needs at least "
                             f"{len(blocks) * self.block_size} tokens; got {len(tokens)} (only full blocks are "
                             f"cached)")
        self._check_insert(tokens, blocks)
        node, path, duplicates = self._root, [], []
        for key, block in zip(self._keys(tokens, len(blocks)), blocks):
            child = node.children.get(key)
            if child is None:
                child = self._add(node, key, block)
            elif child.block != block:
                duplicates.append(block)
            node = child
            path.append(node)
        self._touch(path)
        self._stats.update(duplicate_blocks=len(duplicates))
        return duplicates

    def _check_insert(self, tokens: Sequence[int], blocks: list[int]) -> None:
        """Every check of insert before anything changes: held blocks, each at most at one place in the tree."""
        node, placed = self._root, set()
        for key, block in zip(self._keys(tokens, len(blocks)), blocks):
            if self.pool.refcount(block) == 0:
                raise ValueError(f"insert of block {block}: its count is 0; the caller must hold the blocks it "
                                 f"inserts")
            child = node.children.get(key) if node is not None else None
            elsewhere = block in placed or (block in self._nodes and (child is None or child.block != block))
            if elsewhere:
                raise ValueError(f"insert of block {block} (count {self.pool.refcount(block)}): it is already "
                                 f"cached or inserted for another prefix; a block holds the KV of one prefix")
            placed.add(block)
            node = child

    def _add(self, parent: _Node, key: tuple, block: int) -> _Node:
        self.pool.cache_block(block)
        node = _Node(key, block, parent, self._clock)
        parent.children[key] = node
        self._nodes[block] = node
        self._leaves.discard(parent)
        self._leaves.add(node)
        self._stats.update(inserted_blocks=1)
        return node

    def _remove(self, node: _Node) -> None:
        parent = node.parent
        del parent.children[node.key]
        del self._nodes[node.block]
        self._leaves.discard(node)
        if parent is not self._root and not parent.children:
            self._leaves.add(parent)
        self.pool.uncache_block(node.block)

    def evict(self, n: int) -> int:
        """Free up to n unreferenced cached blocks, least recently used leaves first (a parent is a candidate once
        its children are gone). Returns how many were freed."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"evict(n={n!r}): n must be an int >= 0")
        count = self.pool.refcount
        heap = [(leaf.tick, leaf.block, leaf) for leaf in self._leaves if count(leaf.block) == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            self._remove(node)
            freed += 1
            if parent in self._leaves and count(parent.block) == 0:
                heapq.heappush(heap, (parent.tick, parent.block, parent))
        self._stats.update(evicted_blocks=freed)
        return freed

    def num_evictable(self) -> int:
        """How many blocks `evict` could free now: unreferenced cached blocks with no referenced block below
        (O(cached blocks))."""
        # Iterative post-order: a cached path can be thousands of blocks deep, past Python's recursion limit.
        order, stack = [], [self._root]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(node.children.values())
        clean: dict[_Node, bool] = {}  # node -> no block in its subtree (itself included) is referenced
        total = 0
        for node in reversed(order):
            ok = all(clean[child] for child in node.children.values())
            if node is not self._root:
                ok = ok and self.pool.refcount(node.block) == 0
                total += ok
            clean[node] = ok
        return total

    def stats(self) -> dict[str, int]:
        """cached_blocks (in the tree), matches, query_tokens and hit_tokens (sums over matches),
        inserted_blocks, duplicate_blocks (returned by insert) and evicted_blocks, since the cache was made."""
        return {"cached_blocks": len(self._nodes), **self._stats}


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def blocks_for_budget(kv_cache_mb: float, *, layers: int, kv_heads: int, head_dim: int, block_size: int,
                      dtype) -> int:
    """How many blocks fit in kv_cache_mb MiB: a block holds K and V of block_size tokens in every layer,
    2 * layers * block_size * kv_heads * head_dim * dtype.itemsize bytes. dtype: a torch or numpy dtype."""
    for name, value in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                        ("block_size", block_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an int >= 1")
    itemsize = getattr(dtype, "itemsize", None)
    if not isinstance(itemsize, int) or itemsize < 1:
        raise ValueError(f"dtype={dtype!r}: expected a torch or numpy dtype (with an itemsize)")
    if not isinstance(kv_cache_mb, (int, float)) or not math.isfinite(kv_cache_mb) or kv_cache_mb <= 0:
        raise ValueError(f"kv_cache_mb={kv_cache_mb!r}: must be a finite number > 0")
    block_bytes = 2 * layers * block_size * kv_heads * head_dim * itemsize
    budget = int(kv_cache_mb * MIB)
    if budget < block_bytes:
        raise ValueError(f"kv_cache_mb={kv_cache_mb} ({budget} bytes) holds no block: one block of {block_size} "
                         f"tokens takes {block_bytes} bytes ({block_bytes / MIB:.4g} MiB)")
    return budget // block_bytes
