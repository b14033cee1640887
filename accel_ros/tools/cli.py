"""`accel-ros`: one command, one subcommand per tool. Tool modules load lazily so that
`accel-ros --help` stays fast and a missing optional dependency only affects its own tool."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module in accel_ros.tools exposing add_parser(subparsers) and main(args) -> int
SUBCOMMANDS = {
    "demo": "demo",
    "segment": "replay",
    "make-bag": "replay",
    "bench": "bench",
    "train": "train",
    "eval": "evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accel-ros",
        description="Accel video semantic segmentation: demo, bag/video replay, training, "
        "evaluation and benchmarks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        module = importlib.import_module(f"accel_ros.tools.{module_name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        module = importlib.import_module(f"accel_ros.tools.{SUBCOMMANDS[args.command]}")
        handler = module.main
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as error:
        # Bad input from the user: say what is wrong, without a traceback.
        print(f"accel-ros {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
