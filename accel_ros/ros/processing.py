"""From the newest frames of the node's streams to what it publishes for each.

`BatchProcessor` converts each stream's message (after `input_guard`'s checks), runs the ready
frames as one batch under the shared batching policy (accel_ros.stream.batching) and renders
every stream's outputs. Each stream has a `StreamReporter`: its error counters, throttled
warnings and rendering. Bad input never raises: unreadable or refused frames and segmenter
failures are counted, logged (throttled per kind) and give no outputs; the next frame is
processed normally. Resets (time gaps judged on arrival, resolution changes judged by the
segmenter) are logged at info level and counted; they are not errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.bridge import ImageConversionError, message_to_rgb8
from ..io.messages import stamp_to_seconds
from ..palette import render_labels
from .diagnostics import ErrorCounters
from .input_guard import convert_checked
from .parameters import NodeOptions
from .slots import ReadyFrame
from .streams import log_prefix
from .throttled_log import Throttle, ThrottledLog


@dataclass
class FrameOutputs:
    """What the node publishes for one frame. Arrays are at the input image's size."""

    rgb: np.ndarray  # (H, W, 3) uint8 input as RGB
    result: Any  # SegmentationResult
    labels: np.ndarray  # (H, W) uint8 class ids
    color: np.ndarray | None = None  # (H, W, 3) uint8 colourised labels
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 labels blended on the input
    scores: np.ndarray | None = None  # (H, W) float32 max class probability
    stamp: float | None = None


def render(rgb: np.ndarray, result: Any, options: NodeOptions,
           stamp: float | None = None) -> FrameOutputs:
    """Colourise / blend / score one result according to `options`. Raises
    ImageConversionError when the labels do not match the input's size."""
    labels = np.asarray(result.labels, dtype=np.uint8)
    if labels.shape != rgb.shape[:2]:
        raise ImageConversionError(
            f"labels {labels.shape} do not match the input image {rgb.shape[:2]}"
        )
    color = blended = scores = None
    if options.publish_color or options.publish_overlay:
        color, blended = render_labels(labels, options.palette,
                                       rgb if options.publish_overlay else None,
                                       options.overlay_alpha)
    if options.publish_scores and result.probabilities is not None:
        scores = np.asarray(result.probabilities, dtype=np.float32).max(axis=0)
    return FrameOutputs(rgb=rgb, result=result, labels=labels,
                        color=color if options.publish_color else None, overlay=blended,
                        scores=scores, stamp=stamp)


class StreamReporter:
    """One stream's side of processing: converts its messages, counts and reports (throttled
    per kind) what went wrong, and renders its outputs. `stream` (when given) prefixes its
    log messages."""

    def __init__(
        self,
        options: NodeOptions | None = None,
        converter: Callable[[Any], np.ndarray] = message_to_rgb8,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        stream: str | None = None,
    ) -> None:
        self.options = options or NodeOptions()
        self.converter = converter
        self.log = ThrottledLog(logger or logging.getLogger(__name__),
                                Throttle(self.options.log_throttle, clock))
        self.errors = ErrorCounters(window=self.options.stats_window)
        self.stream = stream
        self._prefix = log_prefix(stream)

    def _warn(self, kind: str, message: str) -> None:
        message = self._prefix + message
        self.errors.last = message[:self.log.limit]
        self.errors.by_kind[kind] = self.errors.by_kind.get(kind, 0) + 1
        self.log.throttle.period = self.options.log_throttle
        self.log.warning(kind, message)

    def _info(self, kind: str, message: str) -> None:
        self.log.throttle.period = self.options.log_throttle
        self.log.info(kind, self._prefix + message)

    def convert(self, msg: Any) -> np.ndarray | None:
        """Message -> (H, W, 3) uint8 RGB, or None (counted and logged) when it is too large
        for max_input_pixels, unreadable, or the decoder complained about it."""
        try:
            return convert_checked(msg, self.converter, self.options.max_input_pixels)
        except ValueError as error:  # ImageConversionError is a ValueError
            self.errors.conversion += 1
            self._warn("conversion", f"skipping frame: {error}")
            return None

    def refused(self, error: str) -> None:
        """Count a frame the segmenter refused as malformed (its cache is unchanged)."""
        self.errors.conversion += 1
        self._warn("input", f"skipping frame the segmenter refused: {error}")

    def failed(self, error: str) -> None:
        """Count a segmenter failure (the stream's cache was reset: it may be half-updated)."""
        self.errors.inference += 1
        self._warn("inference", f"segmentation failed ({error})")

    def finish(self, rgb: np.ndarray, result: Any, stamp: float | None) -> FrameOutputs | None:
        """Note a reset the segmenter made, then render; None (counted) if rendering fails."""
        if result.reset_reason:
            self.errors.resets += 1
            self.errors.last_reset = result.reset_reason
            self._info("reset", f"keyframe cache reset: {result.reset_reason}")
        try:
            return render(rgb, result, self.options, stamp)
        except ValueError as error:
            self.errors.inference += 1
            self._warn("render", f"could not render the result: {error}")
            return None


