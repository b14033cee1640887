"""`accel-ros segment`: replay a rosbag2, video or image folder through the segmenter into a
bag, a video or a PNG folder. The work is accel_ros.replay's; this module parses options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import rosbag
from ..replay.sinks import OUTPUT_KINDS, check_streams_output, output_kind
from ..replay.sources import is_image_folder, open_source
from ..report import RunSummary
from ..runtime import THREADS_HELP, set_threads
from .options import add_config_option, add_model_options, pipeline_config

OUTPUT_RULE = (
    "OUTPUT: a video suffix (.mp4, .avi, ...) writes an overlay video; a folder receives "
    "overlay PNGs when it exists and is not a bag, when OUTPUT ends in '/' (overlays/), or "
    "when INPUT is an image folder and OUTPUT has no suffix (frames/ -> overlays); anything "
    "else (out, out.mcap, out.db3) becomes a new rosbag2 with <topic>/labels, <topic>/color "
    "and <topic>/stats for each camera topic segmented. --format overrides the rule."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `segment`."""
    seg = subparsers.add_parser(
        "segment",
        help="segment a rosbag2, video or image folder into a bag, video or PNG folder",
        description="Replay INPUT (rosbag2 directory/.mcap/.db3, video file or image folder) "
        f"through the Accel segmenter. {OUTPUT_RULE}",
    )
    seg.add_argument("input", metavar="INPUT", type=Path)
    # A string, not a Path: a trailing slash (a folder) is part of the rule.
    seg.add_argument("--out", "-o", required=True, metavar="OUTPUT")
    cameras = seg.add_mutually_exclusive_group()
    cameras.add_argument("--topic", nargs="+", action="extend", default=None, metavar="TOPIC",
                         help="camera topic(s) of a bag (default: its only Image/"
                         "CompressedImage topic); several run as streams of one model, each "
                         "with its own outputs")
    cameras.add_argument("--all-topics", action="store_true",
                         help="segment every Image/CompressedImage topic of the bag")
    add_model_options(seg)
    add_config_option(seg, "overlay_alpha")
    seg.add_argument("--storage", default=None, choices=sorted(rosbag.STORAGES),
                     help="storage plugin of a rosbag2 output (default: from an OUTPUT ending "
                     "in .mcap/.db3, else mcap)")
    seg.add_argument("--format", dest="output_format", default="auto",
                     choices=("auto", *OUTPUT_KINDS),
                     help="output kind (default: from OUTPUT, see above)")
    seg.add_argument("--fps", type=float, default=None,
                     help="frame rate of video/image-folder input and of video output")
    seg.add_argument("--frame-id", default="camera", help="frame_id for non-bag input")
    add_config_option(seg, "palette", default=None, help="colour palette (default: the model's)")
    seg.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar or warnings")
    seg.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Check paths, storage and topics, then load the model, then segment: a bad path fails
    before the (slow) model load."""
    from ..replay.runner import segment
    from ..stream import build_segmenter

    kind = output_kind(args.out, args.output_format, images_in=is_image_folder(args.input))
    if kind == "bag":
        rosbag.bag_output(args.out, args.storage)
    source = open_source(args.input, args.topic, args.fps, rosbag.make_typestore(),
                         all_topics=args.all_topics)
    try:
        check_streams_output(list(source.topics), kind)
        set_threads(args.threads)
        segmenter = build_segmenter(args.preset, pipeline_config(args), args.checkpoint)
    except BaseException:
        source.close()
        raise
    summary = segment(
        args.input, args.out, segmenter, topic=args.topic, all_topics=args.all_topics,
        storage=args.storage, output_format=args.output_format,
        overlay_alpha=args.overlay_alpha, fps=args.fps, frame_id=args.frame_id,
        palette=args.palette, quiet=args.quiet, source=source,
    )
    print(summary.format())
    return exit_code(summary, args.input)


def exit_code(summary: RunSummary, input_path: Path) -> int:
    """130 after Ctrl-C (naming the output that holds the finished frames), 1 when no frame
    could be segmented, else 0."""
    if "interrupted" in summary.extra:
        print(f"accel-ros segment: interrupted by Ctrl-C after {summary.frames} frames; "
              f"{summary.extra['output']} holds them", file=sys.stderr)
        return 130
    if summary.frames == 0:
        print(f"accel-ros segment: error: no frame of {input_path} could be segmented "
              f"({len(summary.skipped)} skipped)", file=sys.stderr)
        return 1
    return 0
