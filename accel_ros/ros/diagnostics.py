"""What /diagnostics says about a stream: sliding-window statistics (latency percentiles,
fps, keyframe ratio) and the health judgement built from them, the stream's newest-frame slot
and its error counters."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .input_rate import Rates
from .parameters import NodeOptions
from .slots import FrameSlot

# More of a camera's frames than this lost before they reach the node is a warning.
INPUT_LOSS_WARN = 0.1


def _percentiles(values: deque[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p99": math.nan}
    return {
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
    }


class StreamStatistics:
    """Sliding-window statistics of processed frames. Times are passed in (seconds, any
    monotonic clock), so the numbers are reproducible in tests."""

    def __init__(self, window: int = 100) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 frames, got {window}")
        self.window = int(window)
        self._latency: dict[str, deque[float]] = {}
        self._keyframes: deque[bool] = deque(maxlen=self.window)
        self._done_at: deque[float] = deque(maxlen=self.window)
        self.processed = 0

    def record(
        self,
        timings: Mapping[str, float],
        is_keyframe: bool,
        now: float,
        end_to_end_ms: float | None = None,
    ) -> None:
        """Add one processed frame: its stage timings (ms), whether it was a keyframe, the time
        it finished, and its header-to-publish latency (ms) when known."""
        stages = dict(timings)
        if end_to_end_ms is not None:
            stages["end_to_end"] = end_to_end_ms
        for name, value in stages.items():
            series = self._latency.setdefault(name, deque(maxlen=self.window))
            series.append(float(value))
        self._keyframes.append(bool(is_keyframe))
        self._done_at.append(float(now))
        self.processed += 1

    def latency(self) -> dict[str, dict[str, float]]:
        """{stage: {"mean", "p50", "p99"}} in ms over the window; NaN when no data."""
        return {name: _percentiles(series) for name, series in self._latency.items()}

    def fps(self) -> float:
        """Processed frames per second over the window (0 with fewer than 2 frames)."""
        if len(self._done_at) < 2:
            return 0.0
        span = self._done_at[-1] - self._done_at[0]
        return (len(self._done_at) - 1) / span if span > 0 else 0.0

    def keyframe_ratio(self) -> float:
        """Fraction of keyframes in the window (0 when empty)."""
        return sum(self._keyframes) / len(self._keyframes) if self._keyframes else 0.0


@dataclass
class ErrorCounters:
    """Cumulative failure counts plus the outcome of the last `window` frames, which is what
    the diagnostics level is judged on (so it recovers once frames are good again)."""

    conversion: int = 0  # unreadable images (encoding, size, data)
    inference: int = 0  # the segmenter raised
    last: str = ""
    by_kind: dict[str, int] = field(default_factory=dict)
    resets: int = 0  # keyframe cache resets (time gaps, resolution changes): not errors
    last_reset: str = ""
    window: int = 100
    recent: deque[bool] = field(default_factory=deque)  # True = the frame failed

    def outcome(self, failed: bool) -> None:
        self.recent.append(bool(failed))
        while len(self.recent) > max(self.window, 1):
            self.recent.popleft()

    @property
    def recent_failures(self) -> int:
        return sum(self.recent)


@dataclass
class DiagnosticReport:
    """Fields of a diagnostic_msgs/DiagnosticStatus. level: 0 OK, 1 WARN, 2 ERROR, 3 STALE."""

    level: int
    message: str
    values: list[tuple[str, str]]


OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def diagnostic_report(
    stats: StreamStatistics,
    slot: FrameSlot,
    errors: ErrorCounters,
    device: str,
    options: NodeOptions,
    keyframe_interval: int,
    *,
    now: float | None = None,
    stream: str | None = None,
    topic: str | None = None,
    rates: Rates | None = None,
) -> DiagnosticReport:
    """Summarise the health of one stream. STALE before the first frame and, given `now` (the
    slot's clock), when no frame arrived for `stream_timeout` seconds (the camera stopped);
    WARN with random weights, failed frames or more than half of the input dropped among the
    recent frames (the last `stats_window`), or more than INPUT_LOSS_WARN of the camera's
    frames lost before they arrive (`rates`, from their stamps), ERROR when every recent frame
    failed. Counters are cumulative. `stream` and `topic` (several cameras) are added to the
    values."""
    latency = stats.latency()
    values: list[tuple[str, str]] = []
    if stream is not None:
        values += [("stream", stream), ("topic", topic or "")]
    for stage in sorted(latency):
        for key, number in latency[stage].items():
            values.append((f"{stage}_ms_{key}", _fmt(number)))
    drop_ratio = slot.dropped / slot.received if slot.received else 0.0
    values += [
        ("fps", _fmt(stats.fps())),
        ("frames_received", str(slot.received)),
        ("frames_processed", str(stats.processed)),
        ("frames_dropped", str(slot.dropped)),
        ("drop_ratio", _fmt(drop_ratio)),
        ("keyframe_ratio", _fmt(stats.keyframe_ratio())),
        ("keyframe_interval", str(keyframe_interval)),
        ("device", device),
        ("weights", "random" if options.random_weights else options.checkpoint),
        ("conversion_errors", str(errors.conversion)),
        ("inference_errors", str(errors.inference)),
        ("last_error", errors.last),
        ("resets", str(errors.resets)),
        ("last_reset", errors.last_reset),
    ]
    if rates is not None:
        values += [("input_rate_hz", _fmt(rates.received)), ("camera_rate_hz", _fmt(rates.camera)),
                   ("input_loss_ratio", _fmt(rates.loss))]
    silent = math.nan
    if now is not None and slot.last_arrival is not None:
        silent = max(now - slot.last_arrival, 0.0)
        values.append(("seconds_since_input", _fmt(silent)))
    if options.stream_timeout > 0 and silent > options.stream_timeout:
        # Before the error rule: a stopped camera is the news, not its last bad frames.
        return DiagnosticReport(
            STALE, f"stopped receiving: no input frame for {silent:.1f} s", values
        )
    failed = errors.recent_failures
    if errors.recent and failed == len(errors.recent):
        return DiagnosticReport(
            ERROR, f"the last {failed} frames failed; last error: {errors.last}", values
        )
    if stats.processed == 0:
        return DiagnosticReport(STALE, "waiting for images", values)
    problems = []
    if options.random_weights:
        problems.append("random weights (checkpoint none)")
    if failed:
        problems.append(f"{failed} of the last {len(errors.recent)} frames failed")
    recent_drops = slot.recent_drop_ratio()
    if recent_drops > 0.5:
        problems.append(f"{100 * recent_drops:.0f}% of recent input frames dropped")
    if rates is not None and rates.loss > INPUT_LOSS_WARN:
        problems.append(f"{100 * rates.loss:.0f}% of the camera's frames did not reach the node "
                        f"({rates.received:.1f} Hz received, the camera sends "
                        f"{rates.camera:.1f} Hz)")
    summary = f"{stats.fps():.1f} fps, keyframe ratio {stats.keyframe_ratio():.2f}"
    if problems:
        return DiagnosticReport(WARN, f"{summary}; " + "; ".join(problems), values)
    return DiagnosticReport(OK, summary, values)
