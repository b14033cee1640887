"""`accel-ros demo`: segment a synthetic driving clip in every mode (accel_ros.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import THREADS_HELP, set_threads
from .options import add_config_option, add_model_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="segment a synthetic driving clip as the reference, DFF, DeepLab and Accel",
        description="Render a synthetic driving clip, segment it with the reference network "
        "on every frame, DFF, DeepLab (update branch) and Accel, print per-mode speed, mIoU "
        "and agreement with the reference, and write overlay and side-by-side comparison "
        "videos plus a PNG. Every option is checked before anything is written.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"),
                        help="output directory (default: ./demo_out)")
    parser.add_argument("--frames", type=int, default=60)
    # None: DemoConfig's size (4:3, the shipped model's aspect ratio); importing it here would
    # load torch for `accel-ros --help`.
    parser.add_argument("--height", type=int, default=None, help="clip height (default 288)")
    parser.add_argument("--width", type=int, default=None, help="clip width (default 384)")
    add_model_options(parser, modes=False, input_size=False)
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    add_config_option(parser, "overlay_alpha")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, format_demo, run_demo

    size = {name: value for name, value in (("height", args.height), ("width", args.width))
            if value is not None}
    config = DemoConfig(
        out_dir=args.out, frames=args.frames, **size,
        checkpoint=args.checkpoint, preset=args.preset,
        keyframe_interval=args.keyframe_interval, device=args.device, flow=args.flow,
        backend=args.backend, seed=args.seed, alpha=args.overlay_alpha, quiet=args.quiet,
    )
    config.validate()  # before the threads are set: a typo costs nothing
    threads = set_threads(args.threads)
    result = run_demo(config)
    result.threads = threads
    print(format_demo(result))
    return 0
