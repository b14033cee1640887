"""Inputs of `accel-ros segment`: a rosbag2 (directory or bare .mcap/.db3 file), a video file
or an image folder, read as a stream of `Passthrough` (bag messages to copy through) and
`Frame` (camera frames to segment) items in recording order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import bag_reader, rosbag, video

DEFAULT_TOPIC = "/camera/image_raw"
# The frame rate of an image folder, or a video that states none, unless --fps says.
ASSUMED_FPS = 30.0


@dataclass
class Passthrough:
    """A raw bag message, copied unchanged into a bag output."""

    connection: Any
    timestamp: int
    rawdata: bytes


@dataclass
class Frame:
    """One camera frame. `rgb` is (H, W, 3) uint8, or None with `error` set when the message
    or file could not be decoded. `timestamp` is bag receive time (video: frame time) in ns;
    `header` is the input message's std_msgs/Header (None for video and image input)."""

    index: int
    timestamp: int
    header: Any | None
    rgb: np.ndarray | None
    name: str
    error: str | None = None
    topic: str | None = None  # the bag topic it came from; None for video and image input

    @property
    def stamp_seconds(self) -> float:
        """Header stamp if the publisher set one, else the bag/frame time."""
        if self.header is not None:
            stamp_ns = rosbag.header_stamp_ns(self.header)
            if stamp_ns > 0:
                return stamp_ns * 1e-9
        return self.timestamp * 1e-9


class BagSource:
    """Every recoverable message of a rosbag2 in recording order; the camera topics' ones also
    decoded. `topics` are the cameras to segment (see rosbag.select_image_topics), `topic` the
    first of them; `report` says what a damaged bag gave up (see bag_reader)."""

    def __init__(
        self,
        path: str | Path,
        topic: str | Sequence[str] | None,
        typestore: Any,
        *,
        all_topics: bool = False,
    ) -> None:
        self.path = Path(path)
        self.typestore = typestore
        self._bag = bag_reader.open_bag(self.path)
        try:
            self._select(topic, all_topics)
        except BaseException:
            self._bag.close()
            raise
        self.fps: float | None = None
        self.frame_times = "header stamps (bag receive time where a header stamp is 0)"

    def _select(self, topic: str | Sequence[str] | None, all_topics: bool) -> None:
        self.report = self._bag.report
        self.connections = list(self._bag.connections)
        try:
            self.topics = rosbag.select_image_topics(self.connections, topic,
                                                    all_topics=all_topics)
        except ValueError as error:
            if not self.connections:
                raise bag_reader.BagError(f"{self.path}: {_empty_reason(self.report)}") from None
            raise bag_reader.BagError(f"{self.path}: {error}") from None
        self.topic, self.msgtype = next(iter(self.topics.items()))
        self.counts = {t: sum(c.msgcount for c in self.connections if c.topic == t)
                       for t in self.topics}
        self.total = sum(self.counts.values())
        if self.total == 0:
            raise bag_reader.BagError(f"{self.path}: no message on {', '.join(self.topics)}: "
                                   f"{_empty_reason(self.report)}")
        # A camera without messages is reported rather than refused: the others still run.
        self.notes = [f"{t} has no message in the bag" for t, n in self.counts.items() if not n]
        if all_topics:
            earlier = rosbag.replay_output_topics(rosbag.image_topics(self.connections))
            self.notes += [f"not segmenting {t}: it holds an earlier replay's results for {of}"
                           for t, of in sorted(earlier.items())]

    def __iter__(self) -> Iterator[Passthrough | Frame]:
        indices = dict.fromkeys(self.topics, 0)
        for connection, timestamp, rawdata in self._bag.messages():
            yield Passthrough(connection, timestamp, rawdata)
            topic = connection.topic
            if topic not in indices:
                continue
            index = indices[topic]
            indices[topic] += 1
            name = f"{topic} message {index} (t={timestamp * 1e-9:.6f})"
            try:
                header, rgb = rosbag.decode_image(self.typestore, rawdata, connection.msgtype)
                yield Frame(index, timestamp, header, rgb, name, topic=topic)
            except ValueError as error:
                yield Frame(index, timestamp, None, None, name, str(error), topic=topic)

    def close(self) -> None:
        self._bag.close()


