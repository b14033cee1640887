"""Passing each camera's calibration on with the labels, decided without ROS.

A consumer that projects labels (onto lidar points, into a map) needs the camera model that
goes with each label image. The node subscribes to the `camera_info` beside every image topic
(image_transport's convention: the image topic's namespace + "camera_info") and republishes
the newest one it received with the header of each labels message, on `~/[<stream>/]camera_info`.
Labels always have the input image's geometry (AccelSegmenter returns them at the frame's own
size in every `resize_mode`), so the calibration passes on unchanged.

`CameraInfoRelay` keeps one stream's newest camera_info and says, for each labels message,
what to publish and what to report: nothing and one note when none has arrived, the message
plus a size warning when its image size is not the frame's. Wrong geometry is worse than none
to a consumer that projects labels, so two kinds are never passed on: a calibration with a
non-finite number (NaN, inf) or a negative focal length (refused when it arrives, and the one
before it dropped), and a stale one: drivers publish camera_info with every image, so one older
than `max_age` seconds (the node's `stream_timeout`) means its publisher stopped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic beside a (resolved) image topic, as image_transport derives it:
    "/camera/image_raw" -> "/camera/camera_info", "/image" -> "/camera_info"."""
    namespace = image_topic.rstrip("/").rpartition("/")[0]
    return f"{namespace}/camera_info"


def calibrated_image_size(info: Any) -> tuple[int, int]:
    """(height, width) of the images a sensor_msgs/CameraInfo describes: its full resolution,
    or its region of interest when one is set, divided by the binning (0 or 1: none)."""
    height, width = int(info.height), int(info.width)
    roi = getattr(info, "roi", None)
    if roi is not None and int(roi.height) > 0 and int(roi.width) > 0:
        height, width = int(roi.height), int(roi.width)
    binning_y = max(int(getattr(info, "binning_y", 0)), 1)
    binning_x = max(int(getattr(info, "binning_x", 0)), 1)
    return height // binning_y, width // binning_x


def calibration_problem(info: Any) -> str | None:
    """Why a sensor_msgs/CameraInfo cannot describe a camera (None: it can): a non-finite
    number in K, D, R or P, or a negative focal length. All-zero K is ROS's "uncalibrated"
    and passes, as consumers know to check it."""
    for field in ("k", "d", "r", "p"):
        values = [float(v) for v in getattr(info, field, ())]
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            return f"its {field.upper()} holds {bad}"
    k = [float(v) for v in getattr(info, "k", ())]
    if len(k) == 9 and (k[0] < 0 or k[4] < 0):
        return f"its focal length is negative (fx {k[0]}, fy {k[4]})"
    return None


@dataclass
class RelayDecision:
    """What to do with camera_info for one labels message."""

    info: Any = None  # the camera_info to republish (with the labels' header); None: nothing
    missing: bool = False  # no camera_info has arrived yet: note it (once per relay)
    mismatch: str | None = None  # why its image size is not the labels' (a warning)
    stale: str | None = None  # why the newest is too old to pass on (a warning)


class CameraInfoRelay:
    """The newest camera_info of one stream, set by its subscription callback and read by the
    worker thread for every labels message it publishes. `clock` gives seconds (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._latest: Any = None
        self._arrival = 0.0
        self._noted_missing = False
        self.received = 0
        self.refused = 0

    def update(self, info: Any) -> str | None:
        """Keep `info` (a sensor_msgs/CameraInfo) as the newest, or refuse it: then no
        calibration is passed on until a sound one arrives. Returns why it was refused."""
        problem = calibration_problem(info)
        with self._lock:
            self.received += 1
            if problem is not None:
                self.refused += 1
                self._latest = None
                return f"camera_info refused, {problem}: labels go without one until a sound one"
            self._latest, self._arrival = info, self._clock()
        return None

    def for_labels(self, size: tuple[int, int], max_age: float = 0.0) -> RelayDecision:
        """The decision for a labels message of (height, width) `size`: the newest camera_info
        (None before the first, noted once as missing; None when older than `max_age` seconds,
        with why, unless `max_age` is 0) and, when its image size differs from `size`, why (it
        is still passed on: the calibration may be right and the image cropped upstream, which
        only the user can tell)."""
        with self._lock:
            info, age = self._latest, self._clock() - self._arrival
            if info is None:
                missing, self._noted_missing = not self._noted_missing, True
                return RelayDecision(missing=missing and self.refused == 0)
        if max_age > 0 and age > max_age:
            return RelayDecision(stale=f"the newest camera_info is {age:.1f} s old (more than "
                                       f"stream_timeout {max_age:g} s): not passed on")
        described = calibrated_image_size(info)
        mismatch = None
        if described != tuple(size):
            mismatch = (f"camera_info describes {described[1]}x{described[0]} images but the "
                        f"image is {size[1]}x{size[0]}; passed on unchanged")
        return RelayDecision(info=info, mismatch=mismatch)
