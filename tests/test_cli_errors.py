"""Every CLI failure is one line naming the file, line, id or field and what is allowed, with a non-zero exit, and
arguments, paths and inputs are checked before a model is loaded (`spct.cli.checks`).

Most cases call `spct.cli.main` in this process (an escaped exception would fail the test as a traceback would
reach a user); the ones about what a user sees on the terminal run the real command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spct.cli import main
from spct.engine.engine import Engine
from spct.grm.meta import MetaRewardModel

ITEMS = Path(__file__).resolve().parents[1] / "examples" / "items.jsonl"


class ModelLoaded(BaseException):
    """Raised by a model load in the tests that must fail before one (BaseException: main does not catch it)."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the arguments, paths and inputs were checked")

    monkeypatch.setattr(Engine, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(MetaRewardModel, "from_pretrained", classmethod(refuse))


def fails(argv: list[str], *fragments: str) -> str:
    """Run the CLI in-process; it must exit with a one-line message holding every fragment."""
    with pytest.raises(SystemExit) as caught:
        main([str(a) for a in argv])
    message = caught.value.code
    assert isinstance(message, str), f"exit status {message!r} without a message"
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ missing inputs

@pytest.mark.parametrize("argv", [
    ["score", "--input", "{nope}", "--output", "{tmp}/out.jsonl"],
    ["extract", "{nope}"],
    ["generate", "{nope}"],
    ["eval", "--data", "{nope}", "--format", "jsonl", "--out", "{tmp}/eval"],
    ["train", "rft", "--data", "{nope}", "--output-dir", "{tmp}/run"],
    ["train", "rl", "--config", "{nope}"],
])
def test_a_missing_input_is_named_and_nothing_is_left_behind(tmp_path, no_model, argv):
    nope = tmp_path / "nope.jsonl"
    fails([a.format(nope=nope, tmp=tmp_path) for a in argv], str(nope), "no such file")
    assert sorted(os.listdir(tmp_path)) == []  # no empty output file or folder


@pytest.mark.parametrize("argv", [
    ["score", "--input", "{empty}", "--output", "{tmp}/out.jsonl"],
    ["extract", "{empty}"],
    ["generate", "{empty}"],
    ["eval", "--data", "{empty}", "--format", "jsonl", "--out", "{tmp}/eval"],
    ["train", "rft", "--data", "{empty}", "--output-dir", "{tmp}/run"],
])
def test_an_empty_input_is_named_and_nothing_is_left_behind(tmp_path, no_model, argv):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    fails([a.format(empty=empty, tmp=tmp_path) for a in argv], str(empty), "no ")
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl"]


def test_an_input_that_is_a_folder_or_not_gzip(tmp_path, no_model):
    fails(["score", "--input", tmp_path, "--output", tmp_path / "o.jsonl"], str(tmp_path), "is a folder")
    fake = tmp_path / "items.jsonl.gz"
    fake.write_bytes(ITEMS.read_bytes())
    fails(["score", "--input", fake, "--output", tmp_path / "o.jsonl"], str(fake), "not a complete gzip file")


def test_a_non_utf8_input_names_its_file_and_line(tmp_path, no_model):
    bad = tmp_path / "items.jsonl"
    bad.write_bytes(ITEMS.read_bytes() + '{"id": "x", "query": "café", "responses": ["a"]}\n'.encode("latin-1"))
    fails(["score", "--input", bad, "--output", tmp_path / "o.jsonl"], f"{bad}:4", "not UTF-8", "0xe9")
    fails(["extract", bad], f"{bad}:4", "not UTF-8")


@pytest.mark.parametrize("record, fragments", [
    ('{"id": "a", "query": "q", "responses": ["x"]', ["not valid JSON"]),
    ({"id": "a", "query": "q", "responses": "x"}, ["item 'a'", "responses"]),
    ({"id": "a", "query": "", "responses": ["x"]}, ["item 'a'", "query"]),
    ([1, 2], ["object"]),
])
def test_a_malformed_item_names_its_line_id_and_field(tmp_path, no_model, record, fragments):
    bad = write(tmp_path / "items.jsonl", [{"id": "ok", "query": "q", "responses": ["r"]}, record])
    fails(["score", "--input", bad, "--output", tmp_path / "o.jsonl"], f"{bad}:2", *fragments)
    assert not (tmp_path / "o.jsonl").exists()


def test_extract_and_generate_records(tmp_path, no_model):
    bad = write(tmp_path / "gen.jsonl", [{"generation": "x"}, {"id": "g2", "text": 3}])
    fails(["extract", bad], f"{bad}:2", "item 'g2'", "generation, text, output")
    bad = write(tmp_path / "gen.jsonl", [{"generation": "x", "num_responses": 0}])
    fails(["extract", bad], f"{bad}:1", "num_responses", ">= 1")
    bad = write(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"id": "p", "messages": [{"role": "user"}]}])
    fails(["generate", bad], f"{bad}:2", "item 'p'", "'content'")
    fails(["generate", write(tmp_path / "p.jsonl", [{"token_ids": "12"}])], "p.jsonl:1", "token_ids")


