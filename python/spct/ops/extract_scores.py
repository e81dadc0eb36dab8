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

Backends and checks
-------------------
Two paths: `extract_from_texts` (texts) and `extract_from_tokens` (token ids, through the torch op
`spct::extract_scores_tokens`); `extract_scores` checks score_range and picks the path. Each check is done once:
- Python (this module) checks the arguments: exactly one of texts / token_ids; score_range finite with lo <= hi;
  texts a sequence of str or bytes; num_responses an int or one int >= 1 per row; token_ids (N, T) int32/int64;
  lengths (N,) in [0, T]; vocab a TokenBytes (its table was checked when it was built: offsets from 0 to
  len(data), never decreasing); backend (spct.ops.dispatch). It builds the row offsets of the text path itself.
  The torch op runs on arguments `extract_from_tokens` checked.
- The bindings (csrc/bindings/extract_scores.cpp) only marshal (numpy arrays on the host, Views on a device).
- The kernels check the one data value they read anyway: each token id against the vocabulary (the C++
  detokenizer; the CUDA sizes pass), reported as "token id X at row r, position c is outside the vocabulary".
Backend (spct.ops.dispatch.pick): "auto" runs the C++ kernel for host data and the CUDA kernel for CUDA token
ids; CUDA token ids without a CUDA build run on the host (the C++ kernel when built, since it equals the
reference). The CUDA kernel flags rows holding a number beyond its exact fast path; those rows are re-parsed on
the host, so every backend gives the reference's result bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Union

import numpy as np
import torch

from spct.ops import dispatch
from spct.ops._views import view
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


def extract_from_texts(texts: Sequence[Text], num_responses: int | Sequence[int] | torch.Tensor, lo: float,
                       hi: float, backend: str = "auto") -> ref.Packed:
    """The text path: checks texts and num_responses, then parses natively when built, else with the reference.

    texts: N str or bytes; num_responses: int or (N,) ints >= 1; returns the packed arrays (numpy)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of generations, not a single str or bytes")
    counts = _check_num_responses(num_responses, len(texts))
    rows = [_as_bytes(t, i) for i, t in enumerate(texts)]
    if dispatch.pick("extract_scores", "cpu", backend) == "reference":
        return ref.extract_scores(rows, counts.tolist(), lo, hi)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    text = np.frombuffer(b"".join(rows), dtype=np.uint8)
    return ref.Packed(*dispatch.native().extract_scores_text(text, offsets, counts, lo, hi))


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


def extract_from_tokens(token_ids: Any, lengths: Any, vocab: TokenBytes,
                        num_responses: int | Sequence[int] | torch.Tensor, lo: float, hi: float,
                        backend: str = "auto") -> ref.Packed:
    """The token path: checks the arguments, then detokenizes and parses on token_ids' device through the torch op
    `spct::extract_scores_tokens`. token_ids: (N, T) int32/int64; lengths: (N,) in [0, T] or None (T);
    num_responses: int or (N,) ints >= 1; returns the packed arrays as tensors on token_ids' device."""
    ids, lens = _check_tokens(token_ids, lengths, vocab)
    counts = _check_num_responses(num_responses, ids.shape[0])
    out = torch.ops.spct.extract_scores_tokens(ids, lens, *vocab.on(ids.device), vocab.strip_leading_space,
                                               torch.from_numpy(counts), lo, hi, backend)
    return ref.Packed(*out)


@torch.library.custom_op("spct::extract_scores_tokens", mutates_args=())
def _extract_scores_tokens(
    token_ids: torch.Tensor, lengths: torch.Tensor, table_bytes: torch.Tensor, table_offsets: torch.Tensor,
    strip_leading_space: bool, num_responses: torch.Tensor, lo: float, hi: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """The token path as a torch op, on arguments `extract_from_tokens` checked: returns the `Packed` fields as
    tensors on token_ids' device (text and items too). token_ids: (N, T) int32/int64; lengths, num_responses: (N,)
    int64 on the CPU; table_bytes: (bytes,) uint8 and table_offsets: (vocab + 1,) int64 of a TokenBytes."""
    ids, counts = token_ids.contiguous(), num_responses.numpy()
    kind = dispatch.pick("extract_scores", ids.device, backend)
    if ids.is_cuda and kind == "native":
        table = (table_bytes.to(ids.device), table_offsets.to(ids.device), strip_leading_space)
        return tuple(_extract_cuda(ids, lengths, table, counts, lo, hi))
    if ids.is_cuda:  # no CUDA kernel: the host runs it (its C++ kernel equals the reference, and is faster)
        ids, kind = ids.cpu(), dispatch.pick("extract_scores", "cpu", backend)
    table_bytes, table_offsets = table_bytes.cpu().numpy(), table_offsets.cpu().numpy()
    if kind == "native":
        out = dispatch.native().extract_scores_tokens(ids.numpy(), lengths.numpy(), table_bytes, table_offsets,
                                                      strip_leading_space, counts, lo, hi)
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


def _extract_cuda(ids: torch.Tensor, lens: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor, bool],
                  counts: np.ndarray, lo: float, hi: float) -> ref.Packed:
    """Device path: sizes -> offsets -> detokenize + parse -> principle items; host syncs for the sizes only.

    ids: (N, T) contiguous on a CUDA device; lens: (N,) int64; table: (bytes, offsets, strip_leading_space) of
    the vocabulary, on ids' device."""
    lib, stream = dispatch.native(), torch.cuda.current_stream(ids.device).cuda_stream
    lens_d = lens.to(ids.device)
    tokens = lib.ExtractScoresTokens(ids=view(ids), lengths=view(lens_d), table_bytes=view(table[0]),
                                     table_offsets=view(table[1]), strip_leading_space=table[2])
    offsets = _device_row_offsets(lib, tokens, ids, table[1].shape[0] - 1, stream)
    parsed = _device_parse(lib, tokens, offsets, counts, lo, hi, stream)
    item_spans, item_weights = _device_items(lib, offsets, parsed, stream)
    packed = ref.Packed(parsed.text, offsets, parsed.scores, parsed.valid, parsed.principle_span,
                        parsed.critique_span, parsed.item_counts, item_spans, item_weights)
    return _reparse_slow_rows(packed, parsed.slow, counts, lo, hi)


