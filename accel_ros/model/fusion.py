"""Fusion of the reference (warped) and update branches: a single 1x1 convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fusion1x1(nn.Module):
    """1x1 conv over concat(a, b), (N, C, h, w) each -> (N, C, h, w).

    Initialised to the average (a + b) / 2 (weights 0.5 * I on both halves, zero bias), so an
    untrained fusion already behaves like a sensible ensemble of the two branches and training
    only has to learn where to trust which one.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(2 * channels, channels, 1)
        self.reset_to_average()

    def reset_to_average(self) -> None:
        with torch.no_grad():
            eye = torch.eye(self.channels).view(self.channels, self.channels, 1, 1)
            self.conv.weight.copy_(torch.cat((0.5 * eye, 0.5 * eye), dim=1))
            self.conv.bias.zero_()

    def forward(self, reference: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if reference.shape[:2] != update.shape[:2]:
            raise ValueError(
                f"fusion inputs differ: reference {tuple(reference.shape)} vs "
                f"update {tuple(update.shape)}"
            )
        if update.shape[-2:] != reference.shape[-2:]:
            # An update branch run on a downscaled frame has a coarser grid: bring it onto the
            # reference grid, which is where the warped keyframe lives.
            update = F.interpolate(update, size=reference.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return self.conv(torch.cat((reference, update.to(reference.dtype)), dim=1))


class ScoreFusion(Fusion1x1):
    """Score fusion (paper default): fuses class scores s_R and s_U, (N, K, h, w) each."""


class FeatureFusion(Fusion1x1):
    """Feature fusion (paper's Accel-101): fuses features f_R and f_U, (N, C, h, w) each; the
    reference task head then scores the fused features."""
