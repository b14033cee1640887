"""`accel-ros bench`: per-frame latency of Accel/DFF/DeepLab variants, torchvision peers and the
fast paths on one stream (accel_ros/bench/single_stream.py). Several cameras: `bench-streams`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bench import process, single_stream
from ..bench.variants import VARIANTS, parse_variants
from ..config import BACKENDS
from ..runtime import set_threads
from .options import add_config_option, log_progress, print_report


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="per-frame latency of Accel/DFF/DeepLab variants and of the fast paths",
        description=single_stream.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", default="all",
                        help="comma list of: all (the paper's family), peers (torchvision), "
                        f"{', '.join(VARIANTS)} (default all)")
    parser.add_argument("--intervals", default="1-10",
                        help="keyframe intervals, e.g. 1-10 or 1,2,3,5,10 (default 1-10)")
    parser.add_argument("--height", type=int, default=None,
                        help="frame and network input height (default: the --model's input "
                        "size, else 512, or 1024 on CUDA)")
    parser.add_argument("--width", type=int, default=None,
                        help="frame and network input width (default: the --model's input "
                        "size, else 1024, or 2048 on CUDA)")
    parser.add_argument("--frames", type=int, default=None,
                        help="timed frames per measurement, rounded up to whole keyframe cycles "
                        "(default 20; with --source: frames read from it, default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per measurement")
    add_config_option(parser, "device")
    add_config_option(parser, "precision",
                        help="measure autocast at this precision against fp32")
    parser.add_argument("--channels-last", action="store_true",
                        help="measure channels_last memory format against the plain path")
    parser.add_argument("--compile", action="store_true",
                        help="measure torch.compile (slow to compile, esp. on CPU)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="measure CUDA graphs of the non-key-frame path (CUDA only)")
    parser.add_argument("--overlap-flow", action="store_true",
                        help="measure CPU flow computed beside the update branch")
    # torch by default, not the pipeline's auto: PyTorch eager is the baseline of the ratios.
    add_config_option(parser, "backend", choices=None, default="torch",
                        help=f"comma list of runtimes of the networks, each measured as a fast "
                        f"path of its own: {', '.join(BACKENDS)} (exported ONNX graphs; optional "
                        "extras). openvino with --precision bf16 adds an OpenVINO bf16 row")
    add_config_option(parser, "flow_method", "--flow",
                        help="flow estimator (torch stays on the device)")
    add_config_option(parser, "flow_scale")
    parser.add_argument("--reference-backbone", default=None,
                        help="N_R of every variant (default resnet101, or the --model's own)")
    parser.add_argument("--model", default=None,
                        help="configuration of the deeplab/accel variants (and of N_R for "
                        "reference/dff): a preset name or a checkpoint ('default', a path)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole plan this many times, interleaved; report medians "
                        "and the spread")
    parser.add_argument("--breakdown", action="store_true",
                        help="CUDA: an extra synchronised pass per measurement for real stage "
                        "times (latency always comes from the unsynchronised pass)")
    parser.add_argument("--flow-epe", action="store_true",
                        help="also measure each flow method's end-point error on synthetic "
                        "clips with exact flow")
    parser.add_argument("--fast-variants", default=None,
                        help="variants for the fast-path runs (default: --variants)")
    parser.add_argument("--fast-intervals", default=None,
                        help="intervals for the fast-path runs (default: --intervals)")
    parser.add_argument("--clip-frames", type=int, default=24,
                        help="distinct frames rendered (played back and forth)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    parser.add_argument("--accuracy", type=Path, default=None,
                        help="mIoU JSON (eval.json or {variant: ...}) for the trade-off plot")
    source = parser.add_argument_group(
        "your frames", "--source times what a process(frame, stamp) call costs on your own "
        "frames, for each --backend (torch fp32 always runs: the others' labels are compared "
        "with it); --model, --device, --frames, --repeats (timed rounds, default 3), "
        "--threads, --json and --plot apply")
    source.add_argument("--source", default=None, metavar="PATH",
                        help="an image folder, a video or a rosbag2")
    source.add_argument("--topic", default=None, help="the bag's camera topic (default: first)")
    add_config_option(source, "mode")
    add_config_option(source, "keyframe_interval")
    source.add_argument("--fps", type=float, default=None,
                        help="frame rate of an image folder (its frames' stamps)")
    # Moved to its own subcommand; kept hidden only to say where.
    parser.add_argument("--streams", nargs="?", const="1,2,4", default=None,
                        help=argparse.SUPPRESS)
    parser.set_defaults(handler=main)
    return parser


def settings_from_args(args: argparse.Namespace) -> single_stream.BenchSettings:
    return single_stream.BenchSettings(
        variants=parse_variants(args.variants),
        intervals=single_stream.parse_intervals(args.intervals),
        height=args.height,
        width=args.width,
        frames=args.frames or 20,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        overlap_flow=args.overlap_flow,
        flow=args.flow,
        flow_scale=args.flow_scale,
        reference_backbone=(
            args.reference_backbone
            if args.reference_backbone is not None or args.model is not None
            else "resnet101"
        ),
        model=args.model,
        repeats=args.repeats,
        breakdown=args.breakdown,
        flow_epe=args.flow_epe,
        fast_variants=parse_variants(args.fast_variants) if args.fast_variants else None,
        fast_intervals=(
            single_stream.parse_intervals(args.fast_intervals) if args.fast_intervals else None
        ),
        clip_frames=args.clip_frames,
        seed=args.seed,
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
    )


def main(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write --json / --plot."""
    if args.streams is not None:
        raise ValueError("several cameras have their own subcommand: "
                         f"accel-ros bench-streams --streams {args.streams} ...")
    if args.source is not None:
        return _time_process(args)
    settings = settings_from_args(args)
    if args.accuracy is not None and not args.accuracy.is_file():
        raise FileNotFoundError(f"accuracy file not found: {args.accuracy}")
    if args.threads is not None:
        set_threads(max(1, args.threads))
    report = single_stream.run_benchmark(settings, log_progress)
    accuracy = None
    if args.accuracy is not None:
        accuracy = single_stream.load_accuracy(args.accuracy, report)
        report["accuracy"] = {
            name: {("every_frame" if k is None else str(k)): v for k, v in values.items()}
            for name, values in accuracy.items()
        }
    print_report(single_stream.format_table(report), report, args.json, args.plot,
                 lambda report, path: single_stream.write_plot(report, path, accuracy))
    return 0


def _time_process(args: argparse.Namespace) -> int:
    """`--source`: time process() on the user's frames (accel_ros.bench.process)."""
    if args.threads is not None:
        set_threads(max(1, args.threads))
    settings = process.ProcessSettings(
        source=args.source, model=args.model or "default",
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
        mode=args.mode, keyframe_interval=args.keyframe_interval, frames=args.frames or 40,
        rounds=args.repeats if args.repeats > 1 else 3, topic=args.topic, fps=args.fps,
        device="cpu" if args.device == "auto" else args.device)
    report = process.run_process_benchmark(settings)
    print_report(process.format_report(report), report, args.json, args.plot,
                 process.write_plot)
    return 0
