"""The hand-off between the subscription callbacks and the worker thread.

- `FrameSlot`: newest-frame mailbox of one stream, counting the frames that were overwritten
  before the worker got to them.
- `StreamSlots`: one slot per stream on one condition, so one worker waits for whichever
  stream has a frame and takes the newest frame of every ready stream.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class FrameSlot:
    """Newest-frame mailbox between a subscription callback and one worker thread.

    `put` never blocks: an item that the worker has not taken yet is replaced, and counted as
    dropped, so the worker always processes the newest frame when inference is slower than
    the camera. A reset requested with a frame survives that frame being dropped: the worker
    gets it with the next frame it takes. `recent_drop_ratio` covers the last `window`
    arrivals only, so a burst of drops does not mark the node unhealthy forever.

    Slots of several streams share one `condition` (see `StreamSlots`), so that one worker
    can wait for whichever stream has a frame first. `last_arrival` is the `clock` time of the
    latest `put` (None before the first), which tells a stopped camera from a slow one.
    """

    def __init__(
        self,
        window: int = 100,
        condition: threading.Condition | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._condition = condition or threading.Condition()
        self._clock = clock
        self.last_arrival: float | None = None
        self._item: Any = None
        self._full = False
        self._closed = False
        self._reset: str | None = None
        self._recent: deque[bool] = deque(maxlen=max(int(window), 1))  # True = dropped
        self.received = 0
        self.dropped = 0

    def put(self, item: Any, reset_reason: str | None = None) -> bool:
        """Store `item` (and a reset to apply before it); returns True if it replaced (dropped)
        an unprocessed one."""
        with self._condition:
            replaced = self._full
            if replaced and self._recent:
                self._recent[-1] = True
            self._recent.append(False)
            self._item, self._full = item, True
            self._reset = self._reset or reset_reason
            self.received += 1
            self.dropped += int(replaced)
            self.last_arrival = self._clock()
            self._condition.notify_all()  # a shared condition may have other waiters
            return replaced

    def take_entry(self, timeout: float | None = None) -> tuple[Any, str | None] | None:
        """(newest item, pending reset reason or None), waiting up to `timeout` s; None on
        timeout or after close()."""
        with self._condition:
            if not self._full and not self._closed:
                self._condition.wait(timeout)
            return self._pop() if self._full else None

    @property
    def ready(self) -> bool:
        """A frame is waiting (read under the condition by `StreamSlots`)."""
        return self._full

    def _pop(self) -> tuple[Any, str | None]:
        # Caller holds the condition.
        entry = (self._item, self._reset)
        self._item, self._full, self._reset = None, False, None
        return entry

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, waiting up to `timeout` s; None on timeout or after close()."""
        entry = self.take_entry(timeout)
        return None if entry is None else entry[0]

    def recent_drop_ratio(self) -> float:
        """Fraction of the last `window` arrivals that were dropped (0 when none arrived)."""
        with self._condition:
            return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def close(self) -> None:
        """Wake a waiting `take` so the worker thread can exit."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class ReadyFrame:
    """The newest frame of one stream, as the worker takes it: the message and the keyframe
    cache reset judged on arrival (by `AccelSegmenter.note_arrival`), if any."""

    stream: str
    msg: Any
    reset_reason: str | None = None


class StreamSlots:
    """One newest-frame `FrameSlot` per stream, all on one condition.

    The worker waits until *any* stream has a frame and then takes the newest frame of every
    stream that has one, never waiting for the others: a slow or silent camera cannot hold
    back the rest. Frames of a stream that arrive while the worker is busy replace each other
    in that stream's slot only (counted as dropped for that stream).
    """

    def __init__(
        self, names: Sequence[str], window: int = 100, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not names:
            raise ValueError("StreamSlots needs at least one stream")
        self._condition = threading.Condition()
        self._closed = False
        self.slots: dict[str, FrameSlot] = {
            name: FrameSlot(window, self._condition, clock) for name in names
        }

    def put(self, stream: str, item: Any, reset_reason: str | None = None) -> bool:
        """`FrameSlot.put` on the stream's slot: never blocks; True if it dropped a frame."""
        return self.slots[stream].put(item, reset_reason)

    def take_ready(self, timeout: float | None = None) -> list[ReadyFrame]:
        """The newest frame of every stream that has one, in stream order, waiting up to
        `timeout` s for the first; [] on timeout or after close()."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or any(slot.ready for slot in self.slots.values()),
                timeout,
            )
            return [
                ReadyFrame(name, *slot._pop())
                for name, slot in self.slots.items()
                if slot.ready
            ]

    def close(self) -> None:
        """Wake a waiting `take_ready` so the worker thread can exit."""
        with self._condition:
            self._closed = True
            for slot in self.slots.values():
                slot._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


