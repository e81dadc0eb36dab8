"""One validated dataclass per SPCT training stage (docs/method.md section 4), read from TOML or YAML and overridden
from the command line.

    cfg = load_config("rl", "rl.toml", overrides={"group_size": 8})
    parser = argparse.ArgumentParser(); add_config_arguments(parser, "rl")
    cfg = load_config("rl", args.config, config_overrides(parser.parse_args(), "rl"))
    save_config(cfg, Path(cfg.output_dir) / "config.json")

A config file is a flat table of fields; a table named after the stage ([rl], [rft], [meta-rm]) overrides the
top-level fields, and the other stages' tables are ignored, so one file can hold all three stages. Every value is
checked when the dataclass is built (directly or through load_config); strings given for int, float and bool fields
are parsed as on the command line (YAML reads 1e-5 as a string).

Defaults follow the paper's recipe scaled to a ~135M-parameter model trained on a CPU: learning rates ~2x the
paper's (small models take larger steps) in the paper's ratio across stages (RL ~10x below RFT, Meta RM 2x above),
global batches of 16 instead of 512-1024, and 200 steps instead of 900.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from spct._atomic import write_json

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["CONFIGS", "MetaRMConfig", "RFTConfig", "RLConfig", "TrainConfig", "add_config_arguments",
           "config_overrides", "load_config", "save_config"]


@dataclass(frozen=True)
class _Kind:
    """How one field is checked: `convert` returns the accepted (converted) value or raises ValueError/TypeError;
    `allowed` says what is accepted, in error messages and --help."""

    allowed: str
    convert: Callable[[object], object]


def _int(condition: str, ok: Callable[[int], bool]) -> _Kind:
    def convert(value):
        value = int(value) if isinstance(value, str) else value
        if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
            raise ValueError(value)
        return value
    return _Kind(f"an integer {condition}", convert)


def _float(condition: str, ok: Callable[[float], bool]) -> _Kind:
    def convert(value):
        value = float(value) if isinstance(value, str) else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(value)
        return float(value)
    return _Kind(f"a finite number {condition}", convert)


def _choice(*options: str) -> _Kind:
    def convert(value):
        if value not in options:
            raise ValueError(value)
        return value
    return _Kind("one of " + ", ".join(repr(o) for o in options), convert)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _bool_convert(value):
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def _str_convert(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


_BOOL = _Kind("true or false (also 1/0, yes/no)", _bool_convert)
_STR = _Kind("a non-empty string", _str_convert)
_OPTIONAL_STR = _Kind("a non-empty string or null", lambda v: None if v is None else _str_convert(v))
_POSITIVE_INT = _int(">= 1", lambda n: n >= 1)


def _field(default, kind: _Kind, help: str):
    """A config field: its default (MISSING: required), how it is checked and what it means."""
    return field(default=default, metadata={"kind": kind, "help": help})


def _problem(cls: type, name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{cls.__name__}: {name} = {value!r} is not allowed; expected {allowed}")


@dataclass
class TrainConfig:
    """Fields shared by every stage. The defaults are the RFT stage's (see RFTConfig)."""

    data: str = _field(MISSING, _STR, "training items, JSONL (docs/design.md item format)")
    output_dir: str = _field(MISSING, _STR, "checkpoints, config.json and logs go here")
    model: str = _field("smollm2-135m", _STR, "alias, checkpoint directory or .gguf to start from")
    # < 2**32: numpy's global generator takes no larger seed.
    seed: int = _field(0, _int("in [0, 2**32)", lambda n: 0 <= n < 2**32), "seeds python, numpy and torch")
    learning_rate: float = _field(1e-5, _float("> 0", lambda x: x > 0), "peak learning rate")
    batch_size: int = _field(16, _POSITIVE_INT, "global batch: sequences per optimizer step")
    micro_batch_size: int = _field(4, _POSITIVE_INT, "sequences per forward/backward (divides batch_size)")
    max_steps: int = _field(200, _POSITIVE_INT, "optimizer steps")
    save_every: int = _field(50, _POSITIVE_INT, "steps between checkpoints")
    log_every: int = _field(10, _POSITIVE_INT, "steps between log lines")
    max_new_tokens: int = _field(512, _POSITIVE_INT, "generated tokens per sample (as GRM scoring)")
    # float32: bf16 weights lose AdamW updates smaller than their rounding step at these learning rates. bfloat16
    # trains about 2.2x faster on a CPU with AVX-512 BF16 (measured: SFT step on 8 x 515 tokens, 16.5 s vs 36 s);
    # give it a larger learning rate.
    dtype: str = _field("float32", _choice("float32", "bfloat16"), "parameter dtype")
    keep_checkpoints: int = _field(2, _POSITIVE_INT, "newest checkpoints kept on disk")
    grad_clip: float = _field(1.0, _float(">= 0", lambda x: x >= 0), "max global grad norm (0: no clipping)")

    def __post_init__(self):
        for f in fields(self):
            value, kind = getattr(self, f.name), f.metadata["kind"]
            try:
                setattr(self, f.name, kind.convert(value))
            except (TypeError, ValueError):
                raise _problem(type(self), f.name, value, kind.allowed) from None
        if self.batch_size % self.micro_batch_size:
            raise _problem(type(self), "batch_size", self.batch_size,
                           f"a multiple of micro_batch_size = {self.micro_batch_size} (gradient accumulation)")


