r"""extract_scores: principles, critique and scores of many GRM generations in one native pass.

Grammar (bytes; ASCII whitespace WS = [ \t\n\r\v\f]; "any case" means ASCII case-insensitive)
------------------------------------------------------------------------------------------------
Score group
  The scores are the content of the LAST complete group, by start offset, of either kind:
    "\boxed{" CONTENT "}"   (CONTENT ends at the first "}" after the opener)
    "[[" CONTENT "]]"       (CONTENT ends at the first "]]" after the opener)
  An opener without its closer is no group. No group -> invalid.
  CONTENT := WS* NUMBER WS* ("," WS* NUMBER WS*)*
  NUMBER  := "-"? DIGIT+ ("." DIGIT+)?        (integers and plain decimals; no "+", no exponent, no "7." or ".5")
  Valid iff CONTENT matches, holds exactly `num_responses` numbers, and each value v (the nearest double,
  as Python's float()) satisfies lo <= v <= hi. Scores are stored as float32; invalid rows and padding are NaN.

Sections
  Header line: at a line start, DECOR = [ \t#*>-]*, then a KEYWORD in any case ("specific criteria",
  "analysis", "final scores" or "scores"), then [ \t*]*, then ":" or the end of the line.
  principle_span: content of the first "specific criteria" header; critique_span: of the first "analysis"
  header. Content starts after the keyword and any [ \t*:]; it ends at the next header line (any keyword), at
  the score group's opener if that lies inside, or at the end of the text; then WS is trimmed from both ends.
  Spans are byte offsets [begin, end) into the row's UTF-8 text; (-1, -1) when the header is absent.

Principles (inside principle_span)
  A list line: indentation [ \t]*, then a marker ("-", "*", "+" or DIGIT+ followed by "." or ")"), then a space
  or tab. The principles are the list lines indented no deeper than the first list line; when the span has no
  list line, every non-blank line is one.
  name: after the marker, skip [ \t*_]*; up to the first "(" or ":" or the line end; trailing [ \t\r*_] dropped.
  weight: the first "weight" (any case) followed by [ \t:=*]* and an unsigned NUMBER, a percentage when
  [ \t]* "%" follows; else the first "(" [ \t]* NUMBER [ \t]* "%". Percentages are divided by 100; a plain
  number is kept as written; no weight -> None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Union

import numpy as np
import torch

from spct import _native
from spct.ops.ref import extract_scores as ref
from spct.ops.token_bytes import TokenBytes

Text = Union[str, bytes, bytearray, memoryview]


@dataclass(eq=False)
class Extraction:
    """Results for N generations.

    scores: (N, n_max) float32, NaN where invalid or padded; valid: (N,) bool;
    principle_span, critique_span: (N, 2) int64 byte offsets into each row's text, -1 where absent;
    principles: per row, a list of (name, weight or None); texts: the (detokenized) generations.
    """

    scores: torch.Tensor
    valid: torch.Tensor
    principle_span: torch.Tensor
    critique_span: torch.Tensor
    _packed: ref.Packed = field(repr=False)

    def __len__(self) -> int:
        return self.valid.shape[0]

    @cached_property
    def _host(self) -> ref.Packed:
        return ref.Packed(*(_to_numpy(a) for a in self._packed))

    def text_bytes(self, row: int) -> bytes:
        """Row `row`'s generation as raw bytes (the offsets of the spans refer to these)."""
        off = self._host.row_offsets
        return self._host.text[off[row] : off[row + 1]].tobytes()

    @cached_property
    def texts(self) -> list[str]:
        """Every row's generation, decoded as UTF-8 (invalid bytes replaced)."""
        return [self.text_bytes(r).decode("utf-8", "replace") for r in range(len(self))]

    @cached_property
    def principles(self) -> list[list[tuple[str, float | None]]]:
        host = self._host
        starts = np.concatenate([[0], np.cumsum(host.item_counts)])
        out = []
        for r in range(len(self)):
            row = self.text_bytes(r)
            items = []
            for k in range(starts[r], starts[r + 1]):
                b, e = host.item_spans[k]
                w = float(host.item_weights[k])
                items.append((row[b:e].decode("utf-8", "replace"), None if math.isnan(w) else w))
            out.append(items)
        return out


