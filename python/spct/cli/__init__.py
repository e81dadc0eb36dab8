"""The `spct` command line: thin wrappers over the Python API.

  spct fetch smollm2-135m                  fetch + convert a model alias, print its folder
  spct extract generations.jsonl [-o out]  principles, critique spans and scores of GRM generations
  spct generate prompts.jsonl -k 4         k samples per prompt (one JSON line per prompt)
  spct score --input items.jsonl --output out.jsonl --k 8    GRM rewards per item (resumable)
  spct eval --data rmb_bon.jsonl.gz --format rmb-bon --k 1,4,16 --out DIR   accuracy vs k (JSON, table, plot)
  spct train rft|rl|meta-rm --config FILE [--resume] [--FIELD VALUE ...]   SPCT training stages
  spct serve --model smollm2-135m [--port 8000] [--api-key KEY]   the reward server (docs/serve.md)

Every command checks its arguments, paths and inputs before it loads a model (`spct.cli.checks`); an error is one
line on stderr and a non-zero exit, and `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from spct.cli import checks

COMMANDS = ("spct.cli.generate", "spct.cli.score", "spct.cli.eval", "spct.cli.train", "spct.cli.serve")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    import spct

    parser = checks.Parser(prog="spct", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spct {spct.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug also after the command name
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fetch,extract,generate,score,eval,train,serve}")
    for name in COMMANDS:
        module = importlib.import_module(name)
        adders = [getattr(module, a) for a in ("add_parsers", "add_parser") if hasattr(module, a)]
        adders[0](sub, common)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    name = " ".join(x for x in ("spct", args.command, getattr(args, "stage", None)) if x)
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no library warnings before a one-line error
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.exit(f"{name}: interrupted (finished work is kept; the same command resumes it)")
    except Exception as exc:  # noqa: BLE001 - every error reaches the user as one line, --debug shows it all
        if args.debug:
            raise
        sys.exit(f"{name}: {checks.describe(exc)}")


if __name__ == "__main__":
    main()
