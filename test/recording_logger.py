"""A stand-in for an rclpy / logging logger that keeps what was logged, shared by the tests of
the node's logic and wiring."""

from __future__ import annotations

import sys


class RecordingLogger:
    """Keeps (level, message) pairs in `records`. Like rclpy's logger, it refuses a call site
    (file and line) whose severity changes between calls."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self._sites: dict[tuple[str, int], str] = {}

    def _log(self, level: str, message: str) -> None:
        caller = sys._getframe(2)
        site = (caller.f_code.co_filename, caller.f_lineno)
        if self._sites.setdefault(site, level) != level:
            raise ValueError("Logger severity cannot be changed between calls.")
        self.records.append((level, message))

    def info(self, message: str) -> None:
        self._log("info", message)

    def warning(self, message: str) -> None:
        self._log("warning", message)

    def error(self, message: str) -> None:
        self._log("error", message)
