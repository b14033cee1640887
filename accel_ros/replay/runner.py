"""`accel-ros segment` (offline replay of a bag, video or image folder through the
segmenter) and `accel-ros make-bag` (a small synthetic camera bag).

Inputs: a rosbag2 directory or bare .mcap/.db3 file, a video file, or an image folder.
Outputs, chosen by `output_kind`: a new rosbag2 (every input topic copied through plus
``<topic>/labels`` mono8, ``<topic>/color`` rgb8 and ``<topic>/stats`` SegmentationStats, all
with the input message's header and bag time), a video of colourised overlays, or a folder of
overlay PNGs. Every decodable input frame gives exactly one output; an undecodable one is
reported, counted as skipped, and the run goes on. Several camera topics of one bag (`topic` a
list, or `all_topics`) run as streams of one segmenter, each with its own keyframe cache and
its own output topics; frames of different cameras are batched (`_run`). Bags a crash
cut short are read up to the damage (bag_reader.py) and the run says what was recovered; Ctrl-C
stops after the current frame(s) and still closes the output, so a bag output is always a
valid rosbag2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_PRESET, FLOW_METHODS, MODES, PRESETS
from ..io import bag_reader, rosbag, video
from ..palette import colorize, get_palette, overlay
from ..report import RunSummary

OUTPUT_KINDS = ("bag", "video", "png")
DEFAULT_TOPIC = "/camera/image_raw"


# ---------------------------------------------------------------------------------------------
# Sources: yield Passthrough (bag messages to copy) and Frame (camera frames to segment).


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
    """Frames of a video file or an image folder (no passthrough messages)."""

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.path = Path(path)
        self.connections: list[Any] = []
        self.topic: str | None = None
        self.topics: dict[str, str] = {}  # no bag topics: one stream, named by the sink
        self.notes: list[str] = []
        if self.path.is_dir():
            self.total = len(video.list_images(self.path))
            self.fps = fps or 30.0
            self._frames = video.iter_image_folder(self.path, self.fps)
        else:
            count, file_fps = video.video_info(self.path)
            self.total = count
            self.fps = fps or file_fps
            self._frames = video.iter_video(self.path, self.fps)

    def __iter__(self) -> Iterator[Frame]:
        for item in self._frames:
            yield Frame(item.index, item.stamp_ns, None, item.rgb, item.name, item.error)

    def close(self) -> None:
        self._frames.close()


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
    topics = _topic_list(topic)
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


def _topic_list(topic: str | Sequence[str] | None) -> list[str]:
    """`topic` arguments as a list: None, one name, or several (duplicates count once)."""
    if topic is None:
        return []
    if isinstance(topic, str):
        return [topic]
    return list(dict.fromkeys(topic))


# ---------------------------------------------------------------------------------------------
# Sinks: one output per segmented frame.


def output_kind(path: str | Path, requested: str | None = None) -> str:
    """"video" for a video suffix, "png" for an existing non-bag directory, else "bag"
    (a new rosbag2 directory). `requested` ("bag", "video", "png") overrides the guess."""
    path = Path(path)
    if requested not in (None, "auto"):
        if requested not in OUTPUT_KINDS:
            raise ValueError(f"output format {requested!r} is not one of {OUTPUT_KINDS}")
        kind = requested
    elif video.is_video_path(path):
        kind = "video"
    elif path.is_dir() and not rosbag.is_rosbag(path):
        kind = "png"
    else:
        kind = "bag"
    if kind == "bag" and rosbag.bag_output(path)[0].exists():
        folder = rosbag.bag_output(path)[0]
        raise ValueError(f"output {folder} exists already; a rosbag2 output needs a new path")
    if kind == "png" and path.exists() and not path.is_dir():
        raise ValueError(f"PNG output {path} exists and is not a directory")
    return kind


class BagSink:
    """rosbag2 output: input topics copied through, plus labels, color and stats topics for
    each camera topic (`rosbag.output_topics`: ``<topic>/labels`` ...).

    `topic` is the camera topic, or several; a frame's outputs go to its own topic's
    (`Frame.topic`, the first topic when unset). For video/image input (no input bag) the
    frames themselves are written as rgb8 Images on `topic`, so the output bag is
    self-contained.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        storage: str | None,
        typestore: Any,
        topic: str | Sequence[str],
        connections: list[Any],
        mode: str,
        palette: str,
        frame_id: str = "camera",
    ) -> None:
        self.typestore = typestore
        self.mode = mode
        self.palette = palette
        self.frame_id = frame_id
        cameras = _topic_list(topic)
        if not cameras:
            raise ValueError("a bag output needs a camera topic")
        # {camera topic: {"labels" | "color" | "stats": output topic}}
        self.outputs = {camera: rosbag.output_topics(camera) for camera in cameras}
        self.topics = self.outputs[cameras[0]]  # the first camera's (the only one, usually)
        regenerated = {name for names in self.outputs.values() for name in names.values()}
        self.skipped_topics: list[str] = []
        self._writer = rosbag.open_writer(path, storage)
        try:
            self._copied: dict[int, Any] = {}
            for connection in connections:
                if connection.topic in regenerated:
                    # An earlier replay's outputs: they are about to be regenerated.
                    self.skipped_topics.append(f"{connection.topic}: this run regenerates it")
                    continue
                try:
                    self._copied[connection.id] = self._copy(connection)
                except Exception as error:  # rosbags: unknown type, bad definition
                    self.skipped_topics.append(
                        f"{connection.topic}: type {connection.msgtype} cannot be copied "
                        f"({type(error).__name__}: {error})")
            self._camera = None
            if not connections:
                self._camera = self._writer.add_connection(
                    cameras[0], rosbag.IMAGE_TYPE, typestore=typestore
                )
            types = {"labels": rosbag.IMAGE_TYPE, "color": rosbag.IMAGE_TYPE,
                     "stats": rosbag.STATS_TYPE}
            self._out = {
                camera: {kind: self._writer.add_connection(name, types[kind],
                                                           typestore=typestore)
                         for kind, name in names.items()}
                for camera, names in self.outputs.items()
            }
            self._default = cameras[0]
        except BaseException:
            self._writer.close()
            raise

    def _copy(self, connection: Any) -> Any:
        # Two input connections may differ only in fields rosbag2 does not keep apart
        # (same topic, type and QoS); they share one output connection.
        for previous in self._writer.connections:
            if (previous.topic, previous.msgtype) == (connection.topic, connection.msgtype) and (
                previous.ext.offered_qos_profiles
                == list(getattr(connection.ext, "offered_qos_profiles", []) or [])
            ):
                return previous
        return rosbag.copy_connection(self._writer, connection, self.typestore)

    def passthrough(self, item: Passthrough) -> None:
        out = self._copied.get(item.connection.id)
        if out is not None:
            self._writer.write(out, item.timestamp, item.rawdata)

    def write(self, frame: Frame, result: Any, elapsed_s: float) -> None:
        from ..io.messages import stats_fields

        ts = self.typestore
        header = frame.header
        if header is None:
            header = rosbag.make_header(ts, frame.timestamp, self.frame_id)
        if self._camera is not None:
            msg = rosbag.image_message(ts, frame.rgb, "rgb8", header)
            self._writer.write(self._camera, frame.timestamp,
                               ts.serialize_cdr(msg, rosbag.IMAGE_TYPE))
        labels = rosbag.image_message(ts, result.labels, "mono8", header)
        color = rosbag.image_message(ts, colorize(result.labels, self.palette), "rgb8", header)
        stamp = frame.stamp_seconds
        # Offline there is no transport: "end to end" is decode + segment time of this frame
        # (of its batch, when several cameras run together).
        fields = stats_fields(result, mode=self.mode, stamp=stamp, now=stamp + elapsed_s)
        stats = ts.types[rosbag.STATS_TYPE](header=header, **fields)
        out = self._out[frame.topic or self._default]
        for kind, msg in (("labels", labels), ("color", color), ("stats", stats)):
            connection = out[kind]
            self._writer.write(connection, frame.timestamp,
                               ts.serialize_cdr(msg, connection.msgtype))

    def close(self) -> None:
        self._writer.close()


