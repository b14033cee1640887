"""`accel-ros bench-streams`: several cameras served by one node against one process per
camera, on the same cores (accel_ros/bench/streams.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bench import streams
from .options import add_config_option, log_progress, print_report


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench-streams",
        help="one node serving N cameras against N separate single-camera processes",
        description=streams.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", default="1,2,4",
                        help="stream counts to measure (default 1,2,4)")
    parser.add_argument("--height", type=int, default=streams.DEFAULT_SIZE[0],
                        help="frame and network input height")
    parser.add_argument("--width", type=int, default=streams.DEFAULT_SIZE[1],
                        help="frame and network input width")
    parser.add_argument("--frames", type=int, default=streams.DEFAULT_FRAMES,
                        help="timed frames per stream, rounded up to whole keyframe cycles")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds before the clock starts (default one keyframe "
                        "cycle)")
    add_config_option(parser, "keyframe_interval")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the node, and the CPUs every set-up shares "
                        "(default: torch's choice)")
    parser.add_argument("--separate-threads", choices=streams.SEPARATE_CHOICES, default="split",
                        help="threads of each separate process: split = max(1, T // N), "
                        "full = T each (oversubscribed), both")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin every child to the same --threads CPUs")
    parser.add_argument("--no-stagger", action="store_true",
                        help="do not stagger keyframes across streams (nor processes)")
    add_config_option(parser, "device")
    add_config_option(parser, "flow_method", "--flow",
                        help="flow estimator (torch stays on the device)")
    add_config_option(parser, "flow_scale")
    parser.add_argument("--model", default="default",
                        help="a checkpoint ('default', a path) or a preset name (random weights)")
    parser.add_argument("--reference-backbone", default=None,
                        help="architecture override (random weights), e.g. for quick runs")
    parser.add_argument("--update-backbone", default=None,
                        help="architecture override (random weights), e.g. for quick runs")
    parser.add_argument("--head-channels", type=int, default=None,
                        help="N_feat width override (random weights), e.g. for quick runs")
    parser.add_argument("--clip-frames", type=int, default=streams.DEFAULT_CLIP_FRAMES,
                        help="distinct frames per stream (played back and forth)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole plan this many times, interleaved; report medians "
                        "and the spread")
    parser.add_argument("--setup-timeout", type=float, default=1800.0,
                        help="seconds one set-up (load, warm-up, timed loop) may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    parser.set_defaults(handler=main)
    return parser


def parse_counts(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as error:
        raise ValueError(f"bad stream count list {text!r}: {error}") from error
    if not counts:
        raise ValueError(f"no stream counts in {text!r}")
    return counts


def settings_from_args(args: argparse.Namespace) -> streams.StreamsSettings:
    import torch

    return streams.StreamsSettings(
        streams=parse_counts(args.streams),
        height=args.height,
        width=args.width,
        frames=args.frames,
        warmup=args.warmup,
        threads=args.threads if args.threads is not None else torch.get_num_threads(),
        device="cpu" if args.device == "auto" and not torch.cuda.is_available() else args.device,
        keyframe_interval=args.keyframe_interval,
        flow=args.flow,
        flow_scale=args.flow_scale,
        stagger=not args.no_stagger,
        separate=args.separate_threads,
        pin=not args.no_pin,
        model=args.model,
        reference_backbone=args.reference_backbone,
        update_backbone=args.update_backbone,
        head_channels=args.head_channels,
        clip_frames=args.clip_frames,
        seed=args.seed,
        repeats=args.repeats,
        timeout_s=args.setup_timeout,
    )


def main(args: argparse.Namespace) -> int:
    """Run, print the table, write --json / --plot."""
    settings = settings_from_args(args)
    report = streams.run_streams_benchmark(settings, log_progress)
    print_report(streams.format_table(report), report, args.json, args.plot,
                 streams.write_plot)
    return 0
