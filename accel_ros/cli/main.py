"""`accel-ros`: one command, one subcommand per tool. Tool modules load lazily so that
`accel-ros --help` stays fast and a missing optional dependency only affects its own tool."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> module exposing add_parser(subparsers) and main(args) -> int
SUBCOMMANDS = {
    "demo": "accel_ros.cli.demo",
    "segment": "accel_ros.cli.segment",
    "make-bag": "accel_ros.cli.make_bag",
    "bench": "accel_ros.cli.bench",
    "bench-streams": "accel_ros.cli.bench_streams",
    "train": "accel_ros.cli.train",
    "average": "accel_ros.cli.train",
    "eval": "accel_ros.cli.evaluate",
    "export": "accel_ros.cli.export",
    "fleet": "accel_ros.cli.fleet",
    "bench-fleet": "accel_ros.cli.bench_fleet",
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
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
    return parser


# Errors that mean "this input (file, bag, option value) is bad": one line, exit 2. rosbags,
# mcap and sqlite3 report unreadable storage with their own types; OSError covers permissions,
# a directory where a file was expected, a full disk. ModuleNotFoundError: an optional extra
# (Ray, ONNX Runtime, ...) that the chosen command needs is not installed; its message names it.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, ValueError, OSError, ModuleNotFoundError)
TRACEBACK_ENV = "ACCEL_ROS_TRACEBACK"


def _input_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    from mcap.exceptions import McapError
    from rosbags.rosbag2 import ReaderError, WriterError

    return (*INPUT_ERRORS, ReaderError, WriterError, McapError, sqlite3.Error)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. No input makes this print a traceback: bad input is one line
    naming the file and the problem (exit 2), anything unexpected one line with its type
    (exit 1; set ACCEL_ROS_TRACEBACK=1 to get the traceback), Ctrl-C exit 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        module = importlib.import_module(SUBCOMMANDS[args.command])
        handler = module.main
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"accel-ros {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, nothing is wrong. Point
        # stdout at devnull so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if isinstance(error, _input_errors()):
            # Bad input from the user: say what is wrong, without a traceback.
            print(f"accel-ros {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        print(f"accel-ros {args.command}: error: unexpected {type(error).__name__}: "
              f"{_one_line(error)} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
