"""Which frame stamps can time a keyframe age, and saying once per stream when they cannot.

An age-aware fusion (`ModelConfig.fusion_ages`) weighs the update branch by the seconds since
the keyframe, taken from the frames' stamps. A frame whose stamp cannot say that counts
`NOMINAL_FRAME_TIME_S` per frame since its keyframe instead, a 30 fps camera's: on a camera
that sends a frame a second its ages come out 30 times too small, and the fusion trusts the
warped keyframe where it should not. That costs accuracy without any error, so the segmenter
says it: one `UnstampedFrameWarning` per stream and kind of problem, and a note on every
such frame's result (`SegmentationResult.stamp_note`).

A stamp is usable when it is a finite number of seconds >= 0 (0 is a clip's first frame) that
differs from the stream's previous stamp. Missing (None), NaN, infinite or negative stamps,
and a stamp equal to the previous one (a driver that stamps every frame alike), are not; the
first frame after a reset (an empty keyframe cache) is compared with nothing, so a caller that
resets and starts a clip over may reuse its times. A stamp older than the previous one is the
time-gap rule's business (a reset), not this one's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

# Seconds per frame when a frame or its keyframe has no usable stamp: a 30 fps camera's. Only
# an age-aware fusion reads keyframe ages.
NOMINAL_FRAME_TIME_S = 1.0 / 30.0

_COUNTED = f"keyframe ages count {NOMINAL_FRAME_TIME_S:.3f} s per frame (a 30 fps camera)"
_FIX = ("give each frame its capture time (process(frame, stamp=seconds); "
        "`accel-ros segment --fps` for an image folder)")


class UnstampedFrameWarning(UserWarning):
    """Frames of a stream carry no usable stamp, so keyframe ages are counted, not timed."""


def stamp_problem(stamp: float | None, previous: float | None) -> tuple[str, str] | None:
    """(kind, sentence) of why `stamp` (seconds) cannot time a keyframe age after the stream's
    `previous` stamp, or None when it can. Kinds: "missing", "implausible", "repeated"."""
    if stamp is None:
        return "missing", "frames carry no stamp"
    if not math.isfinite(stamp) or stamp < 0:
        return "implausible", f"a frame's stamp {stamp!r} is not a time (seconds >= 0)"
    if previous is not None and stamp == previous:
        return "repeated", f"frames repeat the stamp {stamp:.6f} s"
    return None


@dataclass
class StampCheck:
    """One stream's stamps as keyframe ages see them: the previous stamp and the kinds of
    problem it has warned about already."""

    previous: float | None = None
    warned: set[str] = field(default_factory=set)

    def usable(self, stamp: float | None, stream: str,
               restart: bool = False) -> tuple[float | None, str | None]:
        """(`stamp`, None) when it times ages; else (None, the note for the frame's result),
        warning the first time the stream shows this kind of problem. `restart`: the stream
        starts over (empty cache), so its previous stamp does not count."""
        problem = stamp_problem(stamp, None if restart else self.previous)
        if stamp is not None and math.isfinite(stamp):
            self.previous = stamp
        if problem is None:
            return stamp, None
        kind, sentence = problem
        note = f"{sentence}: {_COUNTED}"
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(f"stream {stream!r}: {note}; {_FIX}", UnstampedFrameWarning,
                          stacklevel=4)
        return None, note
