"""Passing each camera's calibration on with the labels, decided without ROS.

A consumer that projects labels (onto lidar points, into a map) needs the camera model that
goes with each label image. The node subscribes to the `camera_info` beside every image topic
(image_transport's convention: the image topic's namespace + "camera_info") and republishes
the newest one it received with the header of each labels message, on `~/[<stream>/]camera_info`.
Labels always have the input image's geometry (AccelSegmenter returns them at the frame's own
size in every `resize_mode`), so the calibration passes on unchanged.

`CameraInfoRelay` keeps one stream's newest camera_info and says, for each labels message,
what to publish and what to report: nothing and one note when none has arrived, the message
plus a size warning when its image size is not the frame's.
"""

from __future__ import annotations

import threading
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


@dataclass
class RelayDecision:
    """What to do with camera_info for one labels message."""

    info: Any = None  # the camera_info to republish (with the labels' header); None: nothing
    missing: bool = False  # no camera_info has arrived yet: note it (once per relay)
    mismatch: str | None = None  # why its image size is not the labels' (a warning)


class CameraInfoRelay:
    """The newest camera_info of one stream, set by its subscription callback and read by the
    worker thread for every labels message it publishes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Any = None
        self._noted_missing = False
        self.received = 0

    def update(self, info: Any) -> None:
        """Keep `info` (a sensor_msgs/CameraInfo) as the newest."""
        with self._lock:
            self._latest = info
            self.received += 1

    def for_labels(self, size: tuple[int, int]) -> RelayDecision:
        """The decision for a labels message of (height, width) `size`: the newest camera_info
        (None before the first, noted once as missing) and, when its image size differs from
        `size`, why (it is still passed on: the calibration may be right and the image
        cropped upstream, which only the user can tell)."""
        with self._lock:
            info = self._latest
            if info is None:
                missing, self._noted_missing = not self._noted_missing, True
                return RelayDecision(missing=missing)
        described = calibrated_image_size(info)
        mismatch = None
        if described != tuple(size):
            mismatch = (f"camera_info describes {described[1]}x{described[0]} images but the "
                        f"image is {size[1]}x{size[0]}; passed on unchanged")
        return RelayDecision(info=info, mismatch=mismatch)
