"""Capturing what C libraries write straight to file descriptor 2.

OpenCV's FFmpeg ("moov atom not found"), libpng ("IHDR: CRC error") and libjpeg ("Corrupt JPEG
data: ...") write to the process's stderr past Python's `sys.stderr`, past `--quiet` and past a
ROS node's throttled log. Callers run such a library call inside `CapturedStderr` and then say
what went wrong in one line of their own (or use the captured text as the reason).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any


class CapturedStderr:
    """While the block runs, file descriptor 2 goes to a temporary file; afterwards `text`
    holds what was written to it. fd 2 belongs to the whole process, so one block runs at a
    time; where fd 2 cannot be redirected (an embedded interpreter), nothing is captured."""

    _lock = threading.Lock()
    _sink: Any = None  # one temporary file, reused

    def __init__(self) -> None:
        self.text = ""
        self._saved: int | None = None

    def __enter__(self) -> CapturedStderr:
        self._lock.acquire()
        try:
            if CapturedStderr._sink is None:
                CapturedStderr._sink = tempfile.TemporaryFile()
            self._sink.seek(0)
            self._sink.truncate()
            sys.stderr.flush()
            self._saved = os.dup(2)
            os.dup2(self._sink.fileno(), 2)
        except (OSError, ValueError):  # no usable fd 2: run the block uncaptured
            self._saved = None
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._sink.seek(0)
                self.text = self._sink.read().decode("utf-8", "replace")
        finally:
            self._lock.release()