@dataclass
class RFTConfig(TrainConfig):
    """Stage 1, rejective fine-tuning: N_RFT unhinted samples per item (+1 hinted), keep the correct ones, drop
    items the model always gets right. Paper: lr 5e-6, batch 1024, 900 steps; here the TrainConfig defaults."""

    # "policy": the model being trained samples its own trajectories (the method, with a strong base model);
    # "teacher": spct.train.data.teacher_judgement writes them from the gold solution (a small model's cold start).
    sampler: str = _field("policy", _choice("policy", "teacher"), "who writes the RFT trajectories")
    teacher_brief: bool = _field(False, _BOOL, "sampler teacher: the brief judgements (one criterion, one line "
                                 "per response) instead of the full ones")
    n_rft: int = _field(3, _POSITIVE_INT, "unhinted samples per item (N_RFT)")
    hinted: bool = _field(True, _BOOL, "also sample once with the best response hinted; keep it if correct")
    # 0.5: the temperature GRM scoring samples k > 1 judgements at, so the kept trajectories look like the ones
    # inference-time scaling draws; at 1.0 a small model breaks the output format far more often.
    temperature: float = _field(0.5, _float("> 0", lambda x: x > 0), "sampling temperature for the RFT samples")
    lora: bool = _field(False, _BOOL, "train LoRA adapters instead of all weights")
    lora_rank: int = _field(8, _POSITIVE_INT, "LoRA rank r")
    lora_alpha: int = _field(16, _POSITIVE_INT, "LoRA alpha (the update is scaled by alpha / r)")


@dataclass
class RLConfig(TrainConfig):
    """Stage 2, rule-based GRPO: group_size samples per prompt, reward +1 correct / -1 not, group-normalized
    advantages, clipped ratio, KL to the reference model. Paper: lr 4e-7, batch 512, 900 steps.
    batch_size counts generations: batch_size / group_size prompts per step."""

    learning_rate: float = _field(1e-6, _float("> 0", lambda x: x > 0), "peak learning rate")
    group_size: int = _field(4, _int(">= 2 (the advantage divides by the group's std)", lambda n: n >= 2),
                             "generations per prompt (G)")
    # The paper's 0.08 (27B) / 0.002 (16B): the smaller models get the smaller penalty.
    beta: float = _field(0.002, _float(">= 0", lambda x: x >= 0), "KL penalty weight to the reference model")
    clip_eps: float = _field(0.2, _float("in (0, 1)", lambda x: 0 < x < 1), "policy ratio clip epsilon")
    # "token": the method's per-token averaging; "sequence": average per generation, then over generations.
    aggregation: str = _field("token", _choice("sequence", "token"), "how the loss averages over tokens")
    # 1.0: on-policy samples from the model's own distribution, which the policy ratio and KL assume.
    temperature: float = _field(1.0, _float("> 0", lambda x: x > 0), "sampling temperature for the groups")
    ref_model: str | None = _field(None, _OPTIONAL_STR, "reference model for the KL (null: the starting model)")

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size % self.group_size:
            raise _problem(type(self), "batch_size", self.batch_size,
                           f"a multiple of group_size = {self.group_size} (a batch holds whole groups)")


