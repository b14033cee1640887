"""Short labelled clips whose first frame is a keyframe: what evaluation and fusion training see.

A clip is frames in time order at a known spacing; frame 0 is the keyframe and frame o is
"offset o". Two sources:
- `sequence_clips`: windows over real labelled frames of one sequence (CamVid val: 15 Hz,
  1/15 s per step; CamVid train: 1 s per step).
- `motion_clips`: a virtual camera moving over each labelled frame (`data/motion.py`), 30 fps
  steps with exact labels on every frame: short-range motion for streets held out of training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .motion import FRAME_TIME_S, make_motion_clip, random_motion

# CamVid's source video runs at 30 fps; its file names carry the video frame number.
CAMVID_FPS = 30.0


@dataclass
class Clip:
    """frames: T (H, W, 3) uint8 RGB; labels: T (H, W) uint8 (255 ignored) or None where a frame
    is unlabelled; frame_time_s: seconds between consecutive frames; name: for messages."""

    frames: list[np.ndarray]
    labels: list[np.ndarray | None]
    frame_time_s: float
    name: str

    def __len__(self) -> int:
        return len(self.frames)


def sequence_clips(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    sequences: Sequence[str],
    length: int,
    frame_time_s: float,
    names: Sequence[str] | None = None,
) -> Iterator[Clip]:
    """Every window of `length` consecutive frames that stays inside one sequence."""
    for start in range(len(images) - length + 1):
        end = start + length
        if sequences[start] != sequences[end - 1]:
            continue
        yield Clip(
            list(images[start:end]), list(labels[start:end]), frame_time_s,
            names[start] if names is not None else f"clip{start}",
        )


def motion_clips(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    length: int,
    seed: int = 0,
    names: Sequence[str] | None = None,
    flip: bool = False,
) -> Iterator[Clip]:
    """One synthetic 30 fps camera-motion clip per labelled frame (seeded, so evaluations
    repeat exactly). `flip` mirrors a random half of the clips (training augmentation; the
    same flip for every frame of a clip)."""
    rng = np.random.default_rng(seed)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        motion = random_motion(label.shape[:2], rng)
        if flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        clip = make_motion_clip(np.ascontiguousarray(image), np.ascontiguousarray(label),
                                length, motion)
        yield Clip(clip.frames, list(clip.labels), FRAME_TIME_S,
                   f"{names[index] if names is not None else index}+motion")