# ------------------------------------------------------------------------------------------------------ outputs

def test_an_output_in_a_missing_folder_is_refused_before_any_work(tmp_path, no_model):
    out = tmp_path / "no" / "such" / "out.jsonl"
    fails(["score", "--input", ITEMS, "--output", out], str(out), "does not exist")
    fails(["generate", ITEMS, "-o", out], str(out), "does not exist")
    fails(["score", "--input", ITEMS, "--output", tmp_path], str(tmp_path), "is a folder")
    (tmp_path / "file").write_text("x")
    fails(["eval", "--data", ITEMS, "--format", "jsonl", "--out", tmp_path / "file" / "eval"], "is not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's read-only /proc")
def test_an_output_in_a_read_only_folder_is_refused_before_any_work(tmp_path, no_model):
    # /proc refuses new files to every user (a folder with chmod 0500 would not stop root)
    fails(["score", "--input", ITEMS, "--output", "/proc/self/out.jsonl"], "/proc/self/out.jsonl", "cannot be written")
    fails(["eval", "--data", ITEMS, "--format", "jsonl", "--out", "/proc/self/eval"], "/proc/self/eval", "cannot write")
    fails(["train", "rft", "--data", write(tmp_path / "i.jsonl", [{"id": "a", "query": "q", "responses": ["x", "y"],
                                                                   "best": 0}]),
           "--output-dir", "/proc/self/run"], "--output-dir", "cannot write")


def test_an_output_spct_score_did_not_write_is_not_appended_to(tmp_path, no_model):
    out = write(tmp_path / "o.jsonl", [{"something": "else"}])
    fails(["score", "--input", ITEMS, "--output", out], str(out), "line 1", "'key'")


# ------------------------------------------------------------------------------------------------------ numbers