class OverlaySink:
    """Colourised label overlays as a video file or a folder of PNGs."""

    def __init__(
        self, path: str | Path, kind: str, *, fps: float, palette: str, alpha: float
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
        self.path = Path(path)
        self.kind = kind
        self.palette = palette
        self.alpha = alpha
        self.skipped_topics: list[str] = []
        self._names: set[str] = set()
        self._video = video.VideoWriter(self.path, fps) if kind == "video" else None
        if kind == "png":
            self.path.mkdir(parents=True, exist_ok=True)

    def passthrough(self, item: Passthrough) -> None:
        """Other topics have no place in a video; dropped."""

    def render(self, frame: Frame, result: Any) -> np.ndarray:
        """(H, W, 3) uint8 RGB overlay of the frame's labels."""
        return overlay(frame.rgb, colorize(result.labels, self.palette), self.alpha)

    def _png_name(self, frame: Frame) -> str:
        # Image-folder input keeps its file names, so outputs pair up with inputs by name.
        stem = Path(frame.name).stem if Path(frame.name).suffix else f"frame_{frame.index:06d}"
        name = f"{stem}.png"
        if name in self._names:
            name = f"{stem}_{frame.index:06d}.png"
        self._names.add(name)
        return name

    def write(self, frame: Frame, result: Any, elapsed_s: float) -> None:
        image = self.render(frame, result)
        if self._video is not None:
            self._video.write(image)
        else:
            video.write_image_rgb(self.path / self._png_name(frame), image)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


# ---------------------------------------------------------------------------------------------
# The replay loop.


def segment(
    input_path: str | Path,
    output_path: str | Path,
    segmenter: Any,
    *,
    topic: str | Sequence[str] | None = None,
    all_topics: bool = False,
    storage: str | None = None,
    output_format: str | None = None,
    overlay_alpha: float = 0.5,
    fps: float | None = None,
    frame_id: str = "camera",
    palette: str | None = None,
    quiet: bool = False,
    source: BagSource | FileSource | None = None,
) -> RunSummary:
    """Segment every frame of `input_path` with `segmenter` (an AccelSegmenter) and write
    `output_path` (see `output_kind`). Returns the run summary; skipped frames are listed in
    ``summary.skipped`` with the reason. `source` is `input_path` opened already (the CLI opens
    it before loading the model to fail fast; a bag is then scanned only once); it is closed
    here.

    `topic` is a bag's camera topic, or several, and `all_topics` takes every image topic of
    the bag (see rosbag.select_image_topics). With several, each camera is a stream of the one
    segmenter (`configure_streams`, `process_batch`), its outputs go to its own
    ``<topic>/labels``..., and ``summary.extra["topics"]`` (a `TopicTallies`) counts frames,
    keyframes and skips per camera; a bag output is then required."""
    kind = output_kind(output_path, output_format)
    if kind == "bag":
        rosbag.bag_output(output_path, storage)  # a contradicting suffix fails before any work
    typestore = rosbag.make_typestore()
    palette = palette or segmenter.model_config.palette
    get_palette(palette)  # an unknown name fails here, not after the first frame
    mode = segmenter.pipeline_config.mode
    if source is None:
        source = open_source(input_path, topic, fps, typestore, all_topics=all_topics)
    summary = RunSummary(name=f"segment ({mode})")
    report = getattr(source, "report", None)
    if report is not None and (report.damaged or report.notes):
        for line in report.lines():
            _warn(line, quiet)
        summary.extra["recovery"] = "\n    ".join(report.lines())
    cameras = list(source.topics)
    try:
        check_streams_output(cameras, kind)
        for note in source.notes:
            _warn(note, quiet)
        if kind == "bag":
            sink: BagSink | OverlaySink = BagSink(
                output_path, storage=storage, typestore=typestore,
                topic=cameras or _topic_list(topic)[:1] or DEFAULT_TOPIC,
                connections=source.connections, mode=mode, palette=palette, frame_id=frame_id,
            )
        else:
            sink = OverlaySink(output_path, kind, fps=source.fps or 30.0, palette=palette,
                               alpha=overlay_alpha)
        try:
            for skipped in sink.skipped_topics:
                _warn(f"not copying {skipped}", quiet)
            summary.start()
            with _ctrl_c_stops() as stop:
                _run(source, sink, segmenter, summary, quiet, stop)
            if stop.is_set():
                summary.extra["interrupted"] = (
                    f"Ctrl-C after {summary.frames} frames; the output holds them")
        finally:
            sink.close()
    finally:
        source.close()
    summary.stop()
    summary.extra["input"] = f"{input_path}" + (f" [{', '.join(cameras)}]" if cameras else "")
    written = rosbag.bag_output(output_path, storage)[0] if kind == "bag" else output_path
    summary.extra["output"] = f"{written} ({kind})"
    return summary


def check_streams_output(topics: Sequence[str], kind: str) -> None:
    """Several cameras need a bag output: a video or a PNG folder holds one camera's frames.
    Checked before any work (the CLI: before the model loads)."""
    if len(topics) > 1 and kind != "bag":
        raise ValueError(f"{len(topics)} camera topics ({', '.join(topics)}) need a rosbag2 "
                         f"output; a {kind} output holds one camera: pass one --topic")


@dataclass
class TopicTally:
    """What a multi-camera run did with one camera topic."""

    frames: int = 0
    keyframes: int = 0
    skipped: int = 0
    resets: int = 0

    def add(self, result: Any) -> None:
        self.frames += 1
        self.keyframes += int(bool(result.is_keyframe))
        self.resets += int(result.reset_reason is not None)


class TopicTallies(dict[str, TopicTally]):
    """{camera topic: TopicTally}; printed in the run summary as one line per camera."""

    def __str__(self) -> str:
        lines = [f"{len(self)} cameras, one segmenter"]
        lines += [f"{topic}: {t.frames} frames, {t.keyframes} keyframes, {t.skipped} skipped, "
                  f"{t.resets} cache resets" for topic, t in self.items()]
        return "\n    ".join(lines)


def _run(
    source: BagSource | FileSource,
    sink: BagSink | OverlaySink,
    segmenter: Any,
    summary: RunSummary,
    quiet: bool,
    stop: threading.Event | None = None,
) -> None:
    """Every frame of `source` through one segmenter: one stream per camera topic of a bag
    (a video, an image folder or a one-camera bag is one stream).

    The source is walked in recording order; frames gather into a batch of at most one frame
    per camera, which runs (`process_batch`) once every camera is in it, when a camera comes
    round again (one ran at a lower rate), and at the end.
    Everything read meanwhile (other topics' messages, the batch's frames) is written when the
    batch is done, in recording order, so the output bag keeps the input's order. A frame that
    does not decode or that the segmenter refuses (`check_frame`) is skipped and counted
    against its camera before it joins a batch, so it never costs the others their frame.
    Time gaps and resolution changes are judged per stream by the segmenter.
    """
    from ..model.pipeline import DEFAULT_STREAM, StreamFrame

    cameras = list(source.topics)
    several = len(cameras) > 1
    tallies = TopicTallies((topic, TopicTally()) for topic in cameras)
    if several:
        segmenter.configure_streams(cameras)
        summary.extra["topics"] = tallies
        summary.extra["timings"] = ("each batch's stage times shared among its frames (the "
                                    "/stats messages carry the whole batch's)")
    pending: list[Passthrough | Frame] = []  # read since the batch began, in recording order
    batch: dict[str, Frame] = {}
    decode_s: dict[str, float] = {}  # per stream in the batch: its read + decode time

    def stream(frame: Frame) -> str:
        return frame.topic if several and frame.topic is not None else DEFAULT_STREAM

    def flush() -> None:
        started = time.perf_counter()
        results = _process_batch(segmenter, batch, StreamFrame)
        batch_s = time.perf_counter() - started
        for entry in pending:
            if isinstance(entry, Passthrough):
                sink.passthrough(entry)
                continue
            outcome = results[stream(entry)]
            if isinstance(outcome, str):
                skip(entry, outcome)
                continue
            sink.write(entry, outcome, decode_s[stream(entry)] + batch_s)
            summary.add(_BatchShare(outcome))
            if several:
                tallies[stream(entry)].add(outcome)
        pending.clear()
        batch.clear()
        decode_s.clear()

    def skip(frame: Frame, error: str) -> None:
        if several:
            tallies[stream(frame)].skipped += 1
        summary.skip(f"{frame.name}: {error}")
        _warn(f"skipping {frame.name}: {error}", quiet, bar)

    with tqdm(total=source.total or None, unit="frame", disable=quiet, desc="segment",
              file=sys.stderr) as bar:
        started = time.perf_counter()
        for item in source:
            if isinstance(item, Passthrough):
                if pending:
                    pending.append(item)
                else:
                    sink.passthrough(item)
                started = time.perf_counter()
                continue
            bar.update(1)
            error = item.error
            if error is None:
                try:
                    segmenter.check_frame(item.rgb)
                except ValueError as exc:
                    error = str(exc)
            if error is not None:
                skip(item, error)
            else:
                if stream(item) in batch:
                    flush()
                batch[stream(item)] = item
                pending.append(item)
                decode_s[stream(item)] = time.perf_counter() - started
                if len(batch) == max(len(cameras), 1):
                    flush()  # every camera is in: no reason to wait (one camera: every frame)
            started = time.perf_counter()
            if stop is not None and stop.is_set():
                break  # the batch in hand is finished below
        if batch:
            flush()


class _BatchShare:
    """A result as the run summary counts it: every result of a batch carries the batch's
    stage times, so each frame is billed its share and the summary's segmenter time adds up
    to the time spent (not batch time x frames)."""

    def __init__(self, result: Any) -> None:
        share = max(int(getattr(result, "batch_size", 1)), 1)
        self.is_keyframe = result.is_keyframe
        self.reset_reason = result.reset_reason
        self.timings = {stage: ms / share for stage, ms in result.timings.items()}


def _process_batch(
    segmenter: Any, frames: dict[str, Frame], stream_frame: Any
) -> dict[str, Any]:
    """{stream: SegmentationResult, or the error that skips its frame} for a batch of frames
    of distinct streams. A ValueError leaves every stream's cache as it was, so after one the
    frames are run one at a time: only the frame at fault is lost."""
    batch = [stream_frame(name, f.rgb, f.stamp_seconds) for name, f in frames.items()]
    try:
        results = segmenter.process_batch(batch)
    except ValueError as error:
        if len(batch) == 1:
            return {batch[0].stream: str(error)}
        outcomes: dict[str, Any] = {}
        for entry in batch:
            try:
                outcomes[entry.stream] = segmenter.process_batch([entry])[0]
            except ValueError as alone:
                outcomes[entry.stream] = str(alone)
        return outcomes
    return {entry.stream: result for entry, result in zip(batch, results, strict=True)}


@contextmanager
def _ctrl_c_stops() -> Iterator[threading.Event]:
    """While segmenting: the first Ctrl-C sets the event, so the loop finishes the frame in
    hand and stops, and the output is closed with every finished frame in it; a second Ctrl-C
    interrupts at once (the output is still closed by the callers' finally). Only the main
    thread can own SIGINT; elsewhere Ctrl-C keeps its default behaviour."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _warn(message: str, quiet: bool, bar: tqdm | None = None) -> None:
    if quiet:
        return
    if bar is not None:
        bar.write(f"warning: {message}", file=sys.stderr)
    else:
        print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# make-bag


def make_bag(
    out: str | Path,
    *,
    frames: int = 30,
    height: int = 256,
    width: int = 512,
    encoding: str = "rgb8",
    storage: str | None = None,
    topic: str | Sequence[str] = DEFAULT_TOPIC,
    frame_id: str = "camera",
    fps: float = 30.0,
    seed: int = 0,
    quiet: bool = False,
) -> tuple[str, int]:
    """Write a synthetic driving clip as a camera bag. `out` names it as rosbag2 does (see
    rosbag.bag_output: ``cam.db3`` is the folder ``cam/`` with ``cam_0.db3``). For "jpeg"/"png"
    the topic is a CompressedImage on ``<topic>/compressed`` (image_transport's name).

    Several topics make a synchronised rig: camera i films its own street (seed + i), with
    frame_id ``<frame_id>_<i>``, and every camera's frame i has the same stamp. Returns
    (topic, count of messages): the topics are comma-separated when there are several."""
    from ..data.synthetic import SyntheticDrivingScene, scene_config

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    topics = _topic_list(topic) or [DEFAULT_TOPIC]
    folder, storage = rosbag.bag_output(out, storage)
    if folder.exists():
        raise ValueError(f"output {folder} exists already; a rosbag2 output needs a new path")
    if encoding in rosbag.COMPRESSED_FORMATS:
        topics = [t if t.endswith("/compressed") else f"{t}/compressed" for t in topics]
    if len(set(topics)) != len(topics):
        raise ValueError(f"camera topics repeat: {', '.join(topics)}")
    many = len(topics) > 1
    cameras = {
        name: (frame.image for frame in SyntheticDrivingScene(
            scene_config(height=height, width=width, seed=seed + index, fps=fps),
            num_frames=frames))
        for index, name in enumerate(topics)
    }
    frame_ids = {name: f"{frame_id}_{index}" if many else frame_id
                 for index, name in enumerate(topics)}
    # Rendered lazily, one frame at a time, so the progress bar tracks the real work.
    bar = tqdm(total=frames * len(topics), desc="make-bag", unit="frame", disable=quiet,
               file=sys.stderr)
    with bar:
        counts = rosbag.write_cameras_bag(
            out, {name: _counted(images, bar) for name, images in cameras.items()},
            encoding=encoding, frame_ids=frame_ids, fps=fps, storage=storage,
        )
    return ", ".join(topics), sum(counts.values())


def _counted(images: Iterator[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
    for image in images:
        yield image
        bar.update(1)


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `segment` and `make-bag`."""
    seg = subparsers.add_parser(
        "segment",
        help="segment a rosbag2, video or image folder into a bag, video or PNG folder",
        description="Replay INPUT (rosbag2 directory/.mcap/.db3, video file or image folder) "
        "through the Accel segmenter. OUTPUT: a video suffix (.mp4, .avi, ...) writes an "
        "overlay video, an existing non-bag directory receives overlay PNGs, anything else "
        "becomes a new rosbag2 with <topic>/labels, <topic>/color and <topic>/stats for each "
        "camera topic segmented.",
    )
    seg.add_argument("input", metavar="INPUT", type=Path)
    seg.add_argument("--out", "-o", required=True, type=Path, metavar="OUTPUT")
    cameras = seg.add_mutually_exclusive_group()
    cameras.add_argument("--topic", nargs="+", action="extend", default=None, metavar="TOPIC",
                         help="camera topic(s) of a bag (default: its only Image/"
                         "CompressedImage topic); several run as streams of one model, each "
                         "with its own outputs")
    cameras.add_argument("--all-topics", action="store_true",
                         help="segment every Image/CompressedImage topic of the bag")
    seg.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    seg.add_argument("--checkpoint", default="default",
                     help="'default' (shipped), 'none' (random weights) or a path")
    seg.add_argument("--mode", default="accel", choices=MODES)
    seg.add_argument("--keyframe-interval", type=int, default=5)
    seg.add_argument("--device", default="auto")
    seg.add_argument("--flow", default="dis", choices=FLOW_METHODS)
    seg.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                     help="resize frames to H W before the network")
    seg.add_argument("--overlay-alpha", type=float, default=0.5)
    seg.add_argument("--storage", default=None, choices=sorted(rosbag.STORAGES),
                     help="storage plugin of a rosbag2 output (default: from an OUTPUT ending "
                     "in .mcap/.db3, else mcap)")
    seg.add_argument("--format", dest="output_format", default="auto",
                     choices=("auto", *OUTPUT_KINDS), help="output kind (default: from OUTPUT)")
    seg.add_argument("--fps", type=float, default=None,
                     help="frame rate of video/image-folder input and of video output")
    seg.add_argument("--frame-id", default="camera", help="frame_id for non-bag input")
    seg.add_argument("--palette", default=None, help="colour palette (default: the model's)")
    seg.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (default: torch's choice); 1 is often fastest "
                     "on a machine shared with other jobs")
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar or warnings")
    seg.set_defaults(handler=main_segment)

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
    bag.set_defaults(handler=main_make_bag)


def main_segment(args: argparse.Namespace) -> int:
    from ..config import PipelineConfig
    from ..model import build_segmenter

    # Check paths, storage and topics before the (slow) model load.
    kind = output_kind(args.out, args.output_format)
    if kind == "bag":
        rosbag.bag_output(args.out, args.storage)
    source = open_source(args.input, args.topic, args.fps, rosbag.make_typestore(),
                         all_topics=args.all_topics)
    try:
        check_streams_output(list(source.topics), kind)
        set_threads(args.threads)
        pipeline = PipelineConfig(
            mode=args.mode,
            keyframe_interval=args.keyframe_interval,
            flow_method=args.flow,
            device=args.device,
            input_size=tuple(args.input_size) if args.input_size else None,
        )
        segmenter = build_segmenter(args.preset, pipeline, args.checkpoint)
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
    if "interrupted" in summary.extra:
        print(f"accel-ros segment: interrupted by Ctrl-C after {summary.frames} frames; "
              f"{summary.extra['output']} holds them", file=sys.stderr)
        return 130
    if summary.frames == 0:
        print(f"accel-ros segment: error: no frame of {args.input} could be segmented "
              f"({len(summary.skipped)} skipped)", file=sys.stderr)
        return 1
    return 0


def set_threads(threads: int | None) -> None:
    """Apply --threads. Only CLI entry points call this: they own the process."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def main_make_bag(args: argparse.Namespace) -> int:
    topic, count = make_bag(
        args.out, frames=args.frames, height=args.height, width=args.width,
        encoding=args.encoding, storage=args.storage, topic=args.topic or DEFAULT_TOPIC,
        frame_id=args.frame_id, fps=args.fps, seed=args.seed, quiet=args.quiet,
    )
    folder, storage = rosbag.bag_output(args.out, args.storage)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"wrote {count} {args.encoding} frames on {topic} to {folder}/ ({files}; {storage})")
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry for the dispatcher: runs whichever subcommand `args` was parsed for."""
    handler = getattr(args, "handler", None)
    if handler is None:
        handler = main_make_bag if getattr(args, "command", "") == "make-bag" else main_segment
    return handler(args)
