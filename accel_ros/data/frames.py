"""Labelled frames in memory, in video order: what training and evaluation read.

CamVid (SegNet or original layout) or the project's synthetic generator; a split is loaded
fully (CamVid train is ~250 MB at full size), which keeps PNG decoding out of the training
loop on a small CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..metrics import IGNORE_INDEX


@dataclass
class FrameSet:
    """Labelled frames in video order.

    images: list of (H, W, 3) uint8 RGB; labels: list of (H, W) uint8 class ids with 255 =
    ignore (void); sequences: one sequence id per frame (frames of one id are consecutive and
    in time order); names: one name per frame (for messages).
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    sequences: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_frames(
    data: str,
    root: str | Path | None,
    split: str,
    num_classes: int,
    limit: int | None = None,
    synthetic_size: tuple[int, int] = (180, 240),
    seed: int = 0,
    sequences: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> FrameSet:
    """Load a split fully into memory (CamVid train is ~250 MB at full size: cheap, and it
    keeps PNG decoding out of the training loop on a 2-core CPU).

    `sequences` keeps only those CamVid sequences, `exclude` drops them: the way to hold a
    whole street out of training and select models on it."""
    if data == "camvid":
        if root is None:
            raise ValueError("--data camvid needs --data-root (folder with train/ trainannot/ ...)")
        return _load_camvid(Path(root), split, num_classes, limit, sequences, exclude)
    if data == "synthetic":
        return _load_synthetic(split, synthetic_size, num_classes, limit, seed)
    raise ValueError(f"unknown data source {data!r}; choose camvid or synthetic")


def _load_camvid(
    root: Path, split: str, num_classes: int, limit: int | None,
    sequences: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
) -> FrameSet:
    from .camvid import list_camvid, load_item, sequence_segments

    items = [
        item for item in list_camvid(root, split)
        if (not sequences or item.sequence in sequences) and item.sequence not in exclude
    ]
    if not items:
        raise ValueError(
            f"no CamVid {split} frames left after keeping {list(sequences) or 'all'} and "
            f"excluding {list(exclude)} sequences"
        )
    if limit is not None:
        items = items[:limit]
    images, labels, sequences, names = [], [], [], []
    # A segment is a run of one sequence without frame jumps (SegNet's train split skips
    # hundreds of frames inside 0016E5): pairs must never straddle such a jump.
    for number, segment in enumerate(sequence_segments(items, max_frame_gap=90)):
        for item in segment:
            image, label = load_item(item)
            label = label.copy()
            label[label >= num_classes] = IGNORE_INDEX  # CamVid void (11) and anything unknown
            images.append(image)
            labels.append(label)
            sequences.append(f"{item.sequence}#{number}")
            names.append(item.name)
    return FrameSet(images, labels, sequences, names)


def _load_synthetic(
    split: str, size: tuple[int, int], num_classes: int, limit: int | None, seed: int
) -> FrameSet:
    from .synthetic import generate_clip

    clips, length = (4, 12) if split == "train" else (1, 12)
    base = seed * 1000 + (0 if split == "train" else 500)
    images, labels, sequences, names = [], [], [], []
    for clip in range(clips):
        for index, frame in enumerate(generate_clip(length, size[0], size[1], seed=base + clip)):
            label = np.asarray(frame.labels).copy()
            label[label >= num_classes] = IGNORE_INDEX
            images.append(np.ascontiguousarray(frame.image))
            labels.append(label.astype(np.uint8))
            sequences.append(f"synthetic{clip}")
            names.append(f"synthetic{clip}_{index:03d}")
    if limit is not None:
        images, labels, sequences, names = (
            images[:limit], labels[:limit], sequences[:limit], names[:limit]
        )
    return FrameSet(images, labels, sequences, names)


def resize_pair(
    image: np.ndarray, labels: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize (H, W, 3) uint8 image (area/linear) and (H, W) labels (nearest) to size (h, w)."""
    import cv2

    height, width = size
    if image.shape[:2] == (height, width):
        return image, labels
    shrinking = height < image.shape[0]
    image = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, labels


def to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    batch = np.stack(list(images)) if isinstance(images, list) else images
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
