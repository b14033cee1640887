"""`segment`: offline replay of a bag, video or image folder through the segmenter.

Inputs (sources.py): a rosbag2 directory or bare .mcap/.db3 file, a video file, or an image
folder. Outputs (sinks.py), chosen by `output_kind`: a new rosbag2 (every input topic copied
through plus ``<topic>/labels`` mono8, ``<topic>/color`` rgb8 and ``<topic>/stats``
SegmentationStats, all with the input message's header and bag time), a video of colourised
overlays, or a folder of overlay PNGs. Every decodable input frame gives exactly one output;
an undecodable one is reported, counted as skipped, and the run goes on. Several camera topics
of one bag (`topic` a list, or `all_topics`) run as streams of one segmenter, each with its own
keyframe cache and its own output topics; frames of different cameras are batched (`_run`).
Bags a crash cut short are read up to the damage (bag_reader.py) and the run says what was
recovered; Ctrl-C stops after the current frame(s) and still closes the output, so a bag
output is always a valid rosbag2.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..io import rosbag
from ..io.messages import segmenter_label_info
from ..palette import get_palette
from ..report import RunSummary
from .sinks import BagSink, OverlaySink, check_streams_output, output_kind
from .sources import (
    DEFAULT_TOPIC,
    BagSource,
    FileSource,
    Frame,
    Passthrough,
    is_image_folder,
    open_source,
    topic_list,
)

# ---------------------------------------------------------------------------------------------
# The replay loop.


@dataclass
class ReplayPlan:
    """What a replay reads and writes, classified and checked: the output kind ("bag",
    "video" or "png", see `output_kind`), the input opened as a source, and the typestore that
    decodes and writes its messages."""

    kind: str
    source: BagSource | FileSource
    typestore: Any


def plan_replay(
    input_path: str | Path,
    output_path: str | Path,
    *,
    topic: str | Sequence[str] | None = None,
    all_topics: bool = False,
    storage: str | None = None,
    output_format: str | None = None,
    fps: float | None = None,
) -> ReplayPlan:
    """Classify `input_path` (rosbag2, video or image folder: `open_source`) and
    `output_path` (`output_kind`) and open the input; a bad path, storage or camera topic
    fails here, before any work (the CLI: before the model loads). The source is closed again
    when a check fails; otherwise the caller closes it (`segment` does)."""
    kind = output_kind(output_path, output_format, images_in=is_image_folder(input_path))
    if kind == "bag":
        rosbag.bag_output(output_path, storage)  # a contradicting suffix fails before any work
    typestore = rosbag.make_typestore()
    source = open_source(input_path, topic, fps, typestore, all_topics=all_topics)
    try:
        check_streams_output(list(source.topics), kind)
    except BaseException:
        source.close()
        raise
    return ReplayPlan(kind, source, typestore)


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
    plan: ReplayPlan | None = None,
) -> RunSummary:
    """Segment every frame of `input_path` with `segmenter` (an AccelSegmenter) and write
    `output_path` (see `output_kind`). Returns the run summary; skipped frames are listed in
    ``summary.skipped`` with the reason. `plan` is `plan_replay`'s for these paths, made
    already (the CLI makes it before loading the model to fail fast; a bag is then scanned
    only once); its source is closed here.

    `topic` is a bag's camera topic, or several, and `all_topics` takes every image topic of
    the bag (see rosbag.select_image_topics). With several, each camera is a stream of the one
    segmenter (`configure_streams`, `process_batch`), its outputs go to its own
    ``<topic>/labels``..., and ``summary.extra["topics"]`` (a `TopicTallies`) counts frames,
    keyframes and skips per camera; a bag output is then required."""
    palette = palette or segmenter.model_config.palette
    if plan is None:
        plan = plan_replay(input_path, output_path, topic=topic, all_topics=all_topics,
                           storage=storage, output_format=output_format, fps=fps)
    source, kind, typestore = plan.source, plan.kind, plan.typestore
    mode = segmenter.pipeline_config.mode
    summary = RunSummary(name=f"segment ({mode})")
    cameras = list(source.topics)
    try:
        get_palette(palette)  # an unknown name fails here, not after the first frame
        report = getattr(source, "report", None)
        if report is not None and (report.damaged or report.notes):
            for line in report.lines():
                _warn(line, quiet)
            summary.extra["recovery"] = "\n    ".join(report.lines())
        for note in source.notes:
            _warn(note, quiet)
        if kind == "bag":
            sink: BagSink | OverlaySink = BagSink(
                output_path, storage=storage, typestore=typestore,
                topic=cameras or topic_list(topic)[:1] or DEFAULT_TOPIC,
                connections=source.connections, mode=mode, palette=palette, frame_id=frame_id,
                label_info=segmenter_label_info(segmenter, palette),
            )
        else:
            sink = OverlaySink(output_path, kind, fps=source.fps or 30.0, palette=palette,
                               alpha=overlay_alpha)
        try:
            _report_copying(sink, summary, quiet)
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
    if getattr(source, "frame_times", None):
        summary.extra["frame times"] = source.frame_times
    if hasattr(segmenter, "backend_info"):  # what really ran, fast-path fallbacks included
        summary.extra["backend"] = segmenter.backend_info().describe()
    written = rosbag.bag_output(output_path, storage)[0] if kind == "bag" else output_path
    summary.extra["output"] = f"{written} ({kind})"
    return summary


def _report_copying(sink: BagSink | OverlaySink, summary: RunSummary, quiet: bool) -> None:
    """Warn about input topics left out of a bag output and input message definitions that
    disagree with the known ones; in the summary too, so that --quiet still says it."""
    lines = [f"not copying {skipped}" for skipped in sink.skipped_topics] + sink.notes
    for line in lines:
        _warn(line, quiet)
    if lines:
        summary.extra["input topics"] = "\n    ".join(lines)


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
    (a video, an image folder or a one-camera bag is one stream); see `_Replay`."""
    with tqdm(total=source.total or None, unit="frame", disable=quiet, desc="segment",
              file=sys.stderr) as bar:
        _Replay(source, sink, segmenter, summary, quiet, bar).run(stop)


