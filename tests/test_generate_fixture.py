"""`Engine.generate` and forced-score judging give the samples recorded in tests/data/generate_fixture.json.

The fixture was recorded with the static-batch engine before the online engine (issue 15) replaced its insides: a
new engine must give the same samples for the same seeds, with mixed k, lengths, temperatures, top-k / top-p /
min-p, stop strings, min_new_tokens, a chat prompt and forced score groups. fp32 only: its tokens do not depend on
which CPU kernels a machine picks (bf16 rounding can). Rerecord (only for an intended change of the samples) with

    python tests/test_generate_fixture.py --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "generate_fixture.json"
ITEMS = [json.loads(line) for line in (ROOT / "examples" / "items.jsonl").read_text().splitlines() if line.strip()]
CHAT = [{"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three prime numbers and one even number."}]

# name -> generate's keyword arguments (the prompts: strings or chat turns)
CASES = {
    "sampled, k per prompt": dict(
        prompts=["Write a haiku about autumn.", "Once upon a time, in a small village by the sea,",
                 "List the planets of the solar system, in order from the sun:"],
        k=[1, 3, 4], max_new_tokens=20, temperature=0.7, top_p=0.9, seed=[1, 2, 3]),
    "greedy": dict(prompts=[ITEMS[1]["query"], ITEMS[2]["query"]], k=2, max_new_tokens=16, temperature=0.0),
    "stop strings, min tokens, top-k, min-p, chat": dict(
        prompts=["Q: What is the capital of France?\nA:", CHAT], k=3, max_new_tokens=24, min_new_tokens=2,
        temperature=1.0, top_k=50, min_p=0.05, stop=["\n\n", "."], seed=11),
}
JUDGED = dict(k=2, max_new_tokens=8, force_scores=True, seed=5)  # score_batch on the example items


def record(model_dir) -> dict:
    import spct

    grm = spct.GenerativeRewardModel.from_pretrained(str(model_dir), dtype="float32")
    out = {}
    for name, kwargs in CASES.items():
        kwargs = dict(kwargs)
        outs = grm.engine.generate(kwargs.pop("prompts"), **kwargs)
        out[name] = [[{"token_ids": s.token_ids, "finish_reason": s.finish_reason} for s in row] for row in outs]
    judged = grm.score_batch(ITEMS, **JUDGED)
    out["forced scores"] = [{"rewards": j.rewards, "samples": [{"text": s.text, "order": s.order, "tokens": s.num_tokens}
                                                               for s in j.samples]} for j in judged]
    return out


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def now(default_model_dir) -> dict:
    return record(default_model_dir)


@pytest.mark.parametrize("name", [*CASES, "forced scores"])
def test_samples_equal_the_recorded_ones(recorded, now, name):
    want, got = recorded["cases"][name], now[name]
    assert len(got) == len(want)
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, f"{name}: prompt {i} differs from the recording: {g} != {w}"
    # the cases must exercise what they say they do
    if name == "stop strings, min tokens, top-k, min-p, chat":
        assert any(s["finish_reason"] == "stop" for row in got for s in row)
    if name == "forced scores":
        assert all(r == r for j in got for r in j["rewards"])  # forced groups: every reward is a number


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    from spct.engine.models import fetch

    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({"note": "recorded by tests/test_generate_fixture.py --record",
                                   "cases": record(fetch("smollm2-135m"))}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
