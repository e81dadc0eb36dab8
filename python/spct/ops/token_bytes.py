"""TokenBytes: a tokenizer's vocabulary as raw bytes, so kernels can detokenize without Python."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

_BYTE_TOKEN_LEN = len("<0x00>")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _flatten_decoders(decoder: dict | None) -> list[dict]:
    if decoder is None:
        return []
    if decoder.get("type") == "Sequence":
        return [d for sub in decoder["decoders"] for d in _flatten_decoders(sub)]
    return [decoder]


class _PieceDecoder:
    """Maps one vocabulary string to its bytes the way a `tokenizers` decoder chain does, token by token."""

    _SUPPORTED = {"ByteLevel", "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}

    def __init__(self, decoder: dict | None, byte_fallback: bool):
        steps = _flatten_decoders(decoder)
        kinds = {d["type"] for d in steps}
        unsupported = kinds - self._SUPPORTED
        if unsupported:
            raise ValueError(
                f"TokenBytes supports byte-level BPE and SentencePiece-style decoders; this tokenizer's decoder "
                f"uses {sorted(unsupported)} (allowed: {sorted(self._SUPPORTED)})"
            )
        self.byte_level = "ByteLevel" in kinds
        self.byte_fallback = byte_fallback or "ByteFallback" in kinds
        self.replacements: list[tuple[str, str]] = []
        self.strip_leading_space = False
        for d in steps:
            if d["type"] == "Replace":
                self.replacements.append((d["pattern"].get("String", ""), d["content"]))
            elif d["type"] == "Metaspace":
                self.replacements.append((d.get("replacement", "\u2581"), " "))
                scheme = d.get("prepend_scheme", "always" if d.get("add_prefix_space", True) else "never")
                self.strip_leading_space |= scheme != "never"
            elif d["type"] == "Strip":
                if d.get("content") != " " or d.get("start", 0) > 1 or d.get("stop", 0) != 0:
                    raise ValueError(f"TokenBytes supports Strip(' ', start<=1, stop=0) only, got {d}")
                self.strip_leading_space |= d.get("start", 0) == 1

    def __call__(self, piece: str) -> bytes:
        if self.byte_fallback and len(piece) == _BYTE_TOKEN_LEN and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if self.byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode("utf-8")
        for old, new in self.replacements:
            if old:
                piece = piece.replace(old, new)
        return piece.encode("utf-8")


class TokenBytes:
    """A vocabulary as bytes: token `t` is `data[offsets[t]:offsets[t + 1]]`.

    data: (total,) uint8; offsets: (vocab + 1,) int64, both read-only, checked here (offsets from 0 to len(data),
    never decreasing) so that ops can trust them. Special tokens have no bytes (as with
    `skip_special_tokens=True`). `strip_leading_space` drops one leading space from each detokenized row, as
    SentencePiece-style decoders do.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray, strip_leading_space: bool = False):
        data = np.array(data, dtype=np.uint8)  # owned copies
        offsets = np.array(offsets, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != data.size:
            raise ValueError("offsets must be 1-D, start at 0 and end at len(data)")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must not decrease")
        # Read-only: the kernels index data with offsets and rely on the checks above (made once, here).
        data.flags.writeable = offsets.flags.writeable = False
        self.data = data
        self.offsets = offsets
        self.strip_leading_space = bool(strip_leading_space)
        self._device_copies: dict[str, Any] = {}
        self._derived: dict[str, Any] = {}

    @classmethod
    def from_pieces(cls, pieces: Sequence[bytes], strip_leading_space: bool = False) -> TokenBytes:
        """Build from one bytes object per token id."""
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        return cls(data, offsets, strip_leading_space)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenBytes:
        """From a `transformers` fast tokenizer or a `tokenizers.Tokenizer` (byte-level BPE or SentencePiece)."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "to_str"):
            raise TypeError(f"need a fast (Rust-backed) tokenizer, got {type(tokenizer).__name__}")
        spec = json.loads(backend.to_str())
        decode = _PieceDecoder(spec.get("decoder"), bool(spec["model"].get("byte_fallback", False)))
        vocab = backend.get_vocab(with_added_tokens=True)
        size = max(max(vocab.values(), default=-1) + 1, backend.get_vocab_size(with_added_tokens=True))
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        special |= set(getattr(tokenizer, "all_special_ids", []) or [])
        pieces = [b""] * size
        for piece, idx in vocab.items():
            if idx not in special:
                pieces[idx] = decode(piece)
        return cls.from_pieces(pieces, decode.strip_leading_space)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, token_id: int) -> bytes:
        return self.data[self.offsets[token_id] : self.offsets[token_id + 1]].tobytes()

    def on(self, device: Any) -> tuple[Any, Any]:
        """(data, offsets) as torch tensors on `device`, copied once per device."""
        import torch

        key = str(torch.device(device))
        if key not in self._device_copies:
            self._device_copies[key] = (  # writable copies: torch does not take read-only arrays
                torch.from_numpy(self.data.copy()).to(device),
                torch.from_numpy(self.offsets.copy()).to(device),
            )
        return self._device_copies[key]

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """A value computed from this table once (e.g. the token ids an op may ever allow), cached under `key`."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def __repr__(self) -> str:
        return f"TokenBytes(vocab={len(self)}, bytes={self.data.size}, strip_leading_space={self.strip_leading_space})"