@pytest.mark.parametrize("argv, fragments", [
    (["score", "--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
    (["score", "--k", "0"], ["--k", ">= 1", "got 0"]),
    (["score", "--max-new-tokens", "-3"], ["--max-new-tokens", "got -3"]),
    (["score", "--k", "4", "--k-meta", "2"], ["--k-meta needs --meta-rm"]),
    (["score", "--k", "4", "--meta-rm", "smollm2-135m", "--k-meta", "5"], ["--k-meta", "[1, 4]", "got 5"]),
    (["generate", "--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["generate", "--min-p", "1.5"], ["--min-p", "[0, 1]"]),
    (["generate", "-k", "0"], ["-k", ">= 1"]),
    (["extract", "--score-range", "10", "1"], ["--score-range", "LO <= HI"]),
    (["eval", "--k", "1,x"], ["--k", "comma-separated", "'1,x'"]),
    (["eval", "--k", "0,4"], ["--k values must be >= 1"]),
    (["eval", "--limit", "0"], ["--limit", ">= 1"]),
    (["train", "rft", "--batch-size", "6", "--micro-batch-size", "4"], ["batch_size", "multiple of"]),
])
def test_numbers_out_of_range_fail_before_a_model_loads(tmp_path, no_model, argv, fragments):
    paths = {"score": ["--input", ITEMS, "--output", tmp_path / "o.jsonl"], "generate": [ITEMS], "extract": [ITEMS],
             "eval": ["--data", ITEMS, "--format", "jsonl", "--out", tmp_path / "e"],
             "train": ["--data", ITEMS, "--output-dir", tmp_path / "r"]}
    fails([*argv, *paths[argv[0]]], *fragments)
    assert os.listdir(tmp_path) == []


def test_a_malformed_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["score", "--input", "a", "--output", "b", "--k", "two"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--k" in err and "'two'" in err and "--help" in err


# ---------------------------------------------------------------------------------------------- wrong formats

def test_eval_names_the_fields_a_format_expects(tmp_path, no_model):
    fails(["eval", "--data", ITEMS, "--format", "rmb-bon", "--out", tmp_path / "e"],
          f"{ITEMS}:1", "--format rmb-bon", "bon_uid", "the fields id, query, responses", "--format jsonl")
    pairs = write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a"}])
    fails(["eval", "--data", pairs, "--format", "rewardbench", "--out", tmp_path / "e"], "rejected missing")
    (tmp_path / "llmbar").mkdir()
    fails(["eval", "--data", tmp_path / "llmbar", "--format", "llmbar", "--out", tmp_path / "e"], "none found")
    fails(["eval", "--data", ITEMS, "--format", "jsonl", "--out", tmp_path / "e"], f"{ITEMS}:1", "best")
    assert not (tmp_path / "e").exists()


def test_a_bad_config_file_is_named(tmp_path, no_model):
    bad = tmp_path / "rft.toml"
    bad.write_text("data = [unclosed\n")
    fails(["train", "rft", "--config", bad], str(bad), "not valid")
    bad.write_text('data = "x.jsonl"\noutput_dir = "run"\nlearning_rte = 1e-5\n')
    fails(["train", "rft", "--config", bad], "learning_rte", "allowed")
    bad.write_bytes(b'data = "caf\xe9"\n')
    fails(["train", "rft", "--config", bad], str(bad), "not UTF-8")


# ------------------------------------------------------------------------------------------------------- models

@pytest.fixture
def llama_dir(tmp_path, default_model_dir) -> Path:
    """A copy of the default model's folder (config, tokenizer) with garbage weights."""
    d = tmp_path / "broken-llama"
    d.mkdir()
    for f in default_model_dir.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, d / f.name)
    (d / "model.safetensors").write_bytes(b"\xff" * 64 + b"not a safetensors file")
    return d


def test_a_broken_checkpoint_names_its_file(tmp_path, no_model, llama_dir):
    fails(["score", "--input", ITEMS, "--output", tmp_path / "o.jsonl", "--model", llama_dir],
          "--model", str(llama_dir / "model.safetensors"))
    assert not (tmp_path / "o.jsonl").exists()


def test_a_config_without_weights_says_what_is_missing(tmp_path, no_model, llama_dir):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": "Hello"}])
    fails(["generate", prompts, "-m", gpt2], "--model", str(gpt2), "weights")
    (llama_dir / "config.json").write_text("{not json")
    judged = write(tmp_path / "judged.jsonl", [{"id": "a", "query": "2 + 2?", "responses": ["4", "5"], "best": 0}])
    fails(["eval", "--data", judged, "--format", "jsonl", "--out", tmp_path / "e", "--model", llama_dir],
          str(llama_dir / "config.json"), "JSON")
    assert not (tmp_path / "e").exists()


def test_an_unknown_model_name_says_what_is_allowed(tmp_path, no_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    fails(["score", "--input", ITEMS, "--output", tmp_path / "o.jsonl", "--model", "no-such-model"],
          "'no-such-model'", "smollm2-135m")
    fails(["score", "--input", ITEMS, "--output", tmp_path / "o.jsonl", "--model", "someorg/some-model"],
          "someorg/some-model", "download")


def test_a_prompt_too_long_names_the_item_line_and_id(tmp_path, default_model_dir):
    long = {"id": "long-one", "query": "word " * 9000, "responses": ["a", "b"]}
    items = write(tmp_path / "items.jsonl", [{"id": "short", "query": "2 + 2?", "responses": ["4", "5"]}, long])
    fails(["score", "--input", items, "--output", tmp_path / "o.jsonl", "--model", default_model_dir,
           "--max-new-tokens", "1", "--batch-size", "1"], f"{items}:2", "item 'long-one'", "context")
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1  # the first item's finished line is kept


# ------------------------------------------------------------------------------------------ as a user sees it

def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spct", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_a_user_sees_one_line_and_a_nonzero_exit_and_debug_shows_the_traceback(tmp_path):
    proc = run_cli("score", "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o.jsonl")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"spct score: --input {tmp_path / 'nope.jsonl'}: no such file"]
    proc = run_cli("--debug", "score", "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o.jsonl")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no such file" in proc.stderr


def test_help_shows_every_default():
    proc = run_cli("score", "--help")
    text = " ".join(proc.stdout.split())
    for default in ("(default: smollm2-135m)", "(default: 1)", "(default: 16)", "(default: 512)", "(default: sum)",
                    "(default: bfloat16)", "(default: 0)"):
        assert default in text, default


def _score_args(items: Path, out: Path, model: Path) -> list:
    return ["score", "--input", items, "--output", out, "--model", model, "--max-new-tokens", "2", "--force-scores",
            "--batch-size", "1"]


def test_a_write_failure_keeps_the_finished_lines_and_a_rerun_completes_them(tmp_path, default_model_dir):
    import resource

    reference = tmp_path / "reference.jsonl"
    assert run_cli(*_score_args(ITEMS, reference, default_model_dir)).returncode == 0
    lines = reference.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # a file size limit (RLIMIT_FSIZE) half-way through the second line: the second batch's write fails part-way
    limit = len(lines[0].encode()) + len(lines[1].encode()) // 2

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out.jsonl"
    proc = run_cli(*_score_args(ITEMS, out, default_model_dir), preexec_fn=limit_file_size)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert "could not write to --output" in message and "1 items scored before are kept" in message, message
    assert "rerun the same command" in message
    assert out.read_text() == lines[0]  # the finished line, and not a byte of the failed batch
    proc = run_cli(*_score_args(ITEMS, out, default_model_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 already in" in proc.stderr
    assert out.read_text() == reference.read_text()  # completed, no duplicates, same lines


SERVE_CASES = [
    (["--host", "0.0.0.0"], "--host 0.0.0.0", "--api-key"),
    (["--k", "0"], "--k", ">= 1"),
    (["--k", "8", "--max-k", "4"], "--k 8", "--max-k 4"),
    (["--max-new-tokens", "9000"], "--max-new-tokens 9000", "--max-tokens"),
    (["--max-body-mb", "0"], "--max-body-mb", "(0"),
    (["--port", "70000"], "--port", "65535"),
    (["--api-key", " "], "--api-key", "empty"),
    (["--model", "no-such-model-here"], "--model", "no-such-model-here"),
]


@pytest.mark.parametrize("args,named,allowed", SERVE_CASES, ids=[c[1] for c in SERVE_CASES])
def test_serve_checks_its_arguments_before_loading_a_model(no_model, args, named, allowed, monkeypatch):
    monkeypatch.delenv("SPCT_API_KEY", raising=False)
    fails(["serve", "--port", "0", *args], "spct serve", named, allowed)


def test_serve_names_a_port_that_is_taken(no_model):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        fails(["serve", "--port", str(port)], f"--port {port}", "cannot listen there")
