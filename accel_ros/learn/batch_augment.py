"""Batched augmentation on any device: random scale, crop, flip and colour jitter of a whole
batch in one `grid_sample` per tensor, so frames held on a GPU never visit the host.

The geometry of each sample is one affine map from the crop to the source frame (scale about
the network's input height, a crop window, an optional mirror), applied alike to the frame
(bilinear), its labels (nearest) and any low-resolution soft targets that cover the same field
of view (bilinear; e.g. a teacher's class scores on the whole frame). What falls outside the
source becomes black in the frame, void in the labels and is masked out of the soft targets.
Parameters are drawn from a CPU `torch.Generator`, so runs repeat on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..metrics import IGNORE_INDEX

_GREY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class AugmentedBatch:
    """images (N, 3, h, w) float in [0, 1]; labels (N, h, w) int64 (IGNORE_INDEX outside the
    source); soft (N, K, h, w) float or None; inside (N, h, w) bool: pixels that come from the
    source frame."""

    images: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor | None
    inside: torch.Tensor


def random_affines(
    count: int,
    source: tuple[int, int],
    crop: tuple[int, int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.75, 1.5),
    reference_height: int | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """(count, 2, 3) `affine_grid` matrices (align_corners=False) taking a (h, w) = `crop`
    output to a window of the (H, W) = `source` frame rescaled by s ~ U(scale_range) x
    `reference_height` / H (scale 1 = the network's input height), mirrored with
    probability 1/2 when `flip`. Windows lie inside the rescaled frame where it is larger than
    the crop, and cover it (with a border outside) where it is smaller."""
    height, width = source
    crop_h, crop_w = crop
    factor = (reference_height or crop_h) / height
    low, high = scale_range
    scale = (low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64))
    scale = scale * factor
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    for axis, (size, crop_size) in enumerate(((width, crop_w), (height, crop_h))):
        scaled = scale * size
        # Top-left corner of the window in rescaled pixels, anywhere the window fits (or, for
        # a frame smaller than the crop, anywhere that keeps the frame inside the window).
        lo = torch.minimum(scaled - crop_size, torch.zeros_like(scaled))
        hi = torch.maximum(scaled - crop_size, torch.zeros_like(scaled))
        start = lo + (hi - lo) * torch.rand(count, generator=generator, dtype=torch.float64)
        # Output pixel j (centre at normalised x_o) lies at (start + j + 0.5) / scale source
        # pixels: u = crop / (scale * size) * x_o + (2 * start + crop) / (scale * size) - 1.
        theta[:, axis, axis] = crop_size / scaled
        theta[:, axis, 2] = (2 * start + crop_size) / scaled - 1
    if flip:
        mirror = torch.rand(count, generator=generator) < 0.5
        theta[mirror, 0, 0] *= -1
    return theta.float()


def color_jitter(
    images: torch.Tensor, generator: torch.Generator, strength: float = 0.25
) -> torch.Tensor:
    """Brightness, contrast and saturation factors in 1 +- `strength`, drawn per sample (as
    `data.transforms.ColorJitter`): (N, 3, h, w) in [0, 1] -> the same, clamped."""
    if strength <= 0:
        return images
    n = images.shape[0]
    factors = 1 - strength + 2 * strength * torch.rand(n, 3, generator=generator)
    b, c, s = (factors[:, i].to(images.device, images.dtype).view(n, 1, 1, 1) for i in range(3))
    weights = torch.tensor(_GREY_WEIGHTS, device=images.device, dtype=images.dtype)
    images = images * b
    grey = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    images = (images - mean) * c + mean
    grey = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    images = (images - grey) * s + grey
    return images.clamp_(0.0, 1.0)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    crop: tuple[int, int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.75, 1.5),
    reference_height: int | None = None,
    soft: torch.Tensor | None = None,
    jitter: float = 0.25,
) -> AugmentedBatch:
    """Augment a batch of whole frames on their device.

    images (N, 3, H, W) uint8 or float in [0, 1]; labels (N, H, W) integer ids (IGNORE_INDEX
    void); soft (N, K, h', w') scores of the same frames at any resolution, or None. Returns
    crops of size `crop` (h, w).
    """
    n = images.shape[0]
    device = images.device
    theta = random_affines(n, (int(images.shape[-2]), int(images.shape[-1])), crop, generator,
                           scale_range, reference_height).to(device)
    grid = F.affine_grid(theta, [n, 1, crop[0], crop[1]], align_corners=False)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    out_images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear",
                               padding_mode="zeros", align_corners=False)
    # Labels + 1, so that the zeros padding marks "outside the source".
    shifted = (labels.to(torch.float32) + 1.0).unsqueeze(1)
    sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[:, 0].round_().long()
    inside = sampled > 0
    out_labels = torch.where(inside, sampled - 1, torch.full_like(sampled, IGNORE_INDEX))
    out_soft = None
    if soft is not None:
        out_soft = F.grid_sample(soft.float(), grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)
    return AugmentedBatch(color_jitter(out_images, generator, jitter), out_labels, out_soft,
                          inside)
