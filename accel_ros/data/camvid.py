"""CamVid loaders: single labelled frames and (keyframe, current frame) pairs.

Two on-disk layouts are understood:

- SegNet layout (as in ../shared/camvid): `<root>/<split>/*.png` RGB images and
  `<root>/<split>annot/*.png` single-channel class ids (0..10, 11 = void), same file names.
- Original CamVid layout: `<root>/701_StillsRaw_full/*.png` images and
  `<root>/LabeledApproved_full/<stem>_L.png` RGB colour labels in the 32-class CamVid palette,
  grouped here into the 11 SegNet classes (other colours -> void). Its splits come from a list
  file `<root>/<split>.txt` (one image name or path per line, first token used, as in SegNet's
  train.txt); split "all" takes every image.

File names are `<sequence>_<frame>.png` (`0001TP_006690`, `0006R0_f00930`); frames of a
sequence sorted by frame number form a low-rate clip, which `CamVidPairs` uses as video.
Void is mapped to IGNORE_INDEX in the returned label tensors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..io.video import read_image_rgb as read_rgb
from .transforms import IGNORE_INDEX, Transform, image_to_tensor, labels_to_tensor

CAMVID_NUM_CLASSES = 11
CAMVID_VOID = 11
# The street that the accuracy estimate tests on (docs/results.md) and training leaves out: a
# dusk sequence of the train split. int8 calibration leaves it out too.
HELD_OUT_SEQUENCES = ("0001TP",)
ORIGINAL_IMAGE_DIR = "701_StillsRaw_full"
ORIGINAL_LABEL_DIR = "LabeledApproved_full"

# The 32 original CamVid classes (label_colors.txt of Brostow et al.) with their RGB colours and
# the SegNet 11-class group each one belongs to (0 sky, 1 building, 2 pole, 3 road,
# 4 pavement, 5 tree, 6 sign, 7 fence, 8 car, 9 pedestrian, 10 bicyclist, 11 void).
CAMVID_32_CLASSES: tuple[tuple[str, tuple[int, int, int], int], ...] = (
    ("Animal", (64, 128, 64), 9),
    ("Archway", (192, 0, 128), 1),
    ("Bicyclist", (0, 128, 192), 10),
    ("Bridge", (0, 128, 64), 1),
    ("Building", (128, 0, 0), 1),
    ("Car", (64, 0, 128), 8),
    ("CartLuggagePram", (64, 0, 192), 9),
    ("Child", (192, 128, 64), 9),
    ("Column_Pole", (192, 192, 128), 2),
    ("Fence", (64, 64, 128), 7),
    ("LaneMkgsDriv", (128, 0, 192), 3),
    ("LaneMkgsNonDriv", (192, 0, 64), 3),
    ("Misc_Text", (128, 128, 64), 6),
    ("MotorcycleScooter", (192, 0, 192), 10),
    ("OtherMoving", (128, 64, 64), 8),
    ("ParkingBlock", (64, 192, 128), 4),
    ("Pedestrian", (64, 64, 0), 9),
    ("Road", (128, 64, 128), 3),
    ("RoadShoulder", (128, 128, 192), 4),
    ("Sidewalk", (0, 0, 192), 4),
    ("SignSymbol", (192, 128, 128), 6),
    ("Sky", (128, 128, 128), 0),
    ("SUVPickupTruck", (64, 128, 192), 8),
    ("TrafficCone", (0, 0, 64), 2),
    ("TrafficLight", (0, 64, 64), 6),
    ("Train", (192, 64, 128), 8),
    ("Tree", (128, 128, 0), 5),
    ("Truck_Bus", (192, 128, 192), 8),
    ("Tunnel", (64, 0, 64), 1),
    ("VegetationMisc", (192, 192, 0), 5),
    ("Void", (0, 0, 0), 11),
    ("Wall", (64, 192, 0), 1),
)


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_COLOR_KEYS = _pack(np.array([c for _, c, _ in CAMVID_32_CLASSES]))
_ORDER = np.argsort(_COLOR_KEYS)
_SORTED_KEYS = _COLOR_KEYS[_ORDER]
_SORTED_IDS = np.array([i for _, _, i in CAMVID_32_CLASSES], dtype=np.uint8)[_ORDER]


def camvid_colors_to_ids(label_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB CamVid colour label -> (H, W) uint8 11-class ids (unknown -> 11)."""
    if label_rgb.ndim != 3 or label_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB colour label, got shape {label_rgb.shape}")
    keys = _pack(label_rgb)
    pos = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, len(_SORTED_KEYS) - 1)
    found = _SORTED_KEYS[pos] == keys
    return np.where(found, _SORTED_IDS[pos], CAMVID_VOID).astype(np.uint8)


