"""Shared fixtures: the one tolerance table, the default model and its tokenizer, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU only in the interpreter, which must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import settings

# Property tests: 300 examples by default; HYPOTHESIS_PROFILE=long for a deep hunt.
settings.register_profile("default", max_examples=300)
settings.register_profile("long", max_examples=30_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The ONE tolerance table for float ops, per dtype (torch.testing.assert_close(rtol=..., atol=...)).
# Parsing, selection and greedy tokens are compared exactly, never with these.
TOLERANCES = {
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
}

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests that need it skip with a message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is not beside the checkout (looked in {SHARED_DATA}); skipping")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model `smollm2-135m`, fetched and converted once into the spct cache."""
    from spct.engine.models import fetch

    return fetch("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


# The fixtures that load the real default model (fetched and converted on first use: a 93 MB download on an empty
# cache), directly or through another fixture. A test that needs one of them gets the `model` marker, so
# `-m "not slow and not model"` is the quick subset that needs no model. Keyed by test file for fixtures whose
# name is local to one file.
MODEL_FIXTURES = {"default_model_dir", "smollm2_tokenizer"}
MODEL_FIXTURES_IN_FILE = {"test_models.py": {"model_dir"}}


def pytest_collection_modifyitems(config, items):
    """Marks with `model` every test that needs the real default model (item.fixturenames holds the fixtures a test
    uses through other fixtures too)."""
    for item in items:
        needs = MODEL_FIXTURES | MODEL_FIXTURES_IN_FILE.get(item.path.name, set())
        if needs.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


def pytest_report_header(config):
    import spct
    from spct import _native

    lib = _native.module()
    native = "missing" if lib is None else f"{lib.__file__} (cuda={lib.has_cuda})"
    return f"spct {spct.__version__}, native module {native}, SPCT_STRICT={os.environ.get('SPCT_STRICT', '0')}"
