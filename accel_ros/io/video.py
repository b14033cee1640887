"""Video file and image folder IO with OpenCV, in RGB.

Readers yield `VideoFrame`s with a timestamp derived from the frame rate; an undecodable image
in a folder comes through with ``rgb=None`` and an ``error`` instead of ending the run. Writers
take (H, W, 3) uint8 RGB frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# One image reader for the whole package (missing file: FileNotFoundError, undecodable:
# ValueError), re-exported under the name the replay tools use.
from .native_stderr import CapturedStderr

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
# FourCC per container; mp4v is the MPEG-4 encoder every opencv-python wheel carries.
_FOURCC = {".avi": "MJPG", ".mkv": "mp4v", ".webm": "VP80"}
DEFAULT_FOURCC = "mp4v"


@dataclass
class VideoFrame:
    """One input frame. `rgb` is (H, W, 3) uint8 or None when it could not be decoded."""

    index: int
    stamp_ns: int
    rgb: np.ndarray | None
    name: str
    error: str | None = None


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def write_image_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB -> image file (format from the suffix)."""
    _check_rgb(rgb)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise ValueError(f"OpenCV could not write image {path}")


def check_fps(fps: float | None) -> None:
    """ValueError, one line, unless `fps` is None (not given) or a frame rate > 0."""
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps:g}")


def iter_image_folder(folder: str | Path, fps: float = 30.0) -> Iterator[VideoFrame]:
    """Frames of an image folder in name order, stamped at `fps` from time 0."""
    check_fps(fps)
    for index, path in enumerate(list_images(folder)):
        stamp_ns = round(index * 1e9 / fps)
        try:
            yield VideoFrame(index, stamp_ns, read_image_rgb(path), path.name)
        except (ValueError, FileNotFoundError) as error:  # e.g. removed after listing
            yield VideoFrame(index, stamp_ns, None, path.name, str(error))


def video_info(path: str | Path) -> tuple[int, float]:
    """(frame count as the container reports it, fps; 30 if unknown) of a video file."""
    capture = _open_capture(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
    finally:
        capture.release()
    return max(count, 0), fps if np.isfinite(fps) and fps > 0 else 30.0


def video_rate(path: str | Path) -> float | None:
    """The frame rate a video file states, or None when it states none (or nonsense)."""
    capture = _open_capture(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    return fps if np.isfinite(fps) and fps > 0 else None


def iter_video(path: str | Path, fps: float | None = None) -> Iterator[VideoFrame]:
    """Decoded frames of a video file; stamps from `fps` (default: the file's own rate)."""
    _, file_fps = video_info(path)
    rate = fps or file_fps
    capture = _open_capture(path)
    try:
        index = 0
        while True:
            with CapturedStderr():
                ok, bgr = capture.read()
            if not ok or bgr is None:
                break
            stamp_ns = round(index * 1e9 / rate)
            yield VideoFrame(index, stamp_ns, np.ascontiguousarray(bgr[:, :, ::-1]), f"{index}")
            index += 1
    finally:
        capture.release()


def count_video_frames(path: str | Path) -> int:
    """Frames that actually decode (the container's count can be approximate)."""
    return sum(1 for _ in iter_video(path))


def _open_capture(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    with CapturedStderr():
        capture = cv2.VideoCapture(str(path))
        opened = capture.isOpened()
    if not opened:
        raise ValueError(f"OpenCV cannot open video {path} (unsupported codec or not a video)")
    return capture


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; clear errors for missing or empty files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError(f"could not decode image (empty or not an image): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty frame {rgb.shape}")


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video file.

    The frame size is fixed by the first frame; later frames of another size are resized to
    it, because containers cannot change resolution mid-stream. Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, fourcc: str | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc or _FOURCC.get(self.path.suffix.lower(), DEFAULT_FOURCC)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height), OpenCV order

    def write(self, rgb: np.ndarray) -> None:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (width, height)
            with CapturedStderr():
                self._writer = cv2.VideoWriter(
                    str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self._size
                )
                opened = self._writer.isOpened()
            if not opened:
                raise ValueError(
                    f"OpenCV cannot write {self.path} with codec {self.fourcc!r}; "
                    f"try an .mp4 or .avi output"
                )
        if (width, height) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
