"""Replay camera frames from a rosbag2 into the running node over real DDS and measure it.

There is no `ros2 bag play` with the PyPI ROS wheels, so this is a small publisher over the
package's own bag reader and writer (accel_ros.io.bag_reader, accel_ros.io.rosbag):

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..io import bag_reader, rosbag, video


def _folder_frames(files: list[Path]) -> Iterator[np.ndarray]:
    for path in files:
        yield video.read_image_rgb(path)


def make_bag(
    images: Path,
    out: Path,
    rate: float = 15.0,
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    frame_id: str = "camera",
    limit: int | None = None,
    storage: str | None = None,
) -> int:
    """Write the images of a folder (sorted by name) as a rosbag2 of sensor_msgs/Image at
    `rate` Hz (stamps from 0; `play` restamps them). `out` and `storage` are read as
    rosbag.bag_output reads them. Returns the number of frames written."""
    files = video.list_images(images)[:limit] if limit else video.list_images(images)
    if not files:
        raise ValueError(f"no images ({', '.join(video.IMAGE_SUFFIXES)}) in {images}")
    return rosbag.write_camera_bag(out, _folder_frames(files), topic=topic, encoding=encoding,
                                   frame_id=frame_id, fps=rate, start_ns=0, storage=storage)


def read_frames(bag: Path, topic: str | None = None) -> list[dict[str, Any]]:
    """The Image / CompressedImage messages of a bag's camera topic (`topic`, or its only
    image topic) as field dicts, in bag order; undecodable messages are left out."""
    source = bag_reader.open_bag(bag)
    try:
        topic, msgtype = rosbag.select_image_topic(source.connections, topic)
        typestore = rosbag.make_typestore()
        frames = []
        for connection, _, raw in source.messages():
            if connection.topic != topic:
                continue
            try:
                msg = typestore.deserialize_cdr(raw, msgtype)
            except Exception:  # rosbags raises struct/index/value errors on garbage bytes
                continue
            fields: dict[str, Any] = {"type": msgtype, "frame_id": msg.header.frame_id,
                                      "data": bytes(msg.data)}
            if msgtype == rosbag.IMAGE_TYPE:
                fields.update(height=msg.height, width=msg.width, encoding=msg.encoding,
                              is_bigendian=msg.is_bigendian, step=msg.step)
            else:
                fields["format"] = msg.format
            frames.append(fields)
    finally:
        source.close()
    if not frames:
        raise ValueError(f"{bag}: no decodable message on {topic}")
    return frames


def percentile(values: list[float], q: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else math.nan


class _Recorder:
    """What comes back from the node, by input stamp: when labels arrived (wall time) and the
    stats message's keyframe flag and node-side latency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[tuple[int, int], float] = {}
        self.stats: dict[tuple[int, int], dict[str, Any]] = {}

    def on_labels(self, msg: Any) -> None:
        with self.lock:
            self.arrivals[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()

    def on_stats(self, msg: Any) -> None:
        if hasattr(msg, "header"):  # accel_ros_msgs/SegmentationStats
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            record = {"is_keyframe": msg.is_keyframe, "end_to_end_ms": msg.end_to_end_ms}
        else:  # std_msgs/String JSON
            record = json.loads(msg.data)
            stamp = record["header"]["stamp"]
            key = (stamp["sec"], stamp["nanosec"])
        with self.lock:
            self.stats[key] = record

    def done(self, key: tuple[int, int]) -> bool:
        with self.lock:
            return key in self.arrivals and key in self.stats


def _camera_message(msg_type: type, fields: dict[str, Any]) -> Any:
    """A message of `fields` stamped with the current time."""
    msg = msg_type()
    msg.header.frame_id = fields["frame_id"]
    if "format" in fields:
        msg.format = fields["format"]
    else:
        msg.height, msg.width, msg.encoding = fields["height"], fields["width"], fields["encoding"]
        msg.is_bigendian, msg.step = fields["is_bigendian"], fields["step"]
    msg.data = fields["data"]
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    return msg


class _Player:
    """A probe node: publishes the frames, listens to the node's labels and stats."""

    def __init__(self, node: str, topic: str, compressed: bool) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image

        self.rclpy, self.node = rclpy, node.rstrip("/")
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.probe = rclpy.create_node("accel_ros_replay", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.probe)
        self.recorder = _Recorder()
        self.probe.create_subscription(Image, f"{self.node}/labels", self.recorder.on_labels, 10)
        self.msg_type = CompressedImage if compressed else Image
        self.publisher = self.probe.create_publisher(self.msg_type, topic, 10)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def connect(self, timeout: float) -> type:
        """Wait until the node subscribes and offers its stats; subscribe to them. Returns
        the stats type (SegmentationStats, or String when the node publishes JSON)."""
        from std_msgs.msg import String

        stats_topic = f"{self.node}/stats"
        deadline = time.monotonic() + timeout
        while True:
            types = dict(self.probe.get_topic_names_and_types())
            if self.publisher.get_subscription_count() > 0 and stats_topic in types:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node} not found subscribing to "
                                   f"{self.publisher.topic_name} within {timeout:.0f} s")
            time.sleep(0.1)
        stats_type: type = String
        if "std_msgs/msg/String" not in types[stats_topic]:
            from accel_ros_msgs.msg import SegmentationStats

            stats_type = SegmentationStats
        self.probe.create_subscription(stats_type, stats_topic, self.recorder.on_stats, 10)
        time.sleep(1.0)  # let the new stats subscription match
        return stats_type

    def publish(self, frames: list[dict[str, Any]], rate: float) -> list[tuple[int, int]]:
        """Publish every frame at `rate` Hz; the stamps sent, in order."""
        sent = []
        start = time.monotonic()
        for index, fields in enumerate(frames):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            msg = _camera_message(self.msg_type, fields)
            self.publisher.publish(msg)
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        return sent

    def settle(self, last: tuple[int, int], timeout: float) -> None:
        """Wait up to `timeout` s for the last frame's outputs, then a little for stragglers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.recorder.done(last):
            time.sleep(0.05)
        time.sleep(0.5)

    def close(self) -> None:
        self.executor.shutdown()
        self.spinner.join(timeout=10.0)
        self.probe.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


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
    frames = read_frames(bag, bag_topic)
    player = _Player(node, topic, compressed=frames[0]["type"] == rosbag.COMPRESSED_TYPE)
    try:
        stats_type = player.connect(discovery_timeout)
        start = time.monotonic()
        sent = player.publish(frames, rate)
        publish_seconds = time.monotonic() - start
        player.settle(sent[-1], settle)
    finally:
        player.close()
    return _summary(bag, rate, sent, publish_seconds, player.recorder, stats_type.__name__)


def _summary(bag: Path, rate: float, sent: list[tuple[int, int]], publish_seconds: float,
             recorder: _Recorder, stats_type: str) -> dict[str, Any]:
    with recorder.lock:
        latencies = [(recorder.arrivals[key] - (key[0] + key[1] * 1e-9)) * 1000.0
                     for key in sent if key in recorder.arrivals]
        processed = [recorder.stats[key] for key in sent if key in recorder.stats]
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
        "stats_type": stats_type,
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
    mk.add_argument("--storage", default=None, choices=sorted(rosbag.STORAGES),
                    help="default: from OUT's suffix (.mcap, .db3), else mcap")
    pl = sub.add_parser("play", help="publish a bag into the node and measure latency")
    pl.add_argument("bag", type=Path)
    pl.add_argument("--rate", type=float, default=15.0, help="publish rate (Hz)")
    pl.add_argument("--topic", default="/camera/image_raw", help="topic the node listens to")
    pl.add_argument("--bag-topic", default=None,
                    help="image topic in the bag (default: its only one)")
    pl.add_argument("--node", default="/accel_segmentation", help="the node's full name")
    pl.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait for the last outputs after publishing")
    pl.add_argument("--discovery-timeout", type=float, default=60.0)
    pl.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.command == "make-bag":
        count = make_bag(args.images, args.out, args.rate, args.topic, args.encoding,
                         limit=args.limit, storage=args.storage)
        print(f"wrote {count} frames to {rosbag.bag_output(args.out, args.storage)[0]}")
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
