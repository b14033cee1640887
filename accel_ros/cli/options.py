"""What several subcommands share: the options saying which model runs and how it streams (one
definition, so `segment`, `fleet` and `demo` accept the same spellings, defaults and allowed
values), and how a benchmark prints and writes its report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import CHOICES, DEFAULT_PRESET, PRESETS, PipelineConfig
from ..report import write_json
from ..ros.parameters import PARAMETER_SPECS, NodeOptions


def add_config_option(parser: argparse.ArgumentParser, name: str, *flags: str,
                      **overrides: Any) -> argparse.Action:
    """The option of setting `name`, a `PipelineConfig` field or a node option (`NodeOptions`),
    spelt `flags` (default --name-with-dashes) and derived as the node's ROS parameter of that
    name is: its default is the dataclass's, its choices are the keys of its registry
    (config.CHOICES), a number takes the default's type, and the help is the parameter's
    description. `overrides`: argparse keywords of a caller that needs more (another default,
    help, a comma list instead of one choice)."""
    owner = PipelineConfig() if PARAMETER_SPECS[name].target == "pipeline" else NodeOptions()
    default = getattr(owner, name)
    settings: dict[str, Any] = {"default": default}
    if name in CHOICES:
        settings["choices"] = CHOICES[name].choices
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        settings["type"] = type(default)
    settings.update(overrides)
    # argparse formats help with %: a literal one in a description is doubled.
    described = PARAMETER_SPECS[name].description.replace("%", "%%")
    settings.setdefault("help", f"{described} (default: %(default)s)")
    return parser.add_argument(*(flags or [f"--{name.replace('_', '-')}"]), **settings)


def add_model_options(parser: argparse.ArgumentParser, *, modes: bool = True,
                      device: str | None = None, input_size: bool = True) -> None:
    """--preset, --checkpoint, --mode (unless `modes` is False: the caller runs every mode),
    --keyframe-interval, --device (default `device`, else the pipeline's), --flow, --backend,
    --input-size (unless `input_size` is False: the caller sizes its frames itself). Defaults
    and choices are PipelineConfig's (`add_config_option`)."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS.choices,
                        help="architecture when no checkpoint is loaded (a checkpoint carries "
                        "its own)")
    parser.add_argument("--checkpoint", default="default",
                        help="'default' (shipped), 'none' (random weights) or a path")
    if modes:
        add_config_option(parser, "mode")
    add_config_option(parser, "keyframe_interval")
    add_config_option(parser, "device", **({"default": device} if device else {}))
    add_config_option(parser, "flow_method", "--flow")
    add_config_option(parser, "backend")
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