def _to_numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_range(score_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ValueError(f"score_range must be a pair (lo, hi) of numbers, got {score_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"score_range must be finite with lo <= hi, got {score_range!r}")
    return lo, hi


def _check_num_responses(num_responses: int | Sequence[int] | torch.Tensor, rows: int) -> np.ndarray:
    if isinstance(num_responses, (int, np.integer)):
        counts = np.full(rows, int(num_responses), dtype=np.int64)
    else:
        counts = np.asarray(_to_numpy(num_responses), dtype=np.int64).reshape(-1)
        if counts.shape[0] != rows:
            raise ValueError(f"num_responses has {counts.shape[0]} entries for {rows} rows; give one per row or an int")
    bad = np.flatnonzero(counts < 1)
    if bad.size:
        raise ValueError(f"num_responses must be >= 1, got {counts[bad[0]]} at row {bad[0]}")
    return counts


def _as_bytes(text: Text, row: int) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")  # lone surrogates become (invalid) bytes, never an error
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"texts[{row}] must be str or bytes, got {type(text).__name__}")


def _extraction(packed: ref.Packed) -> Extraction:
    scores, valid, pspan, cspan = (torch.as_tensor(a) for a in packed[2:6])
    return Extraction(scores, valid, pspan, cspan, packed)


def extract_from_texts(texts: Sequence[Text], counts: np.ndarray, lo: float, hi: float,
                       backend: str = "auto") -> ref.Packed:
    """Parse generations given as text: native when built, else the reference."""
    rows = [_as_bytes(t, i) for i, t in enumerate(texts)]
    lib = _native.native("extract_scores", "cpu", backend)
    if lib is None:
        return ref.extract_scores(rows, counts.tolist(), lo, hi)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    text = np.frombuffer(b"".join(rows), dtype=np.uint8)
    return ref.Packed(*lib.extract_text(text, offsets, counts, lo, hi))


def _check_tokens(token_ids: Any, lengths: Any, vocab: TokenBytes | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(vocab, TokenBytes):
        raise TypeError("token_ids need vocab=spct.TokenBytes.from_tokenizer(tokenizer)")
    ids = torch.as_tensor(token_ids)
    if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_ids must be a 2-D int32/int64 tensor (N, T), got {tuple(ids.shape)} {ids.dtype}")
    rows, cols = ids.shape
    if lengths is None:
        lens = torch.full((rows,), cols, dtype=torch.int64)
    else:
        lens = torch.as_tensor(lengths).to(device="cpu", dtype=torch.int64).reshape(-1)
        if lens.shape[0] != rows:
            raise ValueError(f"lengths has {lens.shape[0]} entries for {rows} rows of token_ids")
    bad = torch.nonzero((lens < 0) | (lens > cols)).flatten()
    if bad.numel():
        r = int(bad[0])
        raise ValueError(f"lengths[{r}] = {int(lens[r])} is outside [0, T = {cols}]")
    return ids.contiguous(), lens


def extract_from_tokens(ids: torch.Tensor, lens: torch.Tensor, vocab: TokenBytes, counts: np.ndarray, lo: float,
                        hi: float, backend: str = "auto") -> ref.Packed:
    """Detokenize and parse on the tensor's device through the registered op `spct::extract_scores_tokens`."""
    out = torch.ops.spct.extract_scores_tokens(ids, lens, *vocab.on(ids.device), vocab.strip_leading_space,
                                               torch.from_numpy(counts), lo, hi, backend)
    return ref.Packed(*out)


@torch.library.custom_op("spct::extract_scores_tokens", mutates_args=())
def _extract_scores_tokens(
    token_ids: torch.Tensor, lengths: torch.Tensor, table_bytes: torch.Tensor, table_offsets: torch.Tensor,
    strip_leading_space: bool, num_responses: torch.Tensor, lo: float, hi: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """The token path as a torch op: returns the `Packed` fields as tensors on token_ids' device (text and
    items too). token_ids: (N, T) int32/int64; lengths, num_responses: (N,) int64 on the CPU."""
    ids, counts = token_ids.contiguous(), num_responses.numpy()
    if ids.is_cuda:
        lib = _native.native("extract_scores", "cuda", backend)
        if lib is not None:
            table = (table_bytes.to(ids.device), table_offsets.to(ids.device), strip_leading_space)
            return tuple(_extract_cuda(lib, ids, lengths, table, counts, lo, hi))
        ids = ids.cpu()  # no CUDA kernel built: the reference below, on the host
    table_bytes, table_offsets = table_bytes.cpu().numpy(), table_offsets.cpu().numpy()
    lib = _native.native("extract_scores", "cpu", backend)
    if lib is not None:
        out = lib.extract_tokens(ids.numpy(), lengths.numpy(), table_bytes, table_offsets, strip_leading_space, counts,
                                 lo, hi)
    else:
        host = TokenBytes(table_bytes, table_offsets, strip_leading_space)
        out = _reference_tokens(ids.numpy(), lengths.numpy(), host, counts, lo, hi)
    return tuple(torch.from_numpy(a if a.flags.writeable else a.copy()).to(token_ids.device) for a in out)


@_extract_scores_tokens.register_fake
def _(token_ids, lengths, table_bytes, table_offsets, strip_leading_space, num_responses, lo, hi, backend):
    ctx = torch.library.get_ctx()
    rows, dev = token_ids.shape[0], token_ids.device
    text, n_max, items = ctx.new_dynamic_size(), ctx.new_dynamic_size(), ctx.new_dynamic_size()

    def empty(*shape, dtype):
        return torch.empty(shape, dtype=dtype, device=dev)

    return (empty(text, dtype=torch.uint8), empty(rows + 1, dtype=torch.int64), empty(rows, n_max, dtype=torch.float32),
            empty(rows, dtype=torch.bool), empty(rows, 2, dtype=torch.int64), empty(rows, 2, dtype=torch.int64),
            empty(rows, dtype=torch.int64), empty(items, 2, dtype=torch.int64), empty(items, dtype=torch.float64))


def _reference_tokens(ids: np.ndarray, lens: np.ndarray, vocab: TokenBytes, counts: np.ndarray, lo: float,
                      hi: float) -> ref.Packed:
    for r in range(ids.shape[0]):
        row = ids[r, : int(lens[r])]
        bad = np.flatnonzero((row < 0) | (row >= len(vocab)))
        if bad.size:
            raise ValueError(f"token id {row[bad[0]]} at row {r}, position {bad[0]} is outside the vocabulary "
                             f"[0, {len(vocab)})")
    rows = ref.detokenize(ids, lens, vocab, vocab.strip_leading_space)
    return ref.extract_scores(rows, counts.tolist(), lo, hi)


def _extract_cuda(lib, ids: torch.Tensor, lens: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor, bool],
                  counts: np.ndarray, lo: float, hi: float) -> ref.Packed:
    """Device path: sizes -> offsets -> detokenize + parse -> principle items; host syncs for the sizes only.

    table: (bytes, offsets, strip_leading_space) of the vocabulary, on ids' device."""
    dev, stream = ids.device, torch.cuda.current_stream(ids.device).cuda_stream
    rows, cols = ids.shape
    table_bytes, table_offsets, strip = table
    vocab = table_offsets.shape[0] - 1
    lens_d = lens.to(dev)
    tokens = (ids.data_ptr(), ids.dtype == torch.int64, rows, cols, ids.stride(0), lens_d.data_ptr(),
              table_bytes.data_ptr(), table_offsets.data_ptr(), vocab, strip)
    row_bytes = torch.empty(rows, dtype=torch.int64, device=dev)
    no_bad = torch.iinfo(torch.int64).max
    bad = torch.full((1,), no_bad, dtype=torch.int64, device=dev)  # read as uint64 by the kernel
    lib.extract_sizes_cuda(tokens, row_bytes.data_ptr(), bad.data_ptr(), stream)
    first_bad = int(bad.item())
    if first_bad != no_bad:
        r, c = divmod(first_bad, cols)
        raise ValueError(f"token id {int(ids[r, c])} at row {r}, position {c} is outside the vocabulary [0, {vocab})")
    offsets = torch.zeros(rows + 1, dtype=torch.int64, device=dev)
    torch.cumsum(row_bytes, 0, out=offsets[1:])
    text = torch.empty(int(offsets[-1].item()), dtype=torch.uint8, device=dev)
    n_max = int(counts.max(initial=0))
    counts_d = torch.from_numpy(counts).to(dev)
    scores = torch.empty((rows, n_max), dtype=torch.float32, device=dev)
    valid = torch.empty(rows, dtype=torch.bool, device=dev)
    pspan, cspan = (torch.empty((rows, 2), dtype=torch.int64, device=dev) for _ in range(2))
    item_counts = torch.empty(rows, dtype=torch.int64, device=dev)
    slow = torch.zeros(rows, dtype=torch.int32, device=dev)
    lib.extract_parse_cuda(tokens, offsets.data_ptr(), text.data_ptr(), counts_d.data_ptr(), n_max, lo, hi,
                           scores.data_ptr(), valid.data_ptr(), pspan.data_ptr(), cspan.data_ptr(),
                           item_counts.data_ptr(), slow.data_ptr(), stream)
    item_starts = torch.cumsum(item_counts, 0) - item_counts
    total = int(item_counts.sum().item())
    item_spans = torch.empty((total, 2), dtype=torch.int64, device=dev)
    item_weights = torch.empty(total, dtype=torch.float64, device=dev)
    lib.extract_items_cuda(offsets.data_ptr(), text.data_ptr(), pspan.data_ptr(), item_starts.data_ptr(), rows,
                           item_spans.data_ptr(), item_weights.data_ptr(), stream)
    packed = ref.Packed(text, offsets, scores, valid, pspan, cspan, item_counts, item_spans, item_weights)
    return _reparse_slow_rows(packed, slow, counts, lo, hi)


def _reparse_slow_rows(packed: ref.Packed, slow: torch.Tensor, counts: np.ndarray, lo: float, hi: float):
    """Rows holding a number beyond the device's exact fast path (over 15 significant digits): redo on the host."""
    rows = torch.nonzero(slow).flatten().cpu()
    if rows.numel() == 0:
        return packed
    host = ref.Packed(*(_to_numpy(a) for a in packed))
    texts = [host.text[host.row_offsets[r] : host.row_offsets[r + 1]].tobytes() for r in rows.tolist()]
    fixed = extract_from_texts(texts, counts[rows.numpy()], lo, hi)
    dev = packed.scores.device
    scores = np.full((len(texts), packed.scores.shape[1]), np.nan, dtype=np.float32)
    scores[:, : fixed.scores.shape[1]] = fixed.scores
    packed.scores[rows.to(dev)] = torch.from_numpy(scores).to(dev)
    packed.valid[rows.to(dev)] = torch.from_numpy(fixed.valid).to(dev)
    starts = np.concatenate([[0], np.cumsum(host.item_counts)])
    index = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows.tolist()]).astype(np.int64)
    packed.item_weights[torch.from_numpy(index).to(dev)] = torch.from_numpy(fixed.item_weights).to(dev)
    return packed