# ----------------------------------------------------------------------------- file access


def read_ids(path: str | Path) -> np.ndarray:
    """Read a single-channel class-id PNG as (H, W) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.size == 0:
        raise ValueError(f"could not decode label image (empty or not an image): {path}")
    if ids.ndim != 2:
        raise ValueError(
            f"expected a single-channel class-id PNG, got shape {ids.shape}: {path} "
            "(colour labels belong to the original CamVid layout)"
        )
    if ids.dtype != np.uint8:
        raise ValueError(f"expected 8-bit class ids, got {ids.dtype}: {path}")
    return ids


def check_label_size(labels: np.ndarray, image: np.ndarray, label_path: str | Path) -> None:
    """Raise ValueError, naming the label file, when (H, W) labels do not cover the image."""
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"label size {labels.shape} does not match image size {image.shape[:2]}: "
            f"{label_path}"
        )


def parse_frame_name(stem: str) -> tuple[str, int]:
    """'0001TP_006690' -> ('0001TP', 6690); '0006R0_f00930' -> ('0006R0', 930)."""
    sequence, sep, frame = stem.rpartition("_")
    digits = re.sub(r"\D", "", frame)
    if not sep or not sequence or not digits:
        raise ValueError(f"file name {stem!r} is not <sequence>_<frame>")
    return sequence, int(digits)


@dataclass(frozen=True)
class CamVidItem:
    """One labelled frame on disk. `colour_label`: label is an RGB colour image."""

    name: str
    sequence: str
    frame: int
    image_path: Path
    label_path: Path
    colour_label: bool


def detect_layout(root: str | Path) -> str:
    """'segnet' or 'original'; FileNotFoundError naming the root if it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CamVid root not found: {root}")
    if (root / ORIGINAL_IMAGE_DIR).is_dir():
        return "original"
    if any((root / f"{split}annot").is_dir() for split in ("train", "val", "test")):
        return "segnet"
    raise FileNotFoundError(
        f"{root} is not a CamVid root: expected train/ + trainannot/ (SegNet layout) or "
        f"{ORIGINAL_IMAGE_DIR}/ + {ORIGINAL_LABEL_DIR}/ (original layout)"
    )


def list_camvid(root: str | Path, split: str) -> list[CamVidItem]:
    """All labelled frames of a split, sorted by (sequence, frame number)."""
    root = Path(root)
    layout = detect_layout(root)
    items = _list_original(root, split) if layout == "original" else _list_segnet(root, split)
    if not items:
        raise FileNotFoundError(f"no images found for CamVid split {split!r} under {root}")
    return sorted(items, key=lambda item: (item.sequence, item.frame, item.name))


def _list_segnet(root: Path, split: str) -> list[CamVidItem]:
    image_dir, label_dir = root / split, root / f"{split}annot"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"CamVid split {split!r}: folder not found: {folder}")
    items = []
    for image_path in sorted(image_dir.glob("*.png")):
        label_path = label_dir / image_path.name
        if not label_path.is_file():
            raise FileNotFoundError(f"label file missing for image {image_path}: {label_path}")
        sequence, frame = parse_frame_name(image_path.stem)
        items.append(CamVidItem(image_path.stem, sequence, frame, image_path, label_path, False))
    return items


