"""Helpers every benchmark shares: statistics, memory readings, device names, test frames,
deadlines, what a segmenter's fast paths really did, and figure plumbing.

Nothing here imports another bench module, so single_stream, streams and device_check can all
import it without a circle.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..machine import cpu_info

# Rendering the synthetic scene costs ~seconds per frame at 1024x2048: single-stream frames are
# rendered at most this large and resized; the motion (and so DIS's work) scales with the frame.
MAX_RENDER = (256, 512)
# Several-stream frames are rendered at most this many pixels (same reason).
MAX_RENDER_PIXELS = 720 * 1280


# -- statistics and memory ---------------------------------------------------------------------
def median(values: list[float]) -> float:
    """Median in float64 (stable for a handful of repeats)."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


def status_mb(key: str) -> float | None:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """The process's peak resident memory (ru_maxrss) in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (2**20 if sys.platform == "darwin" else 1024.0)


# -- devices -----------------------------------------------------------------------------------
def device_name(device: Any) -> str:
    """The GPU's name for a CUDA device, else the CPU's model and the instruction sets that
    decide its speed (accel_ros.machine)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return cpu_info().describe()


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


# -- deadlines ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deadline:
    """A moment (time.monotonic()) that time-boxed loops stop at; `end=None`: no limit.

    Loops check `expired()` between units of work (frames, set-ups, configurations), so a
    started step ends within one unit of its deadline, keeps what it measured and names what
    it did not run."""

    end: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds left (inf without a limit; negative once passed)."""
        return math.inf if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0.0

    def within(self, seconds: float) -> Deadline:
        """This deadline or `seconds` from now, whichever comes first."""
        end = time.monotonic() + seconds
        return Deadline(end if self.end is None else min(self.end, end))


NO_DEADLINE = Deadline()


# -- frames ------------------------------------------------------------------------------------
def ping_pong_index(length: int, index: int) -> int:
    """Index into a clip of `length` frames played forwards then backwards, endlessly."""
    if length < 2:
        return 0
    period = 2 * length - 2
    index %= period
    return index if index < length else period - index


def ping_pong(frames: list[np.ndarray], index: int) -> np.ndarray:
    """Frame `index` of the clip played forwards then backwards (smooth motion)."""
    return frames[ping_pong_index(len(frames), index)]


def _resized(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if image.shape[:2] == (height, width):
        return image
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def make_frames(
    count: int, height: int, width: int, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """`count` consecutive (H, W, 3) uint8 RGB frames of a moving scene, and where they came
    from: the synthetic driving scene if available, else a smooth random texture panning
    diagonally (both give DIS real motion to track)."""
    import cv2

    render = (min(height, MAX_RENDER[0]), min(width, MAX_RENDER[1]))
    try:
        from ..data.synthetic import generate_clip
    except ImportError:
        generate_clip = None
    if generate_clip is not None:
        images = [f.image for f in generate_clip(count, render[0], render[1], seed=seed)]
        source = f"synthetic driving scene rendered at {render[0]}x{render[1]}"
    else:
        rng = np.random.default_rng(seed)
        margin = 3 * count + 8
        texture = rng.integers(0, 256, (render[0] + margin, render[1] + margin, 3), np.uint8)
        texture = cv2.GaussianBlur(texture, (0, 0), 3.0)
        images = [
            np.ascontiguousarray(texture[2 * t : 2 * t + render[0], 3 * t : 3 * t + render[1]])
            for t in range(count)
        ]
        source = f"random texture panning (3, 2) px/frame at {render[0]}x{render[1]}"
    if render != (height, width):
        images = [_resized(image, height, width) for image in images]
        source += f", resized to {height}x{width}"
    return images, source


def make_stream_frames(
    count: int, frames: int, height: int, width: int, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """`count` streams of `frames` (H, W, 3) uint8 frames each, as (frames, H, W, 3) arrays,
    and a description. Stream i is a synthetic camera moving (zoom, pan, roll) over the first
    frame of synthetic street seed + i: different content and different motion per stream,
    with real motion for the flow estimator."""
    from ..data.motion import make_motion_clip, random_motion
    from ..data.synthetic import generate_clip

    scale = min(1.0, math.sqrt(MAX_RENDER_PIXELS / (height * width)))
    render = (max(32, round(height * scale)), max(32, round(width * scale)))
    streams = []
    for index in range(count):
        base = generate_clip(1, render[0], render[1], seed=seed + index)[0]
        image = _resized(base.image, height, width)
        labels = _resized(base.labels, height, width, nearest=True)
        motion = random_motion((height, width), np.random.default_rng(seed + index))
        clip = make_motion_clip(image, labels, frames, motion)
        streams.append(np.stack(clip.frames))
    source = (
        f"synthetic camera motion (data/motion.py) over synthetic street seeds "
        f"{seed}..{seed + count - 1} rendered at {render[0]}x{render[1]}, {frames} frames per "
        "stream played back and forth"
    )
    return streams, source


# -- segmenters --------------------------------------------------------------------------------
def fast_path_outcome(segmenter: Any) -> dict[str, Any]:
    """What the segmenter's fast paths really did so far (`fastpath.calls_outcome`): graphs
    captured and replayed, calls that ran eagerly, compile failures. `{}` when none was
    requested. AccelSegmenter keeps its FastOps private; this is the one place reading it."""
    own = getattr(segmenter, "fast_path_outcome", None)
    if callable(own):
        return own()
    ops = getattr(segmenter, "_ops", None)
    return ops.outcome() if ops is not None and hasattr(ops, "outcome") else {}


def free_segmenter(segmenter: Any) -> None:
    """Stop its worker thread and drop its CUDA graphs (and their memory pools) now, not at
    the next garbage collection, so a later measurement's peak memory is its own."""
    segmenter.close()
    ops = getattr(segmenter, "_ops", None)
    if ops is not None and hasattr(ops, "release"):
        ops.release()
    device = getattr(segmenter, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


# -- figures -----------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn off-screen (Agg; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | Path, footer: str = "") -> Path:
    """Write `figure` as a PNG at `path` (folders made), with a small footer line."""
    if footer:
        figure.text(0.01, 0.01, footer, fontsize=7)
    figure.tight_layout(rect=(0, 0.04 if footer else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
