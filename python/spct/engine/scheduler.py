"""The online engine's scheduler: which tokens each step computes, and where their KV lives.

Bookkeeping only (no model, no tensors but the step's index arrays). The KV is a pool of blocks
(`spct.engine.kv_blocks`): a request's prompt is one sequence; when its prefill ends it forks into k samples that
share its full blocks (a partial last block is copied, copy on write); the prompt's full blocks enter the radix
cache as soon as they are computed, so a later prompt with the same prefix matches them and computes only the rest.
Matching is exact to the token: past the full blocks, the first tokens of a cached block (or of a prefilled
prompt's partial last block, kept for reuse in `partials`) that start the rest are copied into a new block, so a
prompt that extends a cached one computes only its new tokens.

A sequence holds tokens (its prompt, plus a sample's generated ids) of which `computed` have their KV written. Each
step takes, for every running sequence, the tokens from `computed` on: one for a decoding sample; a chunk of at
most `prefill_chunk` tokens in all for prompts (and for samples that are recomputed after a preemption), chunks
ending on block boundaries. A sequence whose step reaches its last token gets logits: a prompt forks, a sample
chooses its next token.

Admission is in arrival order while the pool has room for the prompt and one block per sample, and the rows fit
`max_batch`; a prompt that shares more full blocks with a prompt still in prefill than with the cache waits for that
prefill (so k response orders of one query prefill the query once). When a sequence cannot grow, the request
admitted last is preempted: its blocks go back, its generated tokens are kept, and it is recomputed when admitted
again. A request is refused at submission when it would not fit the whole pool alone, so the oldest request always
runs to its end: nothing deadlocks and nothing is dropped.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from spct.engine.kv_blocks import BlockPool, RadixCache
from spct.engine.tokens import Live, Request

__all__ = ["Entry", "Job", "Layout", "Scheduler", "Seq", "index_arrays"]


@dataclass(eq=False)
class Seq:
    """A sequence in the pool: prompt ids plus `gen` (a sample's generated ids, the Live's own list)."""

    prompt: list[int]
    gen: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose KV is written
    cached: int = 0  # leading full blocks registered in the radix cache

    def __len__(self) -> int:
        return len(self.prompt) + len(self.gen)

    def tokens(self, lo: int, hi: int) -> list[int]:
        p = len(self.prompt)
        return (self.prompt[lo:hi] if lo < p else []) + self.gen[max(lo - p, 0):max(hi - p, 0)]


@dataclass(eq=False)
class Job:
    """A request in the scheduler: waiting, then its prompt prefilling, then its samples decoding."""

    req: Request
    order: int  # arrival
    payload: object = None  # the engine's handle
    prompt: Seq | None = None  # while the prompt prefills
    samples: list[Live] = field(default_factory=list)
    seqs: dict[int, Seq] = field(default_factory=dict)  # sample j -> its sequence (unfinished samples)
    admitted: int = -1  # admission order; -1 while waiting
    done: int = 0  # finished samples


@dataclass(eq=False)
class Entry:
    """The tokens [start, start + n) of one sequence in a step; `row` is its first row."""

    job: Job
    seq: Seq
    start: int
    n: int
    row: int
    j: int = -1  # the sample, or -1 for a prompt


@dataclass
class Layout:
    """A step's rows for the runner: tokens, positions and KV slots (block * B + offset) as lists, the
    paged_attention index arrays (int32 numpy), and the rows whose logits are wanted (one per finishing entry)."""

    tokens: list[int]
    positions: list[int]
    slots: list[int]
    index: dict[str, np.ndarray]
    logit_rows: list[int]


class Scheduler:
    """Requests in, steps out. `num_blocks` blocks of `block_size` tokens; the pool's last block id
    (`num_blocks`) is a scratch block for padding rows, outside the pool."""

    def __init__(self, num_blocks: int, block_size: int, *, max_batch: int = 256, prefill_chunk: int = 256):
        if prefill_chunk < block_size:
            raise ValueError(f"prefill_chunk ({prefill_chunk}) must be >= block_size ({block_size})")
        self.pool = BlockPool(num_blocks, block_size)
        self.cache = RadixCache(self.pool)
        self.block_size, self.max_batch, self.prefill_chunk = block_size, max_batch, prefill_chunk
        self.scratch = num_blocks
        self.waiting: list[Job] = []
        self.running: list[Job] = []
        # the partial last block of each prefilled prompt, kept for a prompt that extends it:
        # its full blocks' tokens -> (the tokens in the partial block, the block); oldest first
        self.partials: dict[tuple, tuple[tuple, int]] = {}
        self.copies: list[tuple[int, int]] = []  # (source, destination) KV blocks to copy before the next step
        self.peak_used = 0  # the most blocks in use after a step's allocation
        self.counts = Counter(prefix_hit_tokens=0, prefill_tokens=0, decode_tokens=0, preemptions=0)
        self._preempted = False
        self._arrivals = itertools.count()
        self._admissions = itertools.count()

    @property
    def blocks_used(self) -> int:
        """Blocks held by running sequences (the partial blocks kept for reuse count as cached)."""
        return self.pool.num_used - len(self.partials)

    @property
    def blocks_cached(self) -> int:
        """Blocks kept only for reuse: full blocks in the radix cache and kept partial blocks."""
        return self.pool.num_cached + len(self.partials)

    def take_copies(self) -> list[tuple[int, int]]:
        """The block copies the runner must make before the next step (each once)."""
        copies, self.copies = self.copies, []
        return copies

    # -- requests -----------------------------------------------------------------------------------------------

    def blocks_needed(self, req: Request, own_tokens: int) -> int:
        """Blocks a request needs to run alone to its end: its prompt, and per sample its own tokens (the copied
        partial block of the prompt included)."""
        b, n = self.block_size, len(req.ids)
        return -(-n // b) + req.k * math.ceil((n % b + own_tokens) / b)  # the prompt's partial block until forked

    def add(self, req: Request, payload: object = None) -> Job:
        job = Job(req, next(self._arrivals), payload)
        self.waiting.append(job)
        return job

    def remove(self, job: Job) -> None:
        """Drop a job wherever it is (cancelled, failed or finished); every block it holds goes back."""
        if job in self.waiting:
            self.waiting.remove(job)
        if job in self.running:
            self.running.remove(job)
        self._release(job)

    def _release(self, job: Job) -> None:
        if job.prompt is not None:
            self.pool.decref(job.prompt.blocks)
            job.prompt = None
        for seq in job.seqs.values():
            self.pool.decref(seq.blocks)
        job.seqs = {}

    def release_sample(self, job: Job, j: int) -> None:
        """A finished sample's blocks go back at once."""
        seq = job.seqs.pop(j)
        self.pool.decref(seq.blocks)
        job.done += 1

    # -- a step -------------------------------------------------------------------------------------------------

    def schedule(self) -> list[Entry]:
        """The entries of the next step (empty: nothing to do), blocks allocated for them."""
        entries: list[Entry] = []
        rows = 0
        self._preempted = False
        for job in list(self.running):  # decode rows first, oldest request first
            for j, seq in list(job.seqs.items()):
                if job.admitted >= 0 and len(seq) - seq.computed == 1 and self._grow(job, seq, 1):
                    entries.append(Entry(job, seq, seq.computed, 1, rows, j))
                    rows += 1
        budget = self.prefill_chunk
        self._admit()
        for job in list(self.running):
            seqs = [(-1, job.prompt)] if job.prompt is not None else \
                [(j, s) for j, s in job.seqs.items() if len(s) - s.computed > 1]
            for j, seq in seqs:
                n = self._chunk(seq, budget)
                if n <= 0 or job.admitted < 0 or not self._grow(job, seq, n):
                    continue
                entries.append(Entry(job, seq, seq.computed, n, rows, j))
                rows += n
                budget -= n
        self.peak_used = max(self.peak_used, self.pool.num_used)
        kept, rows = [], 0
        for e in entries:  # a job preempted after its entries were made drops out; rows are renumbered
            if e.job.admitted >= 0:
                e.row, rows = rows, rows + e.n
                kept.append(e)
        return kept

    def _chunk(self, seq: Seq, budget: int) -> int:
        """Tokens of seq to compute this step: the rest, or a budget-bounded chunk that ends on a block boundary."""
        n = min(len(seq) - seq.computed, budget)
        if seq.computed + n < len(seq):
            n = (seq.computed + n) // self.block_size * self.block_size - seq.computed
        return n

    def _grow(self, job: Job, seq: Seq, n: int) -> bool:
        """Blocks for seq's tokens up to computed + n, preempting later requests when the pool is full; False when
        job itself had to be preempted."""
        need = -(-(seq.computed + n) // self.block_size) - len(seq.blocks)
        while need > 0:
            got = self.pool.allocate(need)
            if got is not None:
                seq.blocks += got
                return True
            if self._drop_partials(need):
                continue
            victim = max(self.running, key=lambda x: x.admitted)
            self.preempt(victim)
            if victim is job:
                return False
        return True

    def _drop_partials(self, n: int) -> int:
        """Frees up to n kept partial blocks, oldest first; how many."""
        dropped = 0
        while self.partials and dropped < n:
            _, block = self.partials.pop(next(iter(self.partials)))
            self.pool.decref([block])
            dropped += 1
        return dropped

    def preempt(self, job: Job) -> None:
        """Back to waiting (in arrival order), blocks released. Generated tokens are kept: when admitted again, the
        prompt is prefilled (from the cache where it still is), forked again, and each unfinished sample recomputes
        its tokens before it decodes on."""
        self.running.remove(job)
        self._release(job)
        job.admitted = -1
        self.counts["preemptions"] += 1
        self._preempted = True
        self.waiting.append(job)
        self.waiting.sort(key=lambda x: x.order)

    def _admit(self) -> None:
        if self._preempted:  # the pool is full this step: nobody new (nor a job just preempted) comes in
            return
        rows = sum(len(job.seqs) or job.req.k for job in self.running)
        for job in list(self.waiting):
            if self.running and rows + job.req.k > self.max_batch:
                break
            if self._shares_prefill(job):
                continue
            if not self._start(job):
                break
            self.waiting.remove(job)
            self.running.append(job)
            rows += job.req.k

    def _shares_prefill(self, job: Job) -> bool:
        """Whether a prompt still in prefill holds more of this prompt's full blocks than the cache does."""
        ids, b = job.req.ids, self.block_size
        cached = len(self.cache.lookup(ids[:-1]))
        for other in self.running:
            p = other.prompt
            if p is None:
                continue
            n = min(len(ids) - 1, len(p.prompt))
            same = np.asarray(ids[:n]) != np.asarray(p.prompt[:n])
            common = int(np.argmax(same)) if same.any() else n
            if -(-common // b) > cached:  # up to the block that holds the shared end (copied, not recomputed)
                return True
        return False

    def _start(self, job: Job) -> bool:
        """Admission: match the cache and allocate the prompt; False (nothing held) when the pool cannot take it with
        one spare block per sample still to run."""
        seq = Seq(job.req.ids)
        known = job.req.ids[:-1]  # the last token is always computed: its logits are wanted
        spare = sum(s.finish is None for s in job.samples) if job.samples else job.req.k
        need = -(-len(seq) // self.block_size) - len(self.cache.lookup(known)) + spare
        if need > self.pool.num_free + self.cache.num_evictable() + len(self.partials):
            return False
        seq.blocks, seq.computed = self.cache.match(known)
        seq.cached = len(seq.blocks)
        self.counts["prefix_hit_tokens"] += seq.computed + self._partial_hit(seq, known)
        job.prompt = seq
        job.admitted = next(self._admissions)
        return True

    def _partial_hit(self, seq: Seq, known: list[int]) -> int:
        """After the full-block match: the tokens of a cached block (in the tree, or a kept partial block) that
        start the rest of `known`, copied into a new block of seq's; how many (0: none, or no free block)."""
        b, full = self.block_size, len(seq.blocks)
        rest = known[full * b:(full + 1) * b]
        if not rest:
            return 0
        source, n = self.cache.extension(known)
        kept = self.partials.get(tuple(known[:full * b]))
        if kept is not None:
            m = next((i for i, (x, y) in enumerate(zip(kept[0], rest)) if x != y), min(len(kept[0]), len(rest)))
            if m > n:
                source, n = kept[1], m
        if n == 0:
            return 0
        got = self.pool.allocate(1)  # may evict the source: its KV is copied before the next step writes any
        if got is None:
            return 0
        seq.blocks += got
        self.copies.append((source, got[0]))
        seq.computed += n
        return n

    def fork(self, job: Job, samples: list[Live]) -> None:
        """The prompt's samples take over its blocks: full blocks shared, a partial last block copied per sample
        (`copies`, made before the next step). The prompt's references go back, but for its partial last block,
        kept for a later prompt that extends this one (`partials`)."""
        prompt = job.prompt
        full = len(prompt) // self.block_size
        copies = []
        job.samples = job.samples or samples  # all k (a fork after a preemption takes the unfinished ones)
        for s in samples:
            job.seqs[s.j] = Seq(prompt.prompt, s.tokens, list(prompt.blocks[:full]), len(prompt))
            self.pool.incref(prompt.blocks[:full])
        for s in samples if full < len(prompt.blocks) else ():
            seq = job.seqs[s.j]
            if not self._grow(job, seq, 0):
                return  # the job itself was preempted: all its blocks went back; it is recomputed later
            copies.append((prompt.blocks[full], seq.blocks[-1]))
        self.pool.decref(prompt.blocks[:full])
        if full < len(prompt.blocks):  # the partial last block is kept for a prompt that extends this one
            key = tuple(prompt.prompt[:full * self.block_size])
            old = self.partials.pop(key, None)
            if old is not None:
                self.pool.decref([old[1]])
            self.partials[key] = (tuple(prompt.prompt[full * self.block_size:]), prompt.blocks[full])
        job.prompt = None
        self.copies += copies

    def advance(self, entries: list[Entry]) -> None:
        """After a step: the entries' tokens are computed; full prompt blocks enter the cache."""
        for e in entries:
            e.seq.computed = e.start + e.n
            kind = "decode_tokens" if e.j >= 0 and e.n == 1 else "prefill_tokens"
            self.counts[kind] += e.n
            if e.j < 0:
                full = e.seq.computed // self.block_size
                if full > e.seq.cached:
                    self.cache.insert(e.seq.prompt[:full * self.block_size], e.seq.blocks[:full])
                    e.seq.cached = full

    # -- the attention layout -----------------------------------------------------------------------------------

    def layout(self, entries: list[Entry], pad_to: int) -> Layout:
        """Rows, slots and segments of a step (module docstring of spct.ops.paged_attention), with padding rows up
        to a multiple of `pad_to` (they write and read the scratch block)."""
        b = self.block_size
        tokens, positions, slots, logit_rows = [], [], [], []
        for e in entries:
            tokens += e.seq.tokens(e.start, e.start + e.n)
            positions += range(e.start, e.start + e.n)
            slots += [e.seq.blocks[p // b] * b + p % b for p in range(e.start, e.start + e.n)]
            if e.start + e.n == len(e.seq):
                logit_rows.append(e.row + e.n - 1)
        real = len(tokens)
        pad = -real % pad_to
        tokens += [0] * pad
        positions += [0] * pad
        slots += [self.scratch * b] * pad
        segments, depth = _shared_segments(entries, b)
        for i, e in enumerate(entries):  # each entry's own tail: its blocks past the shared ones, causal
            first, last = depth[i], -(-(e.start + e.n) // b)
            segments.append((e.seq.blocks[first:last], e.start + e.n - first * b, range(e.row, e.row + e.n),
                             True, first * b))
        if pad:
            segments.append(([self.scratch], 1, range(real, real + pad), False, 0))
        return Layout(tokens, positions, slots, index_arrays(segments, positions), logit_rows)


def _shared_segments(entries: list[Entry], b: int) -> tuple[list, list[int]]:
    """Segments for the full blocks (before each entry's first token's block) that two or more entries share:
    maximal runs of blocks with the same entries, parents before children. Also each entry's shared depth in
    blocks."""
    root: dict = {}
    for i, e in enumerate(entries):
        node = root
        for block in e.seq.blocks[: e.start // b]:
            child = node.get(block)
            if child is None:
                child = node[block] = ({}, [])
            child[1].append(i)
            node = child[0]
    segments, depth = [], [0] * len(entries)
    stack = [root]
    while stack:
        node = stack.pop()
        for block, (children, members) in node.items():
            if len(members) < 2:
                continue
            run = [block]
            while len(children) == 1:
                (nxt, (grand, inner)), = children.items()
                if len(inner) != len(members):
                    break
                run.append(nxt)
                children = grand
            rows = [r for i in members for r in range(entries[i].row, entries[i].row + entries[i].n)]
            segments.append((run, len(run) * b, rows, False, depth[members[0]] * b))
            for i in members:
                depth[i] += len(run)
            stack.append(children)
    return segments, depth


def index_arrays(segments: list, positions: list[int]) -> dict[str, np.ndarray]:
    """paged_attention's index arrays (int32; causal bool) from (blocks, length, rows, causal, start) tuples."""
    i32 = lambda v: np.asarray(v, dtype=np.int32)  # noqa: E731
    blocks = [blk for s in segments for blk in s[0]]
    rows = [r for s in segments for r in s[2]]
    return {"block_ids": i32(blocks),
            "seg_block_indptr": i32(np.cumsum([0] + [len(s[0]) for s in segments])),
            "seg_len": i32([s[1] for s in segments]),
            "seg_row_indptr": i32(np.cumsum([0] + [len(s[2]) for s in segments])),
            "seg_rows": i32(rows),
            "causal": np.asarray([s[3] for s in segments], dtype=bool),
            "q_pos": i32(positions),
            "seg_start": i32([s[4] for s in segments])}