@dataclass
class MetaRMConfig(TrainConfig):
    """Meta RM: binary cross-entropy on generations labelled correct / incorrect, from the RFT samples plus the
    trained GRM's own. Paper: lr 1e-5, batch 512."""

    learning_rate: float = _field(2e-5, _float("> 0", lambda x: x > 0), "peak learning rate")
    samples_per_item: int = _field(3, _POSITIVE_INT, "GRM generations sampled per item (N)")
    force_scores: bool = _field(False, _BOOL, "complete judgements without a score group under the score grammar "
                                "(GenerativeRewardModel.score_batch's force_scores), for models that rarely write one")
    eval_fraction: float = _field(0.2, _float("in [0, 1)", lambda x: 0 <= x < 1), "items held out for evaluation")


CONFIGS: dict[str, type[TrainConfig]] = {"rft": RFTConfig, "rl": RLConfig, "meta-rm": MetaRMConfig}


def _config_class(stage: str) -> type[TrainConfig]:
    if stage not in CONFIGS:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[stage]


def _read(path: Path) -> dict:
    """The top-level table of a .toml, .yaml or .yml file."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"{path}: unknown config file extension {suffix!r}; expected .toml, .yaml or .yml")
    try:
        if suffix == ".toml":
            with path.open("rb") as f:
                table = tomllib.load(f)
        else:
            table = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); config files are UTF-8") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path}: not valid {suffix[1:].upper()} ({reason})") from None
    table = {} if table is None else table  # an empty YAML file
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a table of fields at the top, got {type(table).__name__}")
    return table


def _fields_for(table: dict, stage: str) -> dict:
    """Top-level fields, overridden by the stage's own table; other stages' tables are skipped."""
    values = {k: v for k, v in table.items() if not (k in CONFIGS and isinstance(v, dict))}
    section = table.get(stage)
    if isinstance(section, dict):
        values.update(section)
    return values


def load_config(stage: str, path: str | os.PathLike | None = None, overrides: dict | None = None) -> TrainConfig:
    """The stage's config from the file at `path` (optional), with `overrides` (e.g. from the command line) on top.
    Raises ValueError for an unknown field, a missing required one or a value out of range."""
    cls = _config_class(stage)
    values = _fields_for(_read(Path(path)), stage) if path is not None else {}
    values.update(overrides or {})
    allowed = [f.name for f in fields(cls)]
    for name in values:
        if name not in allowed:
            raise ValueError(f"unknown {stage} config field {name!r}; allowed: {', '.join(allowed)}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
    if missing:
        raise ValueError(f"{stage} config: required field(s) {', '.join(missing)} not given; set them in the "
                         f"file or as --{missing[0].replace('_', '-')}")
    return cls(**values)


def _cli_type(name: str, kind: _Kind) -> Callable[[str], object]:
    def parse(text: str):
        try:
            return kind.convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{name} = {text!r} is not allowed; expected {kind.allowed}") from None
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """Add --<field-with-dashes> VALUE for every field of the stage's config (default None: not given)."""
    for f in fields(_config_class(stage)):
        kind = f.metadata["kind"]
        default = "required" if f.default is MISSING else f"default {f.default}"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_cli_type(f.name, kind),
                            default=None, help=f"{f.metadata['help']}: {kind.allowed} ({default})")


def config_overrides(args: argparse.Namespace, stage: str) -> dict:
    """The config fields given on the command line (those add_config_arguments added and that are not None)."""
    return {f.name: getattr(args, f.name) for f in fields(_config_class(stage))
            if getattr(args, f.name, None) is not None}


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write `cfg` as JSON, atomically (a temporary file beside `path`, then rename). Read it back with
    load_config(stage, overrides=json.load(f))."""
    return write_json(path, asdict(cfg))
