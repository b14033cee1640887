"""Synthetic camera motion on a labelled frame: short clips with exact flow and exact labels.

CamVid labels real frames 1 s apart; Accel's fusion has to learn what a keyframe looks like a
few frames (at 30 fps) later. Moving a virtual camera over one labelled frame gives such clips
with ground truth everywhere: a zoom about a focus point (driving forward), a pan and a small
roll per frame, compounded over the clip. Every frame's labels are the source labels under the
same transform (nearest neighbour), and the backward flow between consecutive frames is known
in closed form.

Flow convention as in `model/warp.py`: backward flow (2, H, W), content at pixel p of frame t
was at p + flow[p] in frame t-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255
# Seconds between consecutive frames of a synthetic clip: a 30 fps camera.
FRAME_TIME_S = 1.0 / 30.0


@dataclass(frozen=True)
class CameraMotion:
    """Per-frame motion of the virtual camera, in the frame's own pixels.

    zoom: scale factor per frame (> 1 = moving towards the focus point); focus: (x, y) pixel
    the zoom expands from; pan: (x, y) shift per frame in pixels; roll_deg: rotation per frame
    about the focus point.
    """

    zoom: float
    focus: tuple[float, float]
    pan: tuple[float, float]
    roll_deg: float

    def step_matrix(self) -> np.ndarray:
        """3x3 matrix S mapping a pixel of frame t-1 to where that content is in frame t."""
        fx, fy = self.focus
        angle = math.radians(self.roll_deg)
        cos, sin = math.cos(angle) * self.zoom, math.sin(angle) * self.zoom
        # Rotate+scale about the focus, then pan.
        return np.array([
            [cos, -sin, fx - cos * fx + sin * fy + self.pan[0]],
            [sin, cos, fy - sin * fx - cos * fy + self.pan[1]],
            [0.0, 0.0, 1.0],
        ])


def random_motion(
    size: tuple[int, int], rng: np.random.Generator, strength: float = 1.0
) -> CameraMotion:
    """Motion a forward-driving 30 fps camera might show between two frames at `size` (H, W).

    Zoom 0.3-2 % per frame (faster near the focus of expansion), focus within the central
    third, pan up to 0.8 % of the width, roll up to 0.15 degrees; `strength` scales all of it.
    """
    height, width = size
    return CameraMotion(
        zoom=1.0 + strength * float(rng.uniform(0.003, 0.02)),
        focus=(
            width * float(rng.uniform(1 / 3, 2 / 3)),
            height * float(rng.uniform(1 / 3, 2 / 3)),
        ),
        pan=(
            strength * width * float(rng.uniform(-0.008, 0.008)),
            strength * height * float(rng.uniform(-0.003, 0.003)),
        ),
        roll_deg=strength * float(rng.uniform(-0.15, 0.15)),
    )


def backward_flow(step: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(2, H, W) float32 backward flow of a clip whose frames are related by `step` (3x3)."""
    height, width = size
    inverse = np.linalg.inv(step)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    return np.stack((src_x - xs, src_y - ys)).astype(np.float32)


@dataclass
class MotionClip:
    """frames: T (H, W, 3) uint8; labels: T (H, W) uint8 (255 = unknown / out of view);
    flows: T-1 (2, H, W) float32 exact backward flows (flows[t-1] takes frame t to t-1)."""

    frames: list[np.ndarray]
    labels: list[np.ndarray]
    flows: list[np.ndarray]
    motion: CameraMotion
    frame_time_s: float = FRAME_TIME_S


def make_motion_clip(
    image: np.ndarray,
    labels: np.ndarray,
    length: int,
    motion: CameraMotion,
    start_zoom: float = 1.1,
) -> MotionClip:
    """A `length`-frame clip of the camera moving by `motion` each frame over `image`.

    Frame 0 is the source zoomed by `start_zoom` about its centre, so the first frames of a
    pan have real pixels at the border. Pixels that come from outside the source are filled by
    reflection in the image and labelled 255 (ignored), so no metric counts invented content.
    """
    import cv2

    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape[:2]} differ")
    height, width = labels.shape[:2]
    start = CameraMotion(start_zoom, (width / 2, height / 2), (0.0, 0.0), 0.0).step_matrix()
    step = motion.step_matrix()
    frames, frame_labels = [], []
    current = start
    for _ in range(length):
        matrix = current[:2]
        frames.append(cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT_101))
        frame_labels.append(cv2.warpAffine(labels, matrix, (width, height),
                                           flags=cv2.INTER_NEAREST,
                                           borderMode=cv2.BORDER_CONSTANT,
                                           borderValue=IGNORE_INDEX))
        current = step @ current
    flow = backward_flow(step, (height, width))
    return MotionClip(frames, frame_labels, [flow] * (length - 1), motion)