def extract_scores(
    texts: Sequence[Text] | None = None,
    *,
    token_ids: Any = None,
    lengths: Any = None,
    vocab: TokenBytes | None = None,
    num_responses: int | Sequence[int] | torch.Tensor,
    score_range: Sequence[float] = (1, 10),
    backend: str = "auto",
) -> Extraction:
    """Extract principles, critique spans and scores from N GRM generations (grammar: module docstring).

    texts: N str or bytes; OR token_ids: (N, T) int32/int64 tensor (CPU or CUDA) with lengths: (N,) (default T)
    and vocab: TokenBytes. num_responses: int or (N,) ints >= 1. score_range: inclusive (lo, hi).
    backend: "auto" (the native kernel for the data's device when built, else the reference), "native" or
    "reference" (the pure-Python oracle, on the host).
    returns: Extraction with scores (N, max(num_responses)) float32, valid (N,) bool, spans (N, 2) int64.
    """
    if (texts is None) == (token_ids is None):
        raise TypeError("give exactly one of texts or token_ids")
    lo, hi = _check_range(score_range)
    if backend not in _native.BACKENDS:
        raise ValueError(f"backend must be one of {_native.BACKENDS}, got {backend!r}")
    if texts is not None:
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a sequence of generations, not a single str or bytes")
        counts = _check_num_responses(num_responses, len(texts))
        return _extraction(extract_from_texts(texts, counts, lo, hi, backend))
    ids, lens = _check_tokens(token_ids, lengths, vocab)
    counts = _check_num_responses(num_responses, ids.shape[0])
    return _extraction(extract_from_tokens(ids, lens, vocab, counts, lo, hi, backend))