def _list_original(root: Path, split: str) -> list[CamVidItem]:
    image_dir, label_dir = root / ORIGINAL_IMAGE_DIR, root / ORIGINAL_LABEL_DIR
    if not label_dir.is_dir():
        raise FileNotFoundError(f"CamVid colour labels folder not found: {label_dir}")
    if split == "all":
        stems = [path.stem for path in sorted(image_dir.glob("*.png"))]
    else:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(
                f"CamVid split {split!r}: split list not found: {list_file} (the original "
                "layout needs one image name per line, or use split='all')"
            )
        stems = [
            Path(line.split()[0]).stem
            for line in list_file.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    items = []
    for stem in stems:
        image_path = image_dir / f"{stem}.png"
        if not image_path.is_file():
            raise FileNotFoundError(f"image listed for split {split!r} not found: {image_path}")
        label_path = label_dir / f"{stem}_L.png"
        if not label_path.is_file():
            raise FileNotFoundError(f"label file missing for image {image_path}: {label_path}")
        sequence, frame = parse_frame_name(stem)
        items.append(CamVidItem(stem, sequence, frame, image_path, label_path, True))
    return items


def load_item(item: CamVidItem) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image and (H, W) uint8 class ids (0..10, 11 void)."""
    image = read_rgb(item.image_path)
    labels = camvid_colors_to_ids(read_rgb(item.label_path)) if item.colour_label else read_ids(
        item.label_path
    )
    check_label_size(labels, image, item.label_path)
    return image, labels


# -------------------------------------------------------------------------------- datasets


class CamVidFrames(Dataset):
    """Single labelled frames: {"image": (3, H, W) float [0, 1], "labels": (H, W) int64
    (void -> IGNORE_INDEX), "name": str}."""

    def __init__(self, root: str | Path, split: str = "train",
                 transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.items = list_camvid(self.root, split)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image, labels = load_item(item)
        sample = {
            "image": image_to_tensor(image),
            "labels": labels_to_tensor(labels, void=CAMVID_VOID),
            "name": item.name,
        }
        return self.transform(sample) if self.transform is not None else sample


def sequence_segments(items: Sequence[CamVidItem], max_frame_gap: int | None) -> list[
    list[CamVidItem]
]:
    """Split sorted items into runs of one sequence with no frame gap above max_frame_gap.

    SegNet's train split holds parts of 0016E5 with jumps of hundreds of frames between them;
    pairing across such a jump would not be a video pair.
    """
    segments: list[list[CamVidItem]] = []
    for item in items:
        last = segments[-1][-1] if segments else None
        if (
            last is None
            or last.sequence != item.sequence
            or (max_frame_gap is not None and item.frame - last.frame > max_frame_gap)
        ):
            segments.append([item])
        else:
            segments[-1].append(item)
    return segments


class CamVidPairs(Dataset):
    """(keyframe, current frame) pairs `offset` files apart within one sequence.

    Items: {"key_image": (3, H, W) float [0, 1], "image": (3, H, W) float [0, 1],
    "labels": (H, W) int64 of the current frame (void -> IGNORE_INDEX), "offset": int
    (files apart), "frame_gap": int (video frames apart), "name": str, "key_name": str}.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        offsets: Sequence[int] = (1, 2, 3, 4),
        transform: Transform | None = None,
        max_frame_gap: int | None = 90,
    ) -> None:
        self.offsets = tuple(int(o) for o in offsets)
        if not self.offsets or min(self.offsets) < 1:
            raise ValueError(f"offsets must be positive integers, got {tuple(offsets)}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.items = list_camvid(self.root, split)
        self.segments = sequence_segments(self.items, max_frame_gap)
        self.pairs: list[tuple[CamVidItem, CamVidItem, int]] = [
            (segment[j - offset], segment[j], offset)
            for segment in self.segments
            for j in range(len(segment))
            for offset in self.offsets
            if j - offset >= 0
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key_item, item, offset = self.pairs[index]
        key_image = read_rgb(key_item.image_path)
        image, labels = load_item(item)
        if key_image.shape != image.shape:
            raise ValueError(
                f"keyframe {key_item.image_path} is {key_image.shape}, current frame "
                f"{item.image_path} is {image.shape}"
            )
        sample = {
            "key_image": image_to_tensor(key_image),
            "image": image_to_tensor(image),
            "labels": labels_to_tensor(labels, void=CAMVID_VOID),
            "offset": offset,
            "frame_gap": item.frame - key_item.frame,
            "name": item.name,
            "key_name": key_item.name,
        }
        return self.transform(sample) if self.transform is not None else sample


__all__ = [
    "CAMVID_32_CLASSES",
    "CAMVID_NUM_CLASSES",
    "CAMVID_VOID",
    "IGNORE_INDEX",
    "CamVidFrames",
    "CamVidItem",
    "CamVidPairs",
    "camvid_colors_to_ids",
    "detect_layout",
    "list_camvid",
    "load_item",
    "parse_frame_name",
    "read_ids",
    "read_rgb",
    "sequence_segments",
]