def _empty_reason(report: bag_reader.RecoveryReport) -> str:
    """Why a bag gave nothing: empty, or damaged before its first complete message."""
    if report.damage:
        return f"nothing recoverable before the damage ({report.damage[0]})"
    return "the bag is empty (no messages)"


class FileSource:
    """Frames of a video file or an image folder (no passthrough messages), frame i stamped
    i / `fps` seconds: the given rate, else a video's own, else 30 fps (an image folder, a
    video without a rate), which `notes` then says. `frame_times` tells the summary which."""

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.path = Path(path)
        self.connections: list[Any] = []
        self.topic: str | None = None
        self.topics: dict[str, str] = {}  # no bag topics: one stream, named by the sink
        self.notes: list[str] = []
        video.check_fps(fps)  # now, not at the first frame
        if self.path.is_dir():
            self.total = len(video.list_images(self.path))
            self.fps, known = fps or ASSUMED_FPS, None
        else:
            self.total, known = video.video_info(self.path)[0], video.video_rate(self.path)
            self.fps = fps or known or ASSUMED_FPS
        self.frame_times = _frame_times(self.fps, fps, known)
        if fps is None and known is None:
            self.notes.append(f"{self.path.name} gives no frame times: {self.frame_times}")
        if self.path.is_dir():
            self._frames = video.iter_image_folder(self.path, self.fps)
        else:
            self._frames = video.iter_video(self.path, self.fps)

    def __iter__(self) -> Iterator[Frame]:
        for item in self._frames:
            yield Frame(item.index, item.stamp_ns, None, item.rgb, item.name, item.error)

    def close(self) -> None:
        self._frames.close()


def _frame_times(fps: float, given: float | None, known: float | None) -> str:
    """How a file source's frames are stamped, for the run summary."""
    spacing = f"frame i at i/{fps:g} s ({1 / fps:.3g} s apart"
    if given is not None:
        return f"{spacing}, --fps)"
    if known is not None:
        return f"{spacing}, the video's rate)"
    return (f"{spacing}, {ASSUMED_FPS:g} fps assumed: --fps gives the camera's rate, which "
            "times the keyframe ages of an age-aware model)")


def is_image_folder(path: str | Path) -> bool:
    """A folder that is not a rosbag2 (then `open_source` reads it as an image folder)."""
    path = Path(path)
    return path.is_dir() and not rosbag.is_rosbag(path)


def open_source(
    path: str | Path,
    topic: str | Sequence[str] | None,
    fps: float | None,
    typestore: Any,
    *,
    all_topics: bool = False,
) -> BagSource | FileSource:
    """A source for a rosbag2, a video file or an image folder; FileNotFoundError/ValueError
    name the path when it is none of these. Several topics, or `all_topics`, need a bag: a
    video or image folder is one stream."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if rosbag.is_rosbag(path):
        return BagSource(path, topic, typestore, all_topics=all_topics)
    topics = topic_list(topic)
    if all_topics or len(topics) > 1:
        asked = "--all-topics" if all_topics else f"{len(topics)} topics"
        raise ValueError(f"{path} is not a rosbag2 but {asked} were asked for: video and "
                         f"image-folder input is one camera (--topic names its output topic)")
    if path.is_dir():
        if not video.list_images(path):
            raise ValueError(
                f"{path} is neither a rosbag2 (no metadata.yaml and no .mcap/.db3 file) nor a "
                f"folder with images ({', '.join(video.IMAGE_SUFFIXES)})"
            )
        return FileSource(path, fps)
    if video.is_video_path(path):
        return FileSource(path, fps)
    raise ValueError(
        f"cannot read {path}: expected a rosbag2 directory, a .mcap/.db3 file, a video "
        f"({', '.join(video.VIDEO_SUFFIXES)}) or an image folder"
    )


def topic_list(topic: str | Sequence[str] | None) -> list[str]:
    """`topic` arguments as a list: None, one name, or several (duplicates count once)."""
    if topic is None:
        return []
    if isinstance(topic, str):
        return [topic]
    return list(dict.fromkeys(topic))

