"""Cityscapes loaders in the official on-disk format, for video pairs.

Layout (from the Cityscapes packages leftImg8bit_sequence and gtFine):

    <root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame:06d>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame:06d>_gtFine_labelIds.png
    <root>/leftImg8bit/<split>/<city>/...  (optional: just the labelled frames)

Each 30-frame snippet has its labelled frame at index 19 (the 20th frame), so the keyframe at
offset k is frame number `frame - k` of the same snippet. Label ids are mapped to the 19
train ids; every other id becomes IGNORE_INDEX (255).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .camvid import check_label_size, read_ids, read_rgb
from .transforms import IGNORE_INDEX, Transform, image_to_tensor, labels_to_tensor

CITYSCAPES_NUM_CLASSES = 19
LABELLED_FRAME_INDEX = 19  # 0-based index of the annotated frame within its 30-frame snippet

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts labels.py).
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _LUT[_label_id] = _train_id

_GT_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_gtFine_labelIds\.png$")


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 Cityscapes labelIds -> (H, W) uint8 train ids (0..18, 255 ignore)."""
    if label_ids.ndim != 2 or label_ids.dtype != np.uint8:
        raise ValueError(
            f"expected (H, W) uint8 labelIds, got shape {label_ids.shape} {label_ids.dtype}"
        )
    return _LUT[label_ids]


@dataclass(frozen=True)
class CityscapesItem:
    """One annotated frame: where its label and its video snippet live."""

    city: str
    sequence: str  # zero-padded as in the file names
    frame: int
    frame_digits: int
    label_path: Path
    sequence_dir: Path
    still_dir: Path

    @property
    def name(self) -> str:
        return f"{self.city}_{self.sequence}_{self.frame:0{self.frame_digits}d}"

    def frame_path(self, frame: int) -> Path:
        """Video frame `frame` of this snippet (leftImg8bit_sequence)."""
        stem = f"{self.city}_{self.sequence}_{frame:0{self.frame_digits}d}"
        return self.sequence_dir / f"{stem}_leftImg8bit.png"

    def image_path(self) -> Path:
        """The labelled frame: from the sequence package, else from leftImg8bit."""
        path = self.frame_path(self.frame)
        if path.is_file():
            return path
        return self.still_dir / f"{self.name}_leftImg8bit.png"


def list_cityscapes(root: str | Path, split: str) -> list[CityscapesItem]:
    """Annotated frames of a split, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Cityscapes root not found: {root}")
    gt_dir = root / "gtFine" / split
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes split {split!r}: folder not found: {gt_dir}")
    items = []
    for label_path in sorted(gt_dir.glob("*/*_gtFine_labelIds.png")):
        match = _GT_NAME.match(label_path.name)
        if match is None:
            raise ValueError(f"unexpected Cityscapes label file name: {label_path}")
        city = label_path.parent.name
        items.append(
            CityscapesItem(
                city=match["city"],
                sequence=match["seq"],
                frame=int(match["frame"]),
                frame_digits=len(match["frame"]),
                label_path=label_path,
                sequence_dir=root / "leftImg8bit_sequence" / split / city,
                still_dir=root / "leftImg8bit" / split / city,
            )
        )
    if not items:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png files under {gt_dir}")
    return items


def _load_labelled(item: CityscapesItem) -> tuple[np.ndarray, np.ndarray]:
    image_path = item.image_path()
    if not image_path.is_file():
        raise FileNotFoundError(
            f"image missing for label {item.label_path}: looked for {item.frame_path(item.frame)}"
            f" and {image_path}"
        )
    image = read_rgb(image_path)
    labels = label_ids_to_train_ids(read_ids(item.label_path))
    check_label_size(labels, image, item.label_path)
    return image, labels



class CityscapesFrames(Dataset):
    """Annotated frames: {"image": (3, H, W) float [0, 1], "labels": (H, W) int64 train ids
    (255 ignore), "name": str}."""

    def __init__(self, root: str | Path, split: str = "train",
                 transform: Transform | None = None) -> None:
        self.items = list_cityscapes(root, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image, labels = _load_labelled(item)
        sample = {"image": image_to_tensor(image), "labels": labels_to_tensor(labels),
                  "name": item.name}
        return self.transform(sample) if self.transform is not None else sample


class CityscapesPairs(Dataset):
    """(frame - offset, annotated frame) pairs from the same 30-frame snippet.

    Items: {"key_image", "image": (3, H, W) float [0, 1], "labels": (H, W) int64 train ids,
    "offset": int, "name": str, "key_name": str}. All keyframe files are checked to exist when
    the dataset is built, so a partial download fails early with the missing path.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        offsets: Sequence[int] = (1, 2, 3, 4),
        transform: Transform | None = None,
    ) -> None:
        self.offsets = tuple(int(o) for o in offsets)
        if not self.offsets or min(self.offsets) < 1:
            raise ValueError(f"offsets must be positive integers, got {tuple(offsets)}")
        if max(self.offsets) > LABELLED_FRAME_INDEX:
            raise ValueError(
                f"offset {max(self.offsets)} reaches before the start of the snippet: the "
                f"annotated frame has only {LABELLED_FRAME_INDEX} frames before it"
            )
        self.transform = transform
        self.items = list_cityscapes(root, split)
        self.pairs = [(item, offset) for item in self.items for offset in self.offsets]
        for item, offset in self.pairs:
            key_path = item.frame_path(item.frame - offset)
            if not key_path.is_file():
                raise FileNotFoundError(
                    f"keyframe for {item.name} at offset {offset} not found: {key_path} "
                    "(is leftImg8bit_sequence downloaded?)"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, offset = self.pairs[index]
        key_frame = item.frame - offset
        key_image = read_rgb(item.frame_path(key_frame))
        image, labels = _load_labelled(item)
        if key_image.shape != image.shape:
            raise ValueError(
                f"keyframe {item.frame_path(key_frame)} is {key_image.shape}, annotated frame "
                f"is {image.shape}"
            )
        sample = {
            "key_image": image_to_tensor(key_image),
            "image": image_to_tensor(image),
            "labels": labels_to_tensor(labels),
            "offset": offset,
            "name": item.name,
            "key_name": f"{item.city}_{item.sequence}_{key_frame:0{item.frame_digits}d}",
        }
        return self.transform(sample) if self.transform is not None else sample


__all__ = [
    "CITYSCAPES_NUM_CLASSES",
    "IGNORE_INDEX",
    "LABEL_TO_TRAIN_ID",
    "CityscapesFrames",
    "CityscapesItem",
    "CityscapesPairs",
    "label_ids_to_train_ids",
    "list_cityscapes",
]
