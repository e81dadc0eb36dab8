"""spct: generative reward models with inference-time scaling (SPCT), on native kernels."""

__version__ = "0.1.0"

import importlib
from typing import Any

from spct.ops.extract_scores import Extraction, extract_scores
from spct.ops.prefix_attention import prefix_attention
from spct.ops.sample import sample
from spct.ops.token_bytes import TokenBytes
from spct.ops.vote import Vote, vote

# Heavy subpackages load on first use, so `import spct` stays cheap.
_LAZY = {"engine": "spct.engine", "grm": "spct.grm", "models": "spct.engine.models"}
_LAZY_ATTRS = {"Engine": "spct.engine", "GenerativeRewardModel": "spct.grm", "MetaRewardModel": "spct.grm",
               "pad_samples": "spct.engine"}

__all__ = ["Extraction", "TokenBytes", "Vote", "__version__", "extract_scores", "prefix_attention", "sample", "vote",
           *_LAZY, *_LAZY_ATTRS]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    raise AttributeError(f"module 'spct' has no attribute {name!r}")
