"""extract_scores from token ids: TokenBytes tables from real tokenizers, round trips, native == reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from extract_helpers import GRM_SAMPLE, assert_packed_equal, native_lib, reference_text
from hypothesis import given, settings
from hypothesis import strategies as st

import spct
from spct.ops.extract_scores import extract_from_tokens
from spct.ops.ref import extract_scores as ref

TEXTS = [
    GRM_SAMPLE,
    "Specific Criteria:\n- Caf\u00e9 cr\u00e8me (Weight: 50%)\n- \u65e5\u672c\u8a9e (50%)\nAnalysis: \U0001f600 ok\n[[9]]",
    "def f(x):\n    return x  # code\n\n\tScores: \\boxed{ 2 , 5 }",
    "   leading spaces and trailing   ",
    "",
]


def pad(rows: list[list[int]], pad_id: int, dtype=torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=dtype)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return ids, torch.tensor([len(r) for r in rows])


@pytest.fixture(scope="module")
def smol_table(smollm2_tokenizer):
    return spct.TokenBytes.from_tokenizer(smollm2_tokenizer)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_smollm2_round_trip(smollm2_tokenizer, smol_table, dtype):
    tok = smollm2_tokenizer
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    ids, lengths = pad(rows, tok.pad_token_id or 0, dtype)
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=smol_table, num_responses=2)
    assert ex.texts == TEXTS
    assert ex.texts == tok.batch_decode(rows, skip_special_tokens=True)
    from_text = spct.extract_scores(TEXTS, num_responses=2)
    assert_packed_equal(ex._packed, from_text._packed)
    assert ex.valid.tolist() == [True, False, True, False, False]


def test_special_tokens_contribute_no_text(smollm2_tokenizer, smol_table):
    tok = smollm2_tokenizer
    body = tok(GRM_SAMPLE, add_special_tokens=False)["input_ids"]
    special = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert all(smol_table[t] == b"" for t in special)
    ids = torch.tensor([special[:1] + body[:10] + special + body[10:] + special[1:]])
    ex = spct.extract_scores(token_ids=ids, vocab=smol_table, num_responses=2)
    assert ex.texts == [GRM_SAMPLE]
    assert ex.scores.tolist() == [[8.0, 3.0]]


def test_lengths_default_and_strided_ids(smollm2_tokenizer, smol_table):
    rows = [smollm2_tokenizer(GRM_SAMPLE, add_special_tokens=False)["input_ids"]] * 3
    ids, _ = pad(rows, 0)
    wide = torch.cat([ids, ids], dim=1)[:, : ids.shape[1]]  # a non-contiguous view
    ex = spct.extract_scores(token_ids=wide, vocab=smol_table, num_responses=2)
    assert ex.texts == [GRM_SAMPLE] * 3


def byte_fallback_tokenizer():
    """A SentencePiece-style BPE with byte fallback, trained here on a few lines, as Llama-2 tokenizers are."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [GRM_SAMPLE, "Analysis: Response 1 is better than Response 2.", "Scores: \\boxed{7, 4}"] * 20
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trained.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(trained.to_str())["model"]
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab = {**specials, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}  # byte tokens follow the specials
    for piece, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = spec["merges"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


@pytest.mark.parametrize("wrap", [False, True])
def test_byte_fallback_round_trip(wrap):
    tok = byte_fallback_tokenizer()
    if wrap:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_object=tok)
    backend = getattr(tok, "backend_tokenizer", tok)
    table = spct.TokenBytes.from_tokenizer(tok)
    assert table.strip_leading_space and table[3 + 0xE2] == b"\xe2"
    texts = [t for t in TEXTS if t == t.strip()] + ["\u00fcber \u00e9t\u00e9 \U0001f680 \\boxed{3, 4}"]
    rows = [backend.encode(t).ids for t in texts]
    assert any(3 <= i < 259 for r in rows for i in r), "the test must exercise byte-fallback tokens"
    ids, lengths = pad([[1] + r + [2] for r in rows], 0)
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=table, num_responses=2)
    assert ex.texts == texts
    assert ex.texts == [backend.decode(r) for r in rows]
    assert_packed_equal(ex._packed, spct.extract_scores(texts, num_responses=2)._packed)


@settings(deadline=None)
@given(data=st.data())
def test_token_path_native_equals_reference(smol_table, data):
    native_lib()
    vocab = len(smol_table)
    rows = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(0, 40))
    ids = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=cols, max_size=cols), min_size=rows,
                           max_size=rows)),
        dtype=torch.int64,
    ).reshape(rows, cols)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, cols), min_size=rows, max_size=rows)))
    counts = np.asarray(data.draw(st.lists(st.integers(1, 6), min_size=rows, max_size=rows)), dtype=np.int64)
    got = extract_from_tokens(ids, lengths, smol_table, counts, 1.0, 10.0)
    texts = ref.detokenize(ids.numpy(), lengths.numpy(), smol_table, smol_table.strip_leading_space)
    assert_packed_equal(got, reference_text(texts, counts))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_backend_argument_on_tokens(smollm2_tokenizer, smol_table, dtype):
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS], 0, dtype)
    got = {b: spct.extract_scores(token_ids=ids, lengths=lengths, vocab=smol_table, num_responses=2, backend=b)
           for b in ("auto", "native", "reference")}
    assert_packed_equal(got["native"]._packed, got["reference"]._packed)
    assert_packed_equal(got["auto"]._packed, got["reference"]._packed)


def test_random_ids_decode_like_batch_decode(smollm2_tokenizer, smol_table):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(smol_table), (16, 50), generator=gen)
    ex = spct.extract_scores(token_ids=ids, vocab=smol_table, num_responses=1)
    assert ex.texts == smollm2_tokenizer.batch_decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("bad_id", [49152, 10**9, -1])
