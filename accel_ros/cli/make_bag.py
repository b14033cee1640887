"""`accel-ros make-bag`: a small synthetic camera rosbag2 (accel_ros.replay.make_bag)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import rosbag
from ..replay.sources import DEFAULT_TOPIC


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `make-bag`."""
    bag = subparsers.add_parser(
        "make-bag", help="write a small synthetic camera rosbag2",
        description="Write a synthetic driving clip as a rosbag2 camera topic (30 fps stamps). "
        "OUT is named as rosbag2 names bags: cam.mcap / cam.db3 -> folder cam/ holding "
        "cam_0.mcap / cam_0.db3 and metadata.yaml; any other name is the folder itself.",
    )
    bag.add_argument("out", metavar="OUT", type=Path)
    bag.add_argument("--frames", type=int, default=30)
    bag.add_argument("--height", type=int, default=256)
    bag.add_argument("--width", type=int, default=512)
    bag.add_argument("--encoding", default="rgb8",
                     help="any sensor_msgs encoding (rgb8, bgr8, mono8, bayer_rggb8, yuv422, "
                     "...) or jpeg/png for a CompressedImage")
    bag.add_argument("--storage", default=None, choices=sorted(rosbag.STORAGES),
                     help="default: from OUT's suffix (.mcap, .db3), else mcap")
    bag.add_argument("--topic", nargs="+", action="extend", default=None, metavar="TOPIC",
                     help=f"camera topic(s) (default {DEFAULT_TOPIC}); several make a rig of "
                     "cameras that each see another street")
    bag.add_argument("--frame-id", default="camera")
    bag.add_argument("--fps", type=float, default=30.0)
    bag.add_argument("--seed", type=int, default=0)
    bag.add_argument("--quiet", "-q", action="store_true")
    bag.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..replay.make_bag import make_bag

    topic, count = make_bag(
        args.out, frames=args.frames, height=args.height, width=args.width,
        encoding=args.encoding, storage=args.storage, topic=args.topic or DEFAULT_TOPIC,
        frame_id=args.frame_id, fps=args.fps, seed=args.seed, quiet=args.quiet,
    )
    folder, storage = rosbag.bag_output(args.out, args.storage)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"wrote {count} {args.encoding} frames on {topic} to {folder}/ ({files}; {storage})")
    return 0
