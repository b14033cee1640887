"""Replay camera frames from a rosbag2 into the running node over real DDS and measure it.

There is no `ros2 bag play` with the PyPI ROS wheels, so this is a small publisher over the
pure-Python `rosbags` reader:

    python -m accel_ros.ros.bag_player make-bag ../shared/camvid/val camvid_val --rate 15
    python -m accel_ros.ros.bag_player play camvid_val --rate 15 --json latency.json

`make-bag` (no ROS needed) writes an image folder as a rosbag2 of sensor_msgs/Image.
`play` publishes every frame of a bag at `--rate` Hz on `--topic`, stamped with the current
time, listens to the node's `<node>/labels` and `<node>/stats`, and reports end-to-end latency
(input stamp -> labels received, ms, p50/p99), drop rate (frames without labels) and keyframe
ratio (of the processed frames) as JSON. Publisher and node must share a clock (one machine).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def make_bag(
    images: Path,
    out: Path,
    rate: float = 15.0,
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    frame_id: str = "camera",
    limit: int | None = None,
) -> int:
    """Write the images of a folder (sorted by name) as a rosbag2 (sqlite3) of
    sensor_msgs/Image at `rate` Hz. Returns the number of frames written."""
    import cv2
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from ..io.bridge import from_rgb8
    from ..io.messages import seconds_to_stamp

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[:limit] if limit else files
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    store = get_typestore(Stores.ROS2_JAZZY)
    image_cls, header_cls = store.types[IMAGE_TYPE], store.types["std_msgs/msg/Header"]
    time_cls = store.types["builtin_interfaces/msg/Time"]
    with Writer(Path(out), version=8) as writer:
        connection = writer.add_connection(topic, IMAGE_TYPE, typestore=store)
        for index, path in enumerate(files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot read image {path}")
            t_ns = round(index * 1e9 / rate)
            sec, nanosec = seconds_to_stamp(t_ns * 1e-9)
            header = header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=frame_id)
            msg = image_cls(header=header, **from_rgb8(bgr[:, :, ::-1].copy(), encoding))
            writer.write(connection, t_ns, store.serialize_cdr(msg, IMAGE_TYPE))
    return len(files)


def read_frames(bag: Path, topic: str | None = None) -> list[dict[str, Any]]:
    """The Image / CompressedImage messages of a rosbag2 as field dicts, in bag order."""
    from rosbags.highlevel import AnyReader

    frames = []
    with AnyReader([Path(bag)]) as reader:
        connections = [
            c for c in reader.connections
            if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE) and (topic is None or c.topic == topic)
        ]
        if not connections:
            raise ValueError(f"{bag}: no sensor_msgs Image/CompressedImage topic"
                             + (f" named {topic}" if topic else ""))
        first = connections[0].topic
        for connection, _, raw in reader.messages(connections=connections):
            if connection.topic != first:
                continue
            msg = reader.deserialize(raw, connection.msgtype)
            fields: dict[str, Any] = {"type": connection.msgtype, "frame_id":
                                      msg.header.frame_id, "data": bytes(msg.data)}
            if connection.msgtype == IMAGE_TYPE:
                fields.update(height=msg.height, width=msg.width, encoding=msg.encoding,
                              is_bigendian=msg.is_bigendian, step=msg.step)
            else:
                fields["format"] = msg.format
            frames.append(fields)
    return frames


def percentile(values: list[float], q: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else math.nan


def play(
    bag: Path,
    rate: float = 15.0,
    topic: str = "/camera/image_raw",
    node: str = "/accel_segmentation",
    settle: float = 10.0,
    discovery_timeout: float = 30.0,
    bag_topic: str | None = None,
) -> dict[str, Any]:
    """Publish the bag's frames at `rate` Hz into the node and measure what comes back."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    frames = read_frames(bag, bag_topic)
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("accel_ros_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    arrivals: dict[tuple[int, int], float] = {}
    stats: dict[tuple[int, int], Any] = {}
    lock = threading.Lock()

    def on_labels(msg: Image) -> None:
        with lock:
            arrivals[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()

    def on_stats(msg: Any) -> None:
        if isinstance(msg, String):
            data = json.loads(msg.data)
            stamp = data["header"]["stamp"]
            key, record = (stamp["sec"], stamp["nanosec"]), data
        else:
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            record = {"is_keyframe": msg.is_keyframe, "end_to_end_ms": msg.end_to_end_ms}
        with lock:
            stats[key] = record

    node = node.rstrip("/")
    probe.create_subscription(Image, f"{node}/labels", on_labels, 10)
    stats_type = String
    try:
        from accel_ros_msgs.msg import SegmentationStats

        stats_type = SegmentationStats
    except ImportError:
        pass
    compressed = frames[0]["type"] == COMPRESSED_TYPE
    msg_type = CompressedImage if compressed else Image
    publisher = probe.create_publisher(msg_type, topic, 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + discovery_timeout
        types: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            types = dict(probe.get_topic_names_and_types())
            if publisher.get_subscription_count() > 0 and f"{node}/stats" in types:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"node {node} not found subscribing to {topic} within "
                               f"{discovery_timeout:.0f} s")
        if "std_msgs/msg/String" in types[f"{node}/stats"]:
            stats_type = String
        probe.create_subscription(stats_type, f"{node}/stats", on_stats, 10)
        time.sleep(1.0)  # let the new stats subscription match
        sent: list[tuple[int, int]] = []
        start = time.monotonic()
        for index, fields in enumerate(frames):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            msg = msg_type()
            msg.header.frame_id = fields["frame_id"]
            if compressed:
                msg.format = fields["format"]
            else:
                msg.height, msg.width, msg.encoding = (fields["height"], fields["width"],
                                                       fields["encoding"])
                msg.is_bigendian, msg.step = fields["is_bigendian"], fields["step"]
            msg.data = fields["data"]
            now_ns = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            publisher.publish(msg)
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        publish_seconds = time.monotonic() - start
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            with lock:
                if sent[-1] in arrivals and sent[-1] in stats:
                    break
            time.sleep(0.05)
        time.sleep(0.5)
        with lock:
            latencies = [(arrivals[key] - (key[0] + key[1] * 1e-9)) * 1000.0
                         for key in sent if key in arrivals]
            processed = [stats[key] for key in sent if key in stats]
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
        probe.destroy_node()
        rclpy.try_shutdown(context=context)
    keyframes = sum(bool(s["is_keyframe"]) for s in processed)
    node_latency = [float(s["end_to_end_ms"]) for s in processed
                    if s.get("end_to_end_ms") is not None]
    return {
        "bag": str(bag),
        "frames_published": len(sent),
        "rate_hz": rate,
        "publish_seconds": round(publish_seconds, 3),
        "frames_labelled": len(latencies),
        "drop_rate": round(1.0 - len(latencies) / len(sent), 4),
        "latency_ms_p50": round(percentile(latencies, 50), 1),
        "latency_ms_p99": round(percentile(latencies, 99), 1),
        "latency_ms_mean": round(float(np.mean(latencies)), 1) if latencies else math.nan,
        "node_end_to_end_ms_p50": round(percentile(node_latency, 50), 1),
        "stats_received": len(processed),
        "keyframe_ratio": round(keyframes / len(processed), 4) if processed else math.nan,
        "stats_type": stats_type.__name__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accel_ros.ros.bag_player",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-bag", help="image folder -> rosbag2 of sensor_msgs/Image")
    mk.add_argument("images", type=Path)
    mk.add_argument("out", type=Path)
    mk.add_argument("--rate", type=float, default=15.0, help="frame rate of the stamps (Hz)")
    mk.add_argument("--topic", default="/camera/image_raw")
    mk.add_argument("--encoding", default="rgb8")
    mk.add_argument("--limit", type=int, default=None, help="first N images only")
    pl = sub.add_parser("play", help="publish a bag into the node and measure latency")
    pl.add_argument("bag", type=Path)
    pl.add_argument("--rate", type=float, default=15.0, help="publish rate (Hz)")
    pl.add_argument("--topic", default="/camera/image_raw", help="topic the node listens to")
    pl.add_argument("--bag-topic", default=None, help="image topic in the bag (default: first)")
    pl.add_argument("--node", default="/accel_segmentation", help="the node's full name")
    pl.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait for the last outputs after publishing")
    pl.add_argument("--discovery-timeout", type=float, default=60.0)
    pl.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.command == "make-bag":
        count = make_bag(args.images, args.out, args.rate, args.topic, args.encoding,
                         limit=args.limit)
        print(f"wrote {count} frames to {args.out}")
        return 0
    summary = play(args.bag, args.rate, args.topic, args.node, args.settle,
                   args.discovery_timeout, args.bag_topic)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