def test_token_id_outside_vocab(smol_table, bad_id):
    ids = torch.zeros((3, 5), dtype=torch.int64)
    ids[2, 3] = bad_id
    with pytest.raises(ValueError, match=rf"token id {bad_id} at row 2, position 3 is outside the vocabulary"):
        spct.extract_scores(token_ids=ids, vocab=smol_table, num_responses=1)
    # beyond lengths, anything goes (padding)
    spct.extract_scores(token_ids=ids, lengths=[5, 5, 3], vocab=smol_table, num_responses=1)


@pytest.mark.parametrize(("lengths", "match"), [([2, 6], r"lengths\[1\] = 6 is outside \[0, T = 5\]"),
                                                ([-1, 2], r"lengths\[0\] = -1"), ([1], "1 entries for 2 rows")])
def test_bad_lengths(smol_table, lengths, match):
    with pytest.raises(ValueError, match=match):
        spct.extract_scores(token_ids=torch.zeros((2, 5), dtype=torch.int64), lengths=lengths, vocab=smol_table,
                            num_responses=1)


def test_bad_token_arguments(smol_table):
    with pytest.raises(ValueError, match="2-D int32/int64"):
        spct.extract_scores(token_ids=torch.zeros(5, dtype=torch.int64), vocab=smol_table, num_responses=1)
    with pytest.raises(ValueError, match="2-D int32/int64"):
        spct.extract_scores(token_ids=torch.zeros((1, 5)), vocab=smol_table, num_responses=1)
    with pytest.raises(TypeError, match="TokenBytes.from_tokenizer"):
        spct.extract_scores(token_ids=torch.zeros((1, 5), dtype=torch.int64), num_responses=1)
    with pytest.raises(ValueError, match="num_responses must be >= 1, got 0"):
        spct.extract_scores(token_ids=torch.zeros((1, 5), dtype=torch.int64), vocab=smol_table, num_responses=0)


def test_unsupported_tokenizer_is_refused():
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.decoder = decoders.WordPiece()
    with pytest.raises(ValueError, match=r"uses \['WordPiece'\]"):
        spct.TokenBytes.from_tokenizer(tok)


def test_device_slow_rows_are_redone_on_the_host():
    # The CUDA kernel parses numbers with over 15 significant digits as NaN and flags the row; the launcher's
    # host re-parse must then restore exactly what the C++ kernel gives. Exercised here on CPU tensors.
    from spct.ops.extract_scores import _reparse_slow_rows

    texts = [GRM_SAMPLE, "Specific Criteria:\n- A (Weight: 33.33333333333333333%)\n\\boxed{7.0000000000000000001, 2}",
             "\\boxed{3, 4}", "\\boxed{1." + "1" * 30 + ", 5}"]
    counts = np.asarray([2, 2, 2, 2])
    want = reference_text(texts, counts)
    device_like = ref.Packed(*(torch.from_numpy(np.array(a)) for a in want))
    device_like.scores[[1, 3]] = float("nan")
    device_like.valid[[1, 3]] = False
    device_like.item_weights[-1] = float("nan")
    slow = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    fixed = _reparse_slow_rows(device_like, slow, counts, 1.0, 10.0)
    assert_packed_equal(ref.Packed(*(a.numpy() for a in fixed)), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_cuda_equals_cpu(smollm2_tokenizer, smol_table, dtype):
    tok = smollm2_tokenizer
    texts = TEXTS + ["\\boxed{7.00000000000000000001, 3}", "Specific Criteria:\n- x (Weight: 1.0000000000000000001)"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, lengths = pad(rows, 0, dtype)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, len(smol_table), (64, 300), generator=gen, dtype=dtype)
    for host_ids, host_lens in [(ids, lengths), (noise, torch.randint(0, 301, (64,), generator=gen))]:
        counts = np.full(host_ids.shape[0], 2, dtype=np.int64)
        want = extract_from_tokens(host_ids, host_lens, smol_table, counts, 1.0, 10.0)
        got = extract_from_tokens(host_ids.cuda(), host_lens, smol_table, counts, 1.0, 10.0)
        assert_packed_equal(ref.Packed(*(a.cpu().numpy() for a in got)), want)
    bad = ids.clone().cuda()
    bad[1, 2] = len(smol_table)
    with pytest.raises(ValueError, match=f"token id {len(smol_table)} at row 1, position 2"):
        extract_from_tokens(bad, lengths, smol_table, np.full(len(rows), 2), 1.0, 10.0)


def test_registered_op_passes_opcheck(smollm2_tokenizer, smol_table):
    # spct::extract_scores_tokens is a torch custom op with a fake (meta) implementation for torch.compile.
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS], 0)
    args = (ids, lengths, *smol_table.on("cpu"), smol_table.strip_leading_space, torch.full((len(TEXTS),), 2), 1.0, 10.0,
            "auto")
    torch.library.opcheck(torch.ops.spct.extract_scores_tokens.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_autoj_critiques_real_data(shared_data, smollm2_tokenizer, smol_table):
    # 960 real Auto-J critiques ending in "Rating: [[x]]": every one parses to its recorded score, from text and
    # from SmolLM2 token ids alike, and the native kernel agrees with the reference row by row.
    import json

    rows = [json.loads(line) for line in (shared_data / "autoj" / "single_traindata.jsonl").open(encoding="utf-8")]
    texts = [r["target_output"] for r in rows]
    assert_packed_equal(spct.extract_scores(texts, num_responses=1)._packed, reference_text(texts, 1))
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], 0)
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=smol_table, num_responses=1)
    assert ex.texts == texts
    assert ex.valid.all()
    assert ex.scores[:, 0].tolist() == [r["pred_score"] for r in rows]
