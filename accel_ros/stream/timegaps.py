"""The time-gap rule: when a stream's header stamps say that its keyframe no longer describes
the scene (a bag that loops, a camera restart, a paused simulation).

One rule for every path: `AccelSegmenter` keeps a `StampGapMonitor` per stream and judges each
stamped frame it processes with it, and a caller that drops frames before they reach the
segmenter (the ROS node's newest-frame slot) judges every arrival instead, through
`AccelSegmenter.note_arrival`, so that drops never look like gaps.
"""

from __future__ import annotations

import statistics
from collections import deque

# Recent stamp intervals the typical period is the median of.
PERIOD_HISTORY = 15
# A gap resets only if it is also longer than this many typical periods: a camera slower than
# max_time_gap (1 Hz with jitter) is not reset on every frame.
PERIOD_FACTOR = 2.0


class StampGapMonitor:
    """The stamps of one stream, judged one frame at a time.

    A frame breaks the stream when its stamp is older than the previous frame's (always), or
    newer by more than `max_time_gap` *and* by more than `period_factor` times the stream's
    typical period: the median of its last `history` stamp intervals (before the stream has
    one, max_time_gap itself, so the first interval resets above 2 x max_time_gap). Every
    interval, a gap included, joins the history, so a camera whose period grows past
    max_time_gap stops resetting once its new period is the median. Time going backwards
    clears the history (a restarted camera may run at another rate). Unstamped frames (None)
    are ignored; repeated stamps neither reset nor count as a period.
    """

    def __init__(self, history: int = PERIOD_HISTORY, period_factor: float = PERIOD_FACTOR
                 ) -> None:
        self.period_factor = float(period_factor)
        self._periods: deque[float] = deque(maxlen=max(int(history), 1))
        self.last_stamp: float | None = None

    def observe(self, stamp: float | None, max_time_gap: float) -> str | None:
        """Record one frame's stamp (seconds; None = unstamped, ignored). Returns why the
        stream's keyframe cache must be reset before this frame, or None."""
        if stamp is None:
            return None
        previous, self.last_stamp = self.last_stamp, stamp
        if previous is None:
            return None
        gap = stamp - previous
        if gap < 0:
            self._periods.clear()
            return f"time went backwards by {-gap:.3f} s"
        if gap == 0:
            return None
        known = bool(self._periods)
        typical = statistics.median(self._periods) if known else max_time_gap
        self._periods.append(gap)
        if gap <= max_time_gap or gap <= self.period_factor * typical:
            return None
        period = f"median period {typical:.3f} s" if known else "no period yet"
        return f"time gap of {gap:.3f} s > max_time_gap {max_time_gap:g} s ({period})"