class _Replay:
    """One replay run: the batch being gathered and everything read since it began.

    The source is walked in recording order; frames gather into a batch of at most one frame
    per camera, which runs once every camera is in it, when a camera comes round again (one
    ran at a lower rate), and at the end, under the shared batching policy
    (accel_ros.stream.batching: a refused frame costs only its camera; a failing batch fails
    its frames and resets their cameras' caches). Everything read meanwhile (other topics'
    messages, the batch's frames) is written when the batch is done, in recording order, so
    the output bag keeps the input's order. A frame that does not decode or that the
    segmenter would refuse is skipped and counted against its camera before it joins a batch.
    Time gaps and resolution changes are judged per stream by the segmenter.
    """

    def __init__(self, source: BagSource | FileSource, sink: BagSink | OverlaySink,
                 segmenter: Any, summary: RunSummary, quiet: bool, bar: tqdm) -> None:
        from ..stream.segmenter import DEFAULT_STREAM

        self.source, self.sink, self.segmenter = source, sink, segmenter
        self.summary, self.quiet, self.bar = summary, quiet, bar
        cameras = list(source.topics)
        self.several = len(cameras) > 1
        self.cameras = max(len(cameras), 1)
        self.default_stream = DEFAULT_STREAM
        self.tallies = TopicTallies((topic, TopicTally()) for topic in cameras)
        if self.several:
            segmenter.configure_streams(cameras)
            summary.extra["topics"] = self.tallies
            summary.extra["timings"] = ("each batch's stage times shared among its frames "
                                        "(the /stats messages carry the whole batch's)")
        self.pending: list[Passthrough | Frame] = []  # read since the batch began, in order
        self.batch: dict[str, Frame] = {}
        self.decode_s: dict[str, float] = {}  # per stream in the batch: its read + decode time

    def run(self, stop: threading.Event | None) -> None:
        """Walk the source; `stop` (Ctrl-C) ends the walk after the item in hand."""
        started = time.perf_counter()
        for item in self.source:
            if isinstance(item, Passthrough):
                self._passthrough(item)
            else:
                self._frame(item, time.perf_counter() - started)
            started = time.perf_counter()
            if stop is not None and stop.is_set():
                break  # the batch in hand is finished below
        if self.batch:
            self._flush()

    def _stream(self, frame: Frame) -> str:
        return frame.topic if self.several and frame.topic is not None else self.default_stream

    def _passthrough(self, item: Passthrough) -> None:
        if self.pending:
            self.pending.append(item)  # written after the batch, in recording order
        else:
            self.sink.passthrough(item)

    def _frame(self, frame: Frame, decode_s: float) -> None:
        from ..stream.batching import refusal

        self.bar.update(1)
        error = frame.error if frame.error is not None else refusal(self.segmenter, frame.rgb)
        if error is not None:
            self._skip(frame, error)
            return
        stream = self._stream(frame)
        if stream in self.batch:
            self._flush()
        self.batch[stream] = frame
        self.pending.append(frame)
        self.decode_s[stream] = decode_s
        if len(self.batch) == self.cameras:
            self._flush()  # every camera is in: no reason to wait (one camera: every frame)

    def _flush(self) -> None:
        from ..stream.batching import segment_batch
        from ..stream.segmenter import StreamFrame

        started = time.perf_counter()
        outcomes = segment_batch(self.segmenter, [
            StreamFrame(stream, frame.rgb, frame.stamp_seconds)
            for stream, frame in self.batch.items()])
        batch_s = time.perf_counter() - started
        by_stream = {outcome.stream: outcome for outcome in outcomes}
        for entry in self.pending:
            if isinstance(entry, Passthrough):
                self.sink.passthrough(entry)
                continue
            stream = self._stream(entry)
            outcome = by_stream[stream]
            if outcome.result is None:
                failed = f"segmentation failed ({outcome.error})"
                self._skip(entry, failed if outcome.failed else outcome.error)
                continue
            self.sink.write(entry, outcome.result, self.decode_s[stream] + batch_s)
            self.summary.add(_BatchShare(outcome.result))
            if self.several:
                self.tallies[stream].add(outcome.result)
        self.pending.clear()
        self.batch.clear()
        self.decode_s.clear()

    def _skip(self, frame: Frame, error: str) -> None:
        if self.several:
            self.tallies[self._stream(frame)].skipped += 1
        self.summary.skip(f"{frame.name}: {error}")
        _warn(f"skipping {frame.name}: {error}", self.quiet, self.bar)


class _BatchShare:
    """A result as the run summary counts it: every result of a batch carries the batch's
    stage times, so each frame is billed its share and the summary's segmenter time adds up
    to the time spent (not batch time x frames)."""

    def __init__(self, result: Any) -> None:
        share = max(int(getattr(result, "batch_size", 1)), 1)
        self.is_keyframe = result.is_keyframe
        self.reset_reason = result.reset_reason
        self.stamp_note = getattr(result, "stamp_note", None)
        self.timings = {stage: ms / share for stage, ms in result.timings.items()}


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
