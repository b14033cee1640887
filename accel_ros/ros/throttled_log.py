"""Rate-limited logging: hostile or broken input must not flood the log.

`Throttle` lets one message of a kind through per period and counts the rest; `ThrottledLog`
puts that in front of a logger (rclpy's or the standard library's) and says how many similar
messages it held back: with the next message of the kind, or from `flush` (the node calls it
with every /diagnostics) once a period has passed without one, so a burst that stops is still
counted; `shorten` caps what a message quotes (a 1 MB parameter value used to be logged and
returned whole).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# Longest parameter-change reason (logged and returned by the parameter service), and longest
# warning about a frame (which may quote a hostile message's fields).
MESSAGE_LIMIT = 200
LOG_LIMIT = 500


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text`, cut to about `limit` characters with a note of its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Throttle:
    """Lets a message of one kind through at most once per `period` seconds."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = float(period)
        self._clock = clock
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        return True

    def overdue(self) -> list[str]:
        """The kinds with messages held back whose period has passed since the last one let
        through (their count would otherwise wait for the next message of the kind)."""
        now = self._clock()
        return [key for key, count in self.suppressed.items()
                if count and now - self._last.get(key, now) >= self.period]


class ThrottledLog:
    """A logger that lets one message per kind through each `throttle.period` seconds, each
    shortened to `limit` characters and followed by the count of those held back since."""

    def __init__(self, logger: Any, throttle: Throttle, limit: int = LOG_LIMIT) -> None:
        self.logger = logger
        self.throttle = throttle
        self.limit = limit
        # Per kind: the severity it was logged at and the newest message held back.
        self._held: dict[str, tuple[str, str]] = {}
        # The worker thread logs frame warnings while the diagnostics timer flushes.
        self._lock = threading.Lock()

    # One call of the logger per severity, each on its own line: rclpy refuses a call site
    # whose severity changes ("Logger severity cannot be changed between calls").
    def warning(self, kind: str, message: str) -> bool:
        """Log `message` at warning level unless throttled; True if it was logged."""
        text = self._text(kind, message, "warning")
        if text is not None:
            self.logger.warning(text)
        return text is not None

    def info(self, kind: str, message: str) -> bool:
        text = self._text(kind, message, "info")
        if text is not None:
            self.logger.info(text)
        return text is not None

    def error(self, kind: str, message: str) -> bool:
        text = self._text(kind, message, "error")
        if text is not None:
            self.logger.error(text)
        return text is not None

    def flush(self) -> int:
        """Log, at each kind's own severity, how many messages it held back and the newest
        of them, for every kind whose period has passed without a message let through; the
        number of lines logged."""
        with self._lock:
            overdue = [(kind, self.throttle.suppressed.pop(kind), *self._held.pop(kind))
                       for kind in self.throttle.overdue()]
        for _, skipped, severity, newest in overdue:
            text = f"{skipped} similar messages suppressed; the newest: {newest}"
            if severity == "error":
                self.logger.error(text)
            elif severity == "warning":
                self.logger.warning(text)
            else:
                self.logger.info(text)
        return len(overdue)

    def _text(self, kind: str, message: str, severity: str) -> str | None:
        """The line to log, or None when `kind` is throttled."""
        with self._lock:
            if not self.throttle.allow(kind):
                self._held[kind] = (severity, shorten(message, self.limit))
                return None
            self._held.pop(kind, None)
            skipped = self.throttle.suppressed.pop(kind, 0)
        suffix = f" ({skipped} similar messages suppressed)" if skipped else ""
        return shorten(message, self.limit) + suffix
