"""spct.train.config: TOML/YAML files, validation with actionable errors, command-line overrides, saved JSON."""

from __future__ import annotations

import argparse
import json

import pytest

from spct.train.config import (CONFIGS, MetaRMConfig, RFTConfig, RLConfig, TrainConfig, add_config_arguments,
                               config_overrides, load_config, save_config)

REQUIRED = {"data": "items.jsonl", "output_dir": "runs/x"}


def test_defaults_follow_the_method():
    rft, rl, meta = RFTConfig(**REQUIRED), RLConfig(**REQUIRED), MetaRMConfig(**REQUIRED)
    assert (rft.n_rft, rft.hinted, rft.temperature, rft.lora) == (3, True, 0.5, False)
    assert (rl.group_size, rl.beta, rl.clip_eps, rl.aggregation, rl.ref_model) == (4, 0.002, 0.2, "token", None)
    assert (meta.samples_per_item, meta.eval_fraction) == (3, 0.2)
    assert rl.learning_rate < rft.learning_rate < meta.learning_rate  # the paper's ordering
    for cfg in (rft, rl, meta):
        assert isinstance(cfg, TrainConfig)
        assert (cfg.model, cfg.seed, cfg.keep_checkpoints, cfg.grad_clip, cfg.dtype) == (
            "smollm2-135m", 0, 2, 1.0, "float32")
    assert CONFIGS == {"rft": RFTConfig, "rl": RLConfig, "meta-rm": MetaRMConfig}


def test_toml_flat(tmp_path):
    path = tmp_path / "rl.toml"
    path.write_text('data = "d.jsonl"\noutput_dir = "out"\ngroup_size = 8\nlearning_rate = 3e-6\n'
                    'aggregation = "sequence"\nref_model = "sft-ckpt"\nbatch_size = 32\n')
    cfg = load_config("rl", path)
    assert isinstance(cfg, RLConfig)
    assert (cfg.data, cfg.output_dir, cfg.group_size, cfg.learning_rate) == ("d.jsonl", "out", 8, 3e-6)
    assert (cfg.aggregation, cfg.ref_model, cfg.batch_size, cfg.beta) == ("sequence", "sft-ckpt", 32, 0.002)


def test_toml_stage_tables(tmp_path):
    """Top-level fields are shared; the stage's table overrides them; other stages' tables are skipped."""
    path = tmp_path / "spct.toml"
    path.write_text('data = "d.jsonl"\noutput_dir = "out"\nseed = 5\n'
                    '[rft]\nseed = 6\nlora = true\n'
                    '[rl]\ngroup_size = 8\nbatch_size = 32\n'
                    '[meta-rm]\neval_fraction = 0.1\n')
    rft, rl, meta = load_config("rft", path), load_config("rl", path), load_config("meta-rm", path)
    assert (rft.seed, rft.lora) == (6, True)
    assert (rl.seed, rl.group_size) == (5, 8)
    assert (meta.seed, meta.eval_fraction) == (5, 0.1)


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml(tmp_path, suffix):
    path = tmp_path / f"meta{suffix}"
    # PyYAML reads 1e-5 (no dot) as a string: it is converted like a command-line value.
    path.write_text("meta-rm:\n  data: d.jsonl\n  output_dir: out\n  learning_rate: 1e-5\n  samples_per_item: 5\n"
                    "  dtype: bfloat16\n")
    cfg = load_config("meta-rm", path)
    assert isinstance(cfg, MetaRMConfig)
    assert (cfg.learning_rate, cfg.samples_per_item, cfg.dtype) == (1e-5, 5, "bfloat16")
    assert isinstance(cfg.learning_rate, float)


def test_yaml_null_ref_model(tmp_path):
    path = tmp_path / "rl.yaml"
    path.write_text("data: d.jsonl\noutput_dir: out\nref_model: null\nhinted_is_not_here: 1\n")
    with pytest.raises(ValueError, match="hinted_is_not_here"):
        load_config("rl", path)
    path.write_text("data: d.jsonl\noutput_dir: out\nref_model: null\n")
    assert load_config("rl", path).ref_model is None


def test_unknown_field_is_named_with_the_allowed_ones(tmp_path):
    path = tmp_path / "rl.toml"
    path.write_text('data = "d"\noutput_dir = "o"\ngroup_sise = 4\n')
    with pytest.raises(ValueError, match="group_sise") as info:
        load_config("rl", path)
    assert "group_size" in str(info.value) and "clip_eps" in str(info.value)
    with pytest.raises(ValueError, match="n_rft"):  # another stage's field
        load_config("rl", overrides={**REQUIRED, "n_rft": 3})


def test_bad_files_and_stages(tmp_path):
    for name, text, pattern in [("c.json", "{}", r"'\.json'.*\.toml, \.yaml or \.yml"),
                                ("c.toml", "data = ", "not valid TOML"),
                                ("c.yaml", "a: [1,", "not valid YAML"),
                                ("c.yaml", "- 1\n- 2\n", "expected a table")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=pattern):
            load_config("rl", tmp_path / name)
    with pytest.raises(ValueError, match="'ppo'.*rft, rl, meta-rm"):
        load_config("ppo", overrides=REQUIRED)
    with pytest.raises(ValueError, match="output_dir"):
        load_config("rft", overrides={"data": "d"})
    (tmp_path / "empty.yaml").write_text("")
    assert load_config("rft", tmp_path / "empty.yaml", REQUIRED).data == "items.jsonl"


