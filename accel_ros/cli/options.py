"""What several subcommands share: the options saying which model runs and how it streams (one
definition, so `segment`, `fleet` and `demo` accept the same spellings, defaults and allowed
values), and how a benchmark prints and writes its report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import BACKENDS, DEFAULT_PRESET, FLOW_METHODS, MODES, PRESETS, PipelineConfig
from ..report import write_json


def add_model_options(parser: argparse.ArgumentParser, *, modes: bool = True,
                      device: str = "auto", input_size: bool = True) -> None:
    """--preset, --checkpoint, --mode (unless `modes` is False: the caller runs every mode),
    --keyframe-interval, --device, --flow, --backend, --input-size (unless `input_size` is
    False: the caller sizes its frames itself)."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                        help="architecture when no checkpoint is loaded (a checkpoint carries "
                        "its own)")
    parser.add_argument("--checkpoint", default="default",
                        help="'default' (shipped), 'none' (random weights) or a path")
    if modes:
        parser.add_argument("--mode", default="accel", choices=MODES)
    parser.add_argument("--keyframe-interval", type=int, default=5)
    parser.add_argument("--device", default=device, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--flow", default="dis", choices=FLOW_METHODS)
    parser.add_argument("--backend", default=PipelineConfig.backend, choices=BACKENDS,
                        help="runtime of the networks: auto (the fastest measured to keep "
                        "torch's labels), torch, or exported ONNX graphs in OpenVINO or ONNX "
                        "Runtime (see docs/deploy.md)")
    if input_size:
        parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                            default=None, help="resize frames to H W before the network "
                            "(default: the checkpoint's own size)")


def pipeline_config(args: argparse.Namespace, **fields: object) -> PipelineConfig:
    """The segmenter's settings from options added by `add_model_options` (plus `fields`)."""
    settings = {
        "keyframe_interval": args.keyframe_interval, "flow_method": args.flow,
        "device": args.device, "backend": args.backend,
        "input_size": tuple(args.input_size) if args.input_size else None,
    }
    if hasattr(args, "mode"):
        settings["mode"] = args.mode
    return PipelineConfig(**settings | fields)


def print_report(table: str, report: dict, json_path: Path | None, plot_path: Path | None,
                 plot: Callable[[dict, Path], Path]) -> None:
    """How every benchmark ends: its table on stdout, then the JSON report and the plot where
    asked for, each named as it is written."""
    print(table)
    if json_path is not None:
        print(f"wrote {write_json(report, json_path)}")
    if plot_path is not None:
        print(f"wrote {plot(report, plot_path)}")


def log_progress(message: str) -> None:
    """Progress lines of long runs: stderr, so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)
