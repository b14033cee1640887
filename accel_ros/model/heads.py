"""Task head N_task and score upsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DilatedFeatureHead(nn.Module):
    """The paper's N_feat (DeepLab / DFF): 3x3 conv with dilation 6, then ReLU.

    (N, C_backbone, h, w) -> (N, C, h, w). Its output is what a keyframe caches and every
    later frame warps, so C (1024 in the paper) sets the cache size.
    """

    def __init__(self, in_channels: int, out_channels: int = 1024, dilation: int = 6) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(features))


class TaskHead(nn.Module):
    """N_task: features (N, C, h, w) -> class scores (N, K, h, w) at feature resolution.

    With `hidden_channels` None it is the paper's single 1x1 conv (after N_feat). Checkpoints
    from before N_feat existed use 1x1 conv -> hidden -> ReLU -> 1x1 conv. Use
    `ScoreUpsampler` to bring scores to image size (fusion is cheaper at 1/16).
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int | None = None
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        if hidden_channels is None:
            self.reduce: nn.Module = nn.Identity()
            self.classify = nn.Conv2d(in_channels, num_classes, 1)
        else:
            self.reduce = nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True)
            )
            self.classify = nn.Conv2d(hidden_channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.reduce(features))


class ScoreUpsampler(nn.Module):
    """Upsample (N, K, h, w) scores to (N, K, H, W).

    `bilinear` interpolates to the exact size. `deconv` is the paper's learnable 32x32 stride-16
    transposed convolution (initialised to bilinear, one filter per class) followed by a crop.
    """

    def __init__(self, num_classes: int, mode: str = "bilinear", stride: int = 16) -> None:
        super().__init__()
        self.mode = mode
        self.stride = stride
        if mode == "deconv":
            kernel = 2 * stride
            self.deconv = nn.ConvTranspose2d(
                num_classes, num_classes, kernel, stride=stride, padding=stride // 2,
                groups=num_classes, bias=False,
            )
            with torch.no_grad():
                self.deconv.weight.copy_(_bilinear_kernel(kernel).expand_as(self.deconv.weight))
        elif mode != "bilinear":
            raise ValueError(f"unknown upsample mode {mode!r}")

    def forward(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "bilinear":
            return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        up = self.deconv(scores)
        if up.shape[-2] < size[0] or up.shape[-1] < size[1]:
            up = F.interpolate(up, size=size, mode="bilinear", align_corners=False)
        return up[..., : size[0], : size[1]]


def _bilinear_kernel(size: int) -> torch.Tensor:
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    coords = torch.arange(size, dtype=torch.float32)
    weights = 1 - (coords - center).abs() / factor
    return (weights[:, None] * weights[None, :]).view(1, 1, size, size)
