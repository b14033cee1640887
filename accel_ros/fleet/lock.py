"""One fleet run per run folder. Two runs into one folder would undo each other: each removes
the attempts it finds in ``.tmp`` when it ends and rewrites the manifest from its own view.

The lock is an ``flock`` on ``<run folder>/.fleet.lock``: the OS drops it when the holder's
process ends, however it ends, so a run that was killed never blocks the next one. The file
itself stays (deleting a lock file while others may open it races); it holds the last
holder's pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".fleet.lock"


class RunFolderInUseError(OSError):
    """Another fleet run holds the run folder (an OSError: the CLI reports it as bad input)."""


@contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock for the block. Raises RunFolderInUseError at once, without waiting,
    when another process holds it."""
    with open(folder / LOCK_NAME, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderInUseError(
                f"{folder} is in use by another accel-ros fleet run (pid {holder}); wait for "
                "it to end or pass another --out") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield  # closing the file at the end releases the lock
