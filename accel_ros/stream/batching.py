"""The batching policy for several cameras, shared by the node and `accel-ros segment`.

A batch holds the newest frame of each of several streams (at most one per stream) and goes
through one `AccelSegmenter.process_batch`, so each network runs once for all of them. What a
failure costs is decided here, once:

- a frame the segmenter refuses (malformed: `check_frame`'s ValueError, raised before any cache
  changes) costs only its own stream; the other frames of the batch are segmented without it;
- any other exception (out of memory, a bug, results that do not match the frames) fails every
  stream of the batch, and their keyframe caches are reset (they may be half-updated); the next
  batch runs normally.

Plain Python over the segmenter's `check_frame`, `process_batch` and `reset`; the callers keep
their own counters, logs and outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .segmenter import SegmentationResult, StreamFrame


@dataclass
class FrameOutcome:
    """What one frame of a batch gave: a result, or the reason it has none. `failed` tells a
    segmenter failure (the stream's cache was reset) from a refused frame (cache untouched)."""

    stream: str
    result: SegmentationResult | None = None
    error: str = ""
    failed: bool = False


def refusal(segmenter: Any, frame: Any) -> str | None:
    """Why the segmenter would refuse `frame` ((H, W, 3) uint8 RGB), or None. Cheap: callers
    that form batches ask before a frame joins one."""
    try:
        segmenter.check_frame(frame)
    except ValueError as error:
        return str(error)
    return None


def segment_batch(segmenter: Any, frames: Sequence[StreamFrame]) -> list[FrameOutcome]:
    """One outcome per frame, in order, under the policy above. Raises ValueError for two
    frames of one stream (a caller's mistake, not a bad frame)."""
    streams = [frame.stream for frame in frames]
    if len(set(streams)) != len(streams):
        raise ValueError(f"at most one frame per stream in a batch, got {streams}")
    outcomes = {stream: FrameOutcome(stream) for stream in streams}
    admitted = []
    for frame in frames:
        reason = refusal(segmenter, frame.frame)
        if reason is None:
            admitted.append(frame)
        else:
            outcomes[frame.stream].error = reason
    _run(segmenter, admitted, outcomes)
    return [outcomes[stream] for stream in streams]


def _run(segmenter: Any, frames: list[StreamFrame], outcomes: dict[str, FrameOutcome]) -> None:
    """Segment `frames` together; after a refusal the segmenter raised for the whole batch,
    one at a time, so that only the frame at fault is lost."""
    if not frames:
        return
    try:
        results = _checked(frames, segmenter.process_batch(frames))
    except ValueError as error:  # raised before any cache changed
        if len(frames) == 1:
            outcomes[frames[0].stream].error = str(error)
            return
        for frame in frames:
            _run(segmenter, [frame], outcomes)
        return
    except Exception as error:  # e.g. CUDA out of memory: whoever runs this must survive it
        for frame in frames:
            segmenter.reset(stream=frame.stream)  # its cache may be half-updated
            outcome = outcomes[frame.stream]
            outcome.error, outcome.failed = f"{type(error).__name__}: {error}", True
        return
    for frame, result in zip(frames, results, strict=True):
        outcomes[frame.stream].result = result


def _checked(frames: list[StreamFrame], results: Sequence[Any]) -> Sequence[Any]:
    """`results`, if they are one per frame and for the frames' streams, in order (results
    published on another stream's topics would be worse than none)."""
    expected = [frame.stream for frame in frames]
    got = [getattr(result, "stream", stream)
           for result, stream in zip(results, expected, strict=False)]
    if len(results) != len(frames) or got != expected:
        raise RuntimeError(f"the segmenter returned results for streams {got} for frames of "
                           f"{expected}")
    return results
