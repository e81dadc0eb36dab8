"""Ops: each checks its inputs, then dispatches to the native kernel, Triton, or its reference in ops.ref."""

from spct.ops.extract_scores import Extraction, extract_scores
from spct.ops.token_bytes import TokenBytes

__all__ = ["Extraction", "TokenBytes", "extract_scores"]
