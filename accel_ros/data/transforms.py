"""Paired augmentation for (keyframe, current frame, labels) samples, on torch tensors.

A sample is a dict. Image keys ("key_image", "image" by default) hold (3, H, W) float RGB in
[0, 1]; label keys ("labels") hold (H, W) int64 class ids with IGNORE_INDEX for void. Every
random transform draws its parameters once per sample and applies them to all of these keys,
so the keyframe, the current frame and the labels stay pixel-aligned (the network's flow
between them is only meaningful if augmentation does not move one without the other). Keys
that are absent are skipped, other keys pass through untouched.

Randomness comes from a `torch.Generator`: pass one per call, or let the transform use its
own (seeded at construction, re-seedable with `seed()`); the global torch RNG is never used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

IMAGE_KEYS = ("key_image", "image")
LABEL_KEYS = ("labels",)

Sample = dict[str, Any]
# A dataset's per-sample transform (the augmentations below, or any user callable).
Transform = Callable[[Sample], Sample]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB numpy -> (3, H, W) float32 tensor in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("image is empty")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def labels_to_tensor(labels: np.ndarray, void: int | None = None) -> torch.Tensor:
    """(H, W) integer class ids -> (H, W) int64 tensor; the id `void` becomes IGNORE_INDEX."""
    if labels.ndim != 2:
        raise ValueError(f"expected (H, W) class ids, got shape {labels.shape}")
    out = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    if void is not None:
        out[out == void] = IGNORE_INDEX
    return out


def _check_sample(sample: Sample, image_keys: Sequence[str], label_keys: Sequence[str]) -> tuple[
    int, int
]:
    """Size (H, W) shared by all image and label entries; raise if they disagree."""
    sizes = {}
    for key in image_keys:
        if key in sample:
            tensor = sample[key]
            if tensor.dim() != 3 or tensor.shape[0] != 3:
                raise ValueError(f"sample[{key!r}] must be (3, H, W), got {tuple(tensor.shape)}")
            sizes[key] = tuple(tensor.shape[-2:])
    for key in label_keys:
        if key in sample:
            tensor = sample[key]
            if tensor.dim() != 2:
                raise ValueError(f"sample[{key!r}] must be (H, W), got {tuple(tensor.shape)}")
            sizes[key] = tuple(tensor.shape)
    if not sizes:
        raise ValueError(f"sample has none of the keys {tuple(image_keys) + tuple(label_keys)}")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"mismatched sizes in sample: {sizes}")
    return next(iter(sizes.values()))  # type: ignore[return-value]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class PairedTransform:
    """Base class: holds the keys it acts on and an own generator for calls without one."""

    def __init__(
        self,
        image_keys: Sequence[str] = IMAGE_KEYS,
        label_keys: Sequence[str] = LABEL_KEYS,
        seed: int = 0,
    ) -> None:
        self.image_keys = tuple(image_keys)
        self.label_keys = tuple(label_keys)
        self._generator = torch.Generator().manual_seed(int(seed))

    def seed(self, seed: int) -> None:
        """Re-seed the own generator (e.g. per DataLoader worker, see `worker_init_fn`)."""
        self._generator.manual_seed(int(seed))

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        _check_sample(sample, self.image_keys, self.label_keys)
        return self.apply(dict(sample), generator if generator is not None else self._generator)

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        raise NotImplementedError


def _resize_sample(
    sample: Sample,
    size: tuple[int, int],
    image_keys: Sequence[str],
    label_keys: Sequence[str],
) -> Sample:
    for key in image_keys:
        if key in sample:
            resized = F.interpolate(
                sample[key][None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
            sample[key] = resized.clamp_(0.0, 1.0)
    for key in label_keys:
        if key in sample:
            # Nearest keeps ids valid; interpolating ids would invent classes at boundaries.
            labels = sample[key][None, None].float()
            sample[key] = F.interpolate(labels, size=size, mode="nearest-exact")[0, 0].long()
    return sample


class Resize(PairedTransform):
    """Deterministic resize to (height, width): images bilinear, labels nearest."""

    def __init__(self, size: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) >= 1, got {size}")
        self.size = (int(size[0]), int(size[1]))

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        return _resize_sample(sample, self.size, self.image_keys, self.label_keys)


class RandomScale(PairedTransform):
    """Rescale by one factor drawn uniformly from [min_scale, max_scale]."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        height, width = _check_sample(sample, self.image_keys, self.label_keys)
        scale = _uniform(generator, self.min_scale, self.max_scale)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return _resize_sample(sample, size, self.image_keys, self.label_keys)


