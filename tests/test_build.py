"""The package and its native module: version, no libtorch in _C, the CLI end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from extract_helpers import native_lib

import spct

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "grm_generations.jsonl"


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", spct.__version__)


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_native_module_does_not_link_libtorch():
    deps = subprocess.run(["ldd", native_lib().__file__], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in deps or "libomp" in deps  # OpenMP, as built
    assert not re.search(r"libtorch|libc10", deps), deps


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spct", *args], capture_output=True, text=True, timeout=120)


def test_cli_extract(tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_cli("extract", str(EXAMPLES), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["math-1", "chat-7", "chat-8", "code-3"]
    assert [r["scores"] for r in rows] == [[9.0, 3.0], [6.0, 8.0, 5.0], None, None]
    assert rows[0]["principles"] == [{"name": "Correctness", "weight": 0.6}, {"name": "Reasoning", "weight": 0.4}]
    assert "2/4 generations valid" in proc.stderr


def test_cli_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"generation": "x"}\nnot json\n')
    proc = run_cli("extract", str(bad))
    assert proc.returncode != 0 and "bad.jsonl:2: not valid JSON" in proc.stderr
    proc = run_cli("fetch", "no-such-model")
    assert proc.returncode != 0 and "unknown model 'no-such-model'" in proc.stderr


def test_cli_fetch_passes_a_checkpoint_through(default_model_dir):
    proc = run_cli("fetch", str(default_model_dir))
    assert proc.returncode == 0 and proc.stdout.strip() == str(default_model_dir)


def test_cli_generate(tmp_path, default_model_dir):
    prompts = Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl"
    out = tmp_path / "samples.jsonl"
    proc = run_cli("generate", str(prompts), "-m", str(default_model_dir), "-k", "2", "--max-new-tokens", "6",
                   "--temperature", "0", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["capital", "haiku"]
    for r in rows:
        assert len(r["samples"]) == 2 and r["samples"][0] == r["samples"][1]  # greedy: both samples agree
        assert len(r["samples"][0]["token_ids"]) <= 6 and r["samples"][0]["finish_reason"] in ("stop", "length")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    proc = run_cli("generate", str(bad), "-m", str(default_model_dir))
    assert proc.returncode != 0 and "bad.jsonl:1: needs 'prompt'" in proc.stderr


def test_cli_score_resumes_without_duplicates(tmp_path, default_model_dir):
    items = Path(__file__).resolve().parents[1] / "examples" / "items.jsonl"
    out = tmp_path / "scores.jsonl"
    args = ["score", "--input", str(items), "--output", str(out), "--model", str(default_model_dir), "--k", "2",
            "--max-new-tokens", "8", "--batch-size", "2"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["math", "color", "capital"]
    for r, n in zip(rows, (2, 3, 2)):
        assert len(r["rewards"]) == n and r["k"] == 2 and 0 <= r["num_valid"] <= 2
        assert (r["num_valid"] == 0) == all(x is None for x in r["rewards"])
    # killed halfway: the first line whole, the second torn
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:10])
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "1 already in" in proc.stderr
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert again == rows  # same samples (seeded per item), no line lost or doubled
    proc = run_cli(*args)
    assert "3 already in" in proc.stderr and out.read_text().count("\n") == 3


def test_cli_score_bad_input(tmp_path, default_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "query": "q", "responses": ["a"]}\n{"id": 2, "query": "q"\n'
                   '{"id": 3, "query": "q", "responses": []}\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", "--input", str(bad), "--output", str(out), "--model", str(default_model_dir))
    assert proc.returncode != 0 and "bad.jsonl:2:" in proc.stderr and not out.exists()
    proc = run_cli("score", "--input", str(bad), "--output", str(out), "--model", str(default_model_dir),
                   "--skip-invalid", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "bad.jsonl:2:" in proc.stderr and "bad.jsonl:3:" in proc.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1]


def test_cli_score_with_a_meta_rm(tmp_path, default_model_dir):
    items = Path(__file__).resolve().parents[1] / "examples" / "items.jsonl"
    out = tmp_path / "scores.jsonl"
    proc = run_cli("score", "--input", str(items), "--output", str(out), "--model", str(default_model_dir), "--k", "2",
                   "--max-new-tokens", "6", "--meta-rm", str(default_model_dir), "--k-meta", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["num_valid"] <= 1 for r in rows)