@pytest.mark.parametrize("stage, name, value, allowed", [
    ("rl", "group_size", 0, "integer >= 2"),
    ("rl", "group_size", 4.0, "integer >= 2"),
    ("rft", "dtype", "fp8", "'float32', 'bfloat16'"),
    ("rft", "learning_rate", "abc", "finite number > 0"),
    ("rft", "learning_rate", 0.0, "finite number > 0"),
    ("rft", "learning_rate", float("nan"), "finite number > 0"),
    ("rft", "learning_rate", True, "finite number > 0"),
    ("rft", "batch_size", True, "integer >= 1"),
    ("rft", "max_steps", "3.5", "integer >= 1"),
    ("rft", "seed", -1, r"in \[0, 2\*\*32\)"),
    ("rft", "hinted", "maybe", "true or false"),
    ("rft", "hinted", 1, "true or false"),
    ("rft", "model", "", "non-empty string"),
    ("rft", "grad_clip", -1.0, ">= 0"),
    ("rl", "aggregation", "mean", "'sequence', 'token'"),
    ("rl", "clip_eps", 1.0, r"in \(0, 1\)"),
    ("rl", "ref_model", 3, "string or null"),
    ("meta-rm", "eval_fraction", 1.0, r"in \[0, 1\)"),
    ("meta-rm", "samples_per_item", 0, "integer >= 1"),
])
def test_invalid_values_name_field_value_and_allowed(stage, name, value, allowed):
    with pytest.raises(ValueError, match=allowed) as info:
        load_config(stage, overrides={**REQUIRED, name: value})
    assert f"{name} = {value!r}" in str(info.value)


def test_values_that_must_fit_together():
    with pytest.raises(ValueError, match="batch_size = 10 .*multiple of micro_batch_size = 4"):
        RFTConfig(**REQUIRED, batch_size=10)
    with pytest.raises(ValueError, match="batch_size = 12 .*multiple of group_size = 8"):
        RLConfig(**REQUIRED, batch_size=12, micro_batch_size=4, group_size=8)


def test_direct_construction_is_validated_and_converted():
    with pytest.raises(ValueError, match="RLConfig: group_size = 0"):
        RLConfig(**REQUIRED, group_size=0)
    with pytest.raises(ValueError, match="MetaRMConfig: dtype = 'fp8'"):
        MetaRMConfig(**REQUIRED, dtype="fp8")
    cfg = RFTConfig(**REQUIRED, learning_rate="2e-5", lora="yes", lora_rank="16")
    assert (cfg.learning_rate, cfg.lora, cfg.lora_rank) == (2e-5, True, 16)
    assert RLConfig(**REQUIRED, beta=0).beta == 0.0 and isinstance(RLConfig(**REQUIRED, beta=0).beta, float)


def _parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, stage)
    return parser


def test_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "rl.toml"
    path.write_text('data = "d.jsonl"\noutput_dir = "out"\ngroup_size = 8\nbatch_size = 32\nbeta = 0.08\n')
    args = _parser("rl").parse_args(["--config", str(path), "--group-size", "4", "--learning-rate", "5e-7",
                                     "--output-dir", "elsewhere"])
    overrides = config_overrides(args, "rl")
    assert overrides == {"group_size": 4, "learning_rate": 5e-7, "output_dir": "elsewhere"}
    cfg = load_config("rl", args.config, overrides)
    assert (cfg.group_size, cfg.learning_rate, cfg.output_dir) == (4, 5e-7, "elsewhere")
    assert (cfg.beta, cfg.batch_size, cfg.data) == (0.08, 32, "d.jsonl")  # from the file


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("YES", True), ("false", False),
                                         ("0", False), ("no", False)])
def test_command_line_bools(text, value):
    args = _parser("rft").parse_args(["--lora", text, "--hinted", text])
    assert config_overrides(args, "rft") == {"lora": value, "hinted": value}


def test_command_line_rejects_bad_values(capsys):
    for argv, message in [(["--group-size", "two"], "group_size = 'two'"),
                          (["--dtype", "fp8"], "dtype = 'fp8'"),
                          (["--temperature", "hot"], "temperature = 'hot'")]:
        with pytest.raises(SystemExit):
            _parser("rl").parse_args(argv)
        assert message in capsys.readouterr().err
    assert config_overrides(_parser("rl").parse_args([]), "rl") == {}


def test_every_field_has_an_option():
    for stage, cls in CONFIGS.items():
        help_text = _parser(stage).format_help()
        for name in cls.__dataclass_fields__:
            assert "--" + name.replace("_", "-") in help_text


def test_save_config_round_trip(tmp_path):
    cfg = RLConfig(**REQUIRED, group_size=8, batch_size=32, ref_model="sft")
    path = save_config(cfg, tmp_path / "run" / "config.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]  # no temporary file left
    saved = json.loads(path.read_text())
    assert saved["group_size"] == 8 and saved["ref_model"] == "sft"
    assert load_config("rl", overrides=saved) == cfg
