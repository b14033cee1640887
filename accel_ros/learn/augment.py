"""Training-time augmentation of labelled frames."""

from __future__ import annotations

import numpy as np
import torch

from ..data import transforms as T


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    size: tuple[int, int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.75, 1.5),
    reference_height: int | None = None,
    jitter: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale (relative to the network's input height `reference_height`, default the
    crop height), random crop/pad to `size`, horizontal flip and colour jitter (+-`jitter`
    brightness, contrast, saturation), using `accel_ros.data.transforms`.

    image (H, W, 3) uint8, labels (H, W) uint8 -> (3, h, w) float [0, 1], (h, w) int64; padding
    gets label 255 (ignored) so it never teaches the network anything.
    """
    # scale 1.0 means "the network's input resolution"
    factor = (reference_height or size[0]) / image.shape[0]
    pipeline = T.Compose([
        T.RandomScale(scale_range[0] * factor, scale_range[1] * factor),
        T.RandomCrop(size),
        T.RandomHorizontalFlip(),
        T.ColorJitter(jitter, jitter, jitter),
    ])
    sample = {"image": T.image_to_tensor(image),
              "labels": torch.from_numpy(np.ascontiguousarray(labels)).long()}
    sample = pipeline(sample, generator)
    return sample["image"], sample["labels"]
