"""`spct train rft|rl|meta-rm`: the SPCT training stages."""

from __future__ import annotations

import argparse
import importlib
import json

from spct.cli import checks

# stage -> the module whose run(cfg, resume=...) trains it
TRAINERS = {"rft": "spct.train.rft", "rl": "spct.train.grpo", "meta-rm": "spct.train.meta_rm"}
HELPS = {"rft": "rejective fine-tuning: sample, reject, fine-tune on the kept judgements",
         "rl": "rule-based online RL (GRPO) on the model's own judgements",
         "meta-rm": "train a Meta RM head on labelled judgements, report held-out ROC-AUC"}


def _check(cfg, stage: str) -> None:
    """The config's paths and models, before anything is loaded or written."""
    from spct.items import read_items

    data = checks.readable(cfg.data, "--data")
    if not read_items(data, require="label"):  # a bad line is named by its line and id before training starts
        raise ValueError(f"--data {data}: no items (one JSON object a line: {{'id', 'query', 'responses', 'best'}})")
    checks.model(cfg.model, "--model")
    if getattr(cfg, "ref_model", None):
        checks.model(cfg.ref_model, "--ref-model")
    checks.writable_dir(cfg.output_dir, "--output-dir")


def cmd_train(args: argparse.Namespace) -> None:
    from spct.train.config import config_overrides, load_config

    if args.config is not None:
        checks.readable(args.config, "--config")
    cfg = load_config(args.stage, args.config, config_overrides(args, args.stage))
    _check(cfg, args.stage)
    with checks.cleanup_on_failure(cfg.output_dir):
        stats = importlib.import_module(TRAINERS[args.stage]).run(cfg, resume=args.resume)
    print(json.dumps(stats))


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from spct.train.config import add_config_arguments

    p = sub.add_parser("train", parents=[common], help="SPCT training stages (rejective fine-tuning, GRPO, Meta RM)")
    stages = p.add_subparsers(dest="stage", required=True, metavar="{rft,rl,meta-rm}")
    for stage in TRAINERS:
        q = stages.add_parser(stage, parents=[common], help=HELPS[stage])
        q.add_argument("--config", help="a .toml or .yaml file of config fields (the command line overrides it)")
        q.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
        add_config_arguments(q, stage)
        q.set_defaults(func=cmd_train)
