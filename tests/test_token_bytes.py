"""TokenBytes: byte tables from real tokenizers (byte-level BPE, SentencePiece with byte fallback, special tokens)
and their round trips through extract_scores' token path (the op's own tests: tests/test_extract_scores.py)."""

from __future__ import annotations

import pytest
import torch
from extract_helpers import GRM_SAMPLE, TEXTS, assert_packed_equal, pad

import spct


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


def test_random_ids_decode_like_batch_decode(smollm2_tokenizer, smol_table):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(smol_table), (16, 50), generator=gen)
    ex = spct.extract_scores(token_ids=ids, vocab=smol_table, num_responses=1)
    assert ex.texts == smollm2_tokenizer.batch_decode(ids, skip_special_tokens=True)


def test_unsupported_tokenizer_is_refused():
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.decoder = decoders.WordPiece()
    with pytest.raises(ValueError, match=r"uses \['WordPiece'\]"):
        spct.TokenBytes.from_tokenizer(tok)
