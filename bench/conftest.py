"""Fixtures for the benchmarks: the default model's tokenizer (fetched and converted once)."""

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from spct.engine.models import fetch

    return AutoTokenizer.from_pretrained(fetch("smollm2-135m"))
