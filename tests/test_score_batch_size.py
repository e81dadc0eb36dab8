"""`spct score` writes the same lines whatever --batch-size, exact ties included: samples are seeded by the item's
number, and a tie at the top of the rewards is broken by Philox(seed, item number), not by the item's position in
its batch (`spct.grm.judge.cast_votes`)."""

from __future__ import annotations

import json
import subprocess
import sys

# 32 copies of one item with two identical responses, k = 2 samples of one free token each, then a forced score
# group: the default model writes small integers, so the two responses often get equal rewards. Which items tie
# depends on how the CPU's kernels round (AMX or not draws other samples), so there are enough copies for some item
# after the first to tie on any of them (three copies tied on one CPU and not on another). Item i sits at position 0
# of its batch with --batch-size 1 and at position i % 4 or i % 16 with 4 or 16.
ITEMS = [{"id": f"four-{i}", "query": "What is 2 + 2?", "responses": ["4", "4"]} for i in range(32)]
SEED = 2


def _score(tmp_path, model_dir, batch_size: int) -> bytes:
    out = tmp_path / f"out-{batch_size}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "spct", "score", "--input", str(tmp_path / "items.jsonl"),
                           "--output", str(out), "--model", str(model_dir), "--k", "2", "--seed", str(SEED),
                           "--max-new-tokens", "1", "--force-scores", "--batch-size", str(batch_size)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_bytes()


def _tied(rewards: list) -> bool:
    top = max(r for r in rewards if r is not None)
    return sum(r == top for r in rewards) > 1


def test_score_lines_do_not_depend_on_the_batch_size(tmp_path, default_model_dir):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in ITEMS), encoding="utf-8")
    lines = {b: _score(tmp_path, default_model_dir, b) for b in (1, 4, 16)}
    assert lines[1] == lines[4] == lines[16]
    rows = [json.loads(x) for x in lines[1].decode().splitlines()]
    assert [r["id"] for r in rows] == [it["id"] for it in ITEMS]
    assert all(r["num_valid"] == 2 for r in rows)  # forced groups: every sample is valid
    tied = [i for i, r in enumerate(rows) if _tied(r["rewards"])]
    # the test is about ties: one must occur, at a position that moves with the batch size
    assert any(i > 0 for i in tied), f"no exact tie at the top of the rewards: {[r['rewards'] for r in rows]}"
    for i in tied:
        assert rows[i]["rewards"][rows[i]["best"]] == max(rows[i]["rewards"])