class RandomCrop(PairedTransform):
    """Crop one (height, width) window at the same place in every image and label map.

    Inputs smaller than the crop are padded at the bottom/right first: images with
    `image_fill`, labels with IGNORE_INDEX (padding must not count as any class).
    """

    def __init__(self, size: tuple[int, int], image_fill: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"crop size must be (height, width) >= 1, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.image_fill = float(image_fill)

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        height, width = _check_sample(sample, self.image_keys, self.label_keys)
        crop_h, crop_w = self.size
        pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
        top = int(torch.randint(0, height + pad_h - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width + pad_w - crop_w + 1, (), generator=generator))
        for key in self.image_keys + self.label_keys:
            if key not in sample:
                continue
            tensor = sample[key]
            if pad_h or pad_w:
                fill = self.image_fill if key in self.image_keys else IGNORE_INDEX
                tensor = F.pad(tensor, (0, pad_w, 0, pad_h), value=fill)
            sample[key] = tensor[..., top : top + crop_h, left : left + crop_w].contiguous()
        return sample


class RandomHorizontalFlip(PairedTransform):
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        if float(torch.rand((), generator=generator)) >= self.p:
            return sample
        return hflip(sample, self.image_keys + self.label_keys)


def hflip(sample: Sample, keys: Sequence[str] = IMAGE_KEYS + LABEL_KEYS) -> Sample:
    """Deterministic left-right mirror of the given keys (last tensor dimension)."""
    out = dict(sample)
    for key in keys:
        if key in out:
            out[key] = out[key].flip(-1)
    return out


class ColorJitter(PairedTransform):
    """Brightness, contrast and saturation factors drawn once and applied to all images.

    The same jitter on keyframe and current frame keeps them photometrically consistent, as
    consecutive video frames are; labels are untouched.
    """

    def __init__(
        self,
        brightness: float = 0.25,
        contrast: float = 0.25,
        saturation: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)

    def apply(self, sample: Sample, generator: torch.Generator) -> Sample:
        b = _uniform(generator, 1.0 - self.brightness, 1.0 + self.brightness)
        c = _uniform(generator, 1.0 - self.contrast, 1.0 + self.contrast)
        s = _uniform(generator, 1.0 - self.saturation, 1.0 + self.saturation)
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        for key in self.image_keys:
            if key not in sample:
                continue
            image = sample[key] * b
            gray = (image * weights.to(image)).sum(0, keepdim=True)
            image = (image - gray.mean()) * c + gray.mean()
            gray = (image * weights.to(image)).sum(0, keepdim=True)
            image = (image - gray) * s + gray
            sample[key] = image.clamp_(0.0, 1.0)
        return sample


class Compose:
    """Apply transforms in order, all drawing from one generator per call."""

    def __init__(self, transforms: Sequence[PairedTransform], seed: int = 0) -> None:
        self.transforms = list(transforms)
        self._generator = torch.Generator().manual_seed(int(seed))

    def seed(self, seed: int) -> None:
        self._generator.manual_seed(int(seed))

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        generator = generator if generator is not None else self._generator
        for transform in self.transforms:
            sample = transform(sample, generator)
        return sample


def train_transform(
    crop_size: tuple[int, int],
    scale: tuple[float, float] = (0.5, 2.0),
    jitter: float = 0.25,
    flip: bool = True,
    seed: int = 0,
) -> Compose:
    """The usual training augmentation: scale, crop, flip, colour jitter."""
    steps: list[PairedTransform] = [RandomScale(*scale), RandomCrop(crop_size)]
    if flip:
        steps.append(RandomHorizontalFlip())
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter))
    return Compose(steps, seed=seed)


def eval_transform(size: tuple[int, int] | None = None) -> Callable[[Sample], Sample]:
    """Deterministic evaluation transform: resize to `size`, or identity when None."""
    if size is None:
        return Compose([])
    return Compose([Resize(size)])


def worker_init_fn(worker_id: int) -> None:
    """DataLoader hook: give each worker's copy of the dataset transform its own seed.

    Workers receive copies of the dataset, generators included, so without this every worker
    would draw the same augmentations. torch.initial_seed() differs per worker and epoch.
    """
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "seed"):
        transform.seed(torch.initial_seed() % (2**63))
