"""How many of a camera's frames reach the node, judged by their stamps, decided without ROS.

The node's drop count covers only frames that arrived: a frame lost on the way (DDS on a busy
machine, a saturated network, best-effort QoS) is never seen. A camera stamps its frames at
its own rate, though, so the received stamps tell what was sent: consecutive frames that both
arrived are one period apart, the shortest intervals (a lost frame makes an interval two
periods or more), and the frames received over the span of their stamps give the rate that
reaches the node. With
two cameras at 15 Hz on a busy machine, 40% of one camera's frames never reached the node
while its drop ratio stayed 0.005.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass

# Stamp intervals needed before rates are reported: fewer say little about a camera's rate.
MIN_INTERVALS = 10
# Intervals up to this many times the shortest are taken as one period: room for stamp jitter,
# while an interval with a frame lost in it is at least two periods.
ONE_PERIOD = 1.5


@dataclass(frozen=True)
class Rates:
    """Frames per second of stamp time: received by the node, and sent by the camera (from
    the stamp intervals of consecutive frames, or the `expected_rate` the user gave)."""

    received: float
    camera: float

    @property
    def loss(self) -> float:
        """The fraction of the camera's frames that did not reach the node (0 when none)."""
        return max(0.0, 1.0 - self.received / self.camera)


class InputRate:
    """The stamps of the last `window` frames received on one stream."""

    def __init__(self, window: int = 60) -> None:
        self._stamps: deque[float] = deque(maxlen=max(int(window), MIN_INTERVALS + 1))

    def observe(self, stamp: float) -> bool:
        """Record an arriving frame's header stamp (seconds); False for an unstamped frame (0),
        which says nothing. A stamp that does not advance (a replayed recording that loops, a
        clock reset) starts the window again."""
        if stamp <= 0:
            return False
        if self._stamps and stamp <= self._stamps[-1]:
            self._stamps.clear()
        self._stamps.append(stamp)
        return True

    def rates(self, expected_rate: float = 0.0) -> Rates | None:
        """The received and the camera's rate (Hz), or None before MIN_INTERVALS stamp
        intervals. `expected_rate` (Hz, 0: unknown) is the camera's rate when given."""
        stamps = list(self._stamps)
        if len(stamps) <= MIN_INTERVALS:
            return None
        intervals = [b - a for a, b in itertools.pairwise(stamps)]
        received = len(intervals) / (stamps[-1] - stamps[0])
        shortest = min(intervals)
        period = statistics.median(d for d in intervals if d <= ONE_PERIOD * shortest)
        camera = expected_rate or 1.0 / period
        return Rates(received=received, camera=camera)