def _device_row_offsets(lib, tokens, ids: torch.Tensor, vocab: int, stream: int) -> torch.Tensor:
    """Row offsets (N + 1,) int64 of the detokenized text on ids' device; a token id outside the vocabulary (the
    sizes kernel's check) is a ValueError."""
    rows, cols = ids.shape
    row_bytes = torch.empty(rows, dtype=torch.int64, device=ids.device)
    no_bad = torch.iinfo(torch.int64).max
    bad = torch.full((1,), no_bad, dtype=torch.int64, device=ids.device)  # read as uint64 by the kernel
    lib.extract_scores_sizes_cuda(tokens, row_bytes=view(row_bytes), bad=view(bad), stream=stream)
    first_bad = int(bad.item())
    if first_bad != no_bad:
        r, c = divmod(first_bad, cols)
        raise ValueError(f"token id {int(ids[r, c])} at row {r}, position {c} is outside the vocabulary [0, {vocab})")
    offsets = torch.zeros(rows + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(row_bytes, 0, out=offsets[1:])
    return offsets


@dataclass
class _DeviceParsed:
    """The parse pass's outputs on the device (fields as in `ref.Packed`); slow: (N,) int32, 1 where a number
    needs the host's exact conversion."""

    text: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    principle_span: torch.Tensor
    critique_span: torch.Tensor
    item_counts: torch.Tensor
    slow: torch.Tensor


def _device_parse(lib, tokens, offsets: torch.Tensor, counts: np.ndarray, lo: float, hi: float,
                  stream: int) -> _DeviceParsed:
    """Detokenize into the text and parse every row on the device; counts: (N,) num_responses on the host."""
    dev, rows, n_max = offsets.device, offsets.shape[0] - 1, int(counts.max(initial=0))
    counts_d = torch.from_numpy(counts).to(dev)
    out = _DeviceParsed(
        text=torch.empty(int(offsets[-1].item()), dtype=torch.uint8, device=dev),
        scores=torch.empty((rows, n_max), dtype=torch.float32, device=dev),
        valid=torch.empty(rows, dtype=torch.bool, device=dev),
        principle_span=torch.empty((rows, 2), dtype=torch.int64, device=dev),
        critique_span=torch.empty((rows, 2), dtype=torch.int64, device=dev),
        item_counts=torch.empty(rows, dtype=torch.int64, device=dev),
        slow=torch.zeros(rows, dtype=torch.int32, device=dev),
    )
    views = {name: view(getattr(out, name)) for name in out.__dataclass_fields__}
    parse = lib.ExtractScoresParse(row_offsets=view(offsets), num_responses=view(counts_d), lo=lo, hi=hi, **views)
    lib.extract_scores_parse_cuda(tokens, parse, stream=stream)
    return out


def _device_items(lib, offsets: torch.Tensor, parsed: _DeviceParsed, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principle items on the device: name spans (P, 2) int64 and weights (P,) float64."""
    counts = parsed.item_counts
    item_starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum().item())
    item_spans = torch.empty((total, 2), dtype=torch.int64, device=offsets.device)
    item_weights = torch.empty(total, dtype=torch.float64, device=offsets.device)
    lib.extract_scores_items_cuda(row_offsets=view(offsets), text=view(parsed.text),
                                  principle_span=view(parsed.principle_span), item_starts=view(item_starts),
                                  item_spans=view(item_spans), item_weights=view(item_weights), stream=stream)
    return item_spans, item_weights


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
    if texts is not None:
        return _extraction(extract_from_texts(texts, num_responses, lo, hi, backend))
    return _extraction(extract_from_tokens(token_ids, lengths, vocab, num_responses, lo, hi, backend))