@dataclass
class StreamOutcome:
    """One stream's frame after a batch: its message (whose header the outputs carry) and the
    outputs, or None when the frame was skipped (counted in that stream's errors)."""

    stream: str
    msg: Any
    outputs: FrameOutputs | None


@dataclass
class _Converted:
    stream: str
    rgb: np.ndarray  # (H, W, 3) uint8
    stamp: float | None


class BatchProcessor:
    """The newest frames of several streams in, one segmenter batch, per-stream outputs out.

    The segmenter keeps a keyframe cache per stream; each stream has its own
    `StreamReporter`. A frame that cannot be read is skipped for its own stream before the
    batch; the rest go through `segment_batch` (accel_ros.stream.batching), which decides what a
    refused frame or a failing batch costs.
    """

    def __init__(
        self,
        segmenter: Any,
        streams: Sequence[str],
        options: NodeOptions | None = None,
        converter: Callable[[Any], np.ndarray] = message_to_rgb8,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        label_streams: bool = True,
    ) -> None:
        """`label_streams`: prefix log messages with the stream (off for a one-camera node,
        whose messages stay as they always were)."""
        self.segmenter = segmenter
        self.reporters: dict[str, StreamReporter] = {
            name: StreamReporter(options, converter, logger, clock,
                                 stream=name if label_streams else None)
            for name in streams
        }
        self._options = options or NodeOptions()

    @property
    def options(self) -> NodeOptions:
        return self._options

    @options.setter
    def options(self, options: NodeOptions) -> None:
        # Live parameters (palette, overlay, publishing switches, size cap) reach every stream.
        self._options = options
        for reporter in self.reporters.values():
            reporter.options = options

    def errors(self, stream: str) -> ErrorCounters:
        """The stream's failure and reset counters."""
        return self.reporters[stream].errors

    def flush_log(self) -> None:
        """Log the counts of frame warnings held back by bursts that have stopped."""
        for reporter in self.reporters.values():
            reporter.log.flush()

    def process(self, frames: Sequence[ReadyFrame]) -> list[StreamOutcome]:
        """Segment the newest frame of each ready stream (at most one per stream) in one
        batch. Returns one outcome per frame, in the order given."""
        streams = [frame.stream for frame in frames]
        if len(set(streams)) != len(streams):
            raise ValueError(f"at most one frame per stream in a batch, got {streams}")
        converted = [c for c in map(self._convert, frames) if c is not None]
        done = self._segment(converted)
        outcomes = []
        for frame in frames:
            outputs = done.get(frame.stream)
            self.reporters[frame.stream].errors.outcome(outputs is None)
            outcomes.append(StreamOutcome(frame.stream, frame.msg, outputs))
        return outcomes

    def _convert(self, frame: ReadyFrame) -> _Converted | None:
        if frame.reset_reason:  # judged on arrival; applies even if this frame is bad
            self.segmenter.reset(frame.reset_reason, stream=frame.stream)
        rgb = self.reporters[frame.stream].convert(frame.msg)
        if rgb is None:
            return None
        return _Converted(frame.stream, rgb, stamp_to_seconds(frame.msg.header.stamp) or None)

    def _segment(self, frames: list[_Converted]) -> dict[str, FrameOutputs]:
        """{stream: outputs} of the frames that gave a result; the others are reported."""
        if not frames:
            return {}
        # torch is loaded by now (the segmenter exists); the node imports this module earlier.
        from ..stream.batching import segment_batch
        from ..stream.segmenter import StreamFrame

        # The node judged each frame's time gap on its arrival (`AccelSegmenter.note_arrival`),
        # dropped frames included, so the segmenter uses these stamps for keyframe ages only:
        # an age-aware fusion then sees the camera's real ages, as through `segment`.
        outcomes = segment_batch(self.segmenter,
                                 [StreamFrame(f.stream, f.rgb, f.stamp) for f in frames])
        done = {}
        for frame, outcome in zip(frames, outcomes, strict=True):
            reporter = self.reporters[frame.stream]
            if outcome.result is None:
                (reporter.failed if outcome.failed else reporter.refused)(outcome.error)
                continue
            outputs = reporter.finish(frame.rgb, outcome.result, frame.stamp)
            if outputs is not None:
                done[frame.stream] = outputs
        return done
