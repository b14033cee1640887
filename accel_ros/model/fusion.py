"""Fusion of the reference (warped) and update branches: a single 1x1 convolution, or one per
keyframe age (`AgeScoreFusion`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def on_reference_grid(reference: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """The update branch's scores (N, K, h', w') on the reference's (N, K, h, w) grid, where the
    warped keyframe lives: an update branch run on a downscaled frame has a coarser grid.
    Raises ValueError when batch or class counts differ."""
    if reference.shape[:2] != update.shape[:2]:
        raise ValueError(
            f"fusion inputs differ: reference {tuple(reference.shape)} vs "
            f"update {tuple(update.shape)}"
        )
    if update.shape[-2:] != reference.shape[-2:]:
        update = F.interpolate(update, size=reference.shape[-2:], mode="bilinear",
                               align_corners=False)
    return update


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
        update = on_reference_grid(reference, update)
        return self.conv(torch.cat((reference, update.to(reference.dtype)), dim=1))


class ScoreFusion(Fusion1x1):
    """Score fusion (paper default): fuses class scores s_R and s_U, (N, K, h, w) each."""


class FeatureFusion(Fusion1x1):
    """Feature fusion (paper's Accel-101): fuses features f_R and f_U, (N, C, h, w) each; the
    reference task head then scores the fused features."""


def age_knot_weights(ages: tuple[float, ...], age_s: torch.Tensor) -> torch.Tensor:
    """(N,) keyframe ages in seconds -> (N, B) weights of the B knots `ages`: linear in
    log-age between the two knots around each age, all on the nearest knot outside them.

    Written as hat functions (each knot's weight rises from the knot below and falls to the
    knot above, clipped to [0, 1]) rather than a search for the two knots: the same numbers
    from elementwise operations only, so the fusion exports to ONNX with the age as an input.
    """
    position = age_s.float().clamp(min=ages[0], max=ages[-1]).log()[:, None]  # (N, 1)
    if len(ages) == 1:
        return torch.ones_like(position)
    knots = torch.tensor(ages, dtype=torch.float32, device=age_s.device).log()
    gaps = knots[1:] - knots[:-1]
    beyond = torch.ones_like(position)  # the end knots keep everything past their side
    rise = torch.cat((beyond, (position - knots[:-1]) / gaps), dim=1)
    fall = torch.cat(((knots[1:] - position) / gaps, beyond), dim=1)
    return torch.minimum(rise, fall).clamp(0.0, 1.0)


class AgeScoreFusion(nn.Module):
    """Score fusion that knows how old the warped keyframe is: a 1x1 conv over concat(s_R,
    s_U) per age knot (seconds, ascending), interpolated in log-age (`age_knot_weights`).

    Warping is nearly exact a frame after the keyframe and fails more the older the keyframe
    is, so the share of s_U must grow with age; one fusion for every age (`ScoreFusion`)
    learns an average trust instead. Without an age the youngest knot answers. Every knot
    starts as the average (a + b) / 2, or from a trained `ScoreFusion` (`from_plain`).

    reference, update: (N, K, h, w) each (update resampled onto the reference grid);
    age_s: (N,) seconds -> (N, K, h, w).
    """

    def __init__(self, channels: int, ages: tuple[float, ...]) -> None:
        super().__init__()
        if len(ages) < 1:
            raise ValueError("an age-aware fusion needs at least one age knot")
        self.channels = channels
        self.ages = tuple(float(age) for age in ages)
        eye = torch.eye(channels)
        average = torch.cat((0.5 * eye, 0.5 * eye), dim=1)  # (K, 2K)
        self.weight = nn.Parameter(average.repeat(len(ages), 1, 1))  # (B, K, 2K)
        self.bias = nn.Parameter(torch.zeros(len(ages), channels))  # (B, K)

    @torch.no_grad()
    def copy_plain(self, plain: Fusion1x1) -> AgeScoreFusion:
        """Start every knot from a trained one-for-all-ages fusion; returns self."""
        self.weight.copy_(plain.conv.weight[:, :, 0, 0].expand_as(self.weight))
        self.bias.copy_(plain.conv.bias.expand_as(self.bias))
        return self

    def forward(
        self, reference: torch.Tensor, update: torch.Tensor, age_s: torch.Tensor | None = None
    ) -> torch.Tensor:
        update = on_reference_grid(reference, update)
        n = reference.shape[0]
        if age_s is None:
            age_s = torch.full((n,), self.ages[0], device=reference.device)
        age_s = age_s.reshape(-1).to(reference.device)
        if age_s.shape[0] != n:
            raise ValueError(f"{age_s.shape[0]} ages for {n} score maps")
        knots = age_knot_weights(self.ages, age_s)  # (N, B)
        weight = torch.einsum("nb,bkc->nkc", knots, self.weight.float())
        bias = knots @ self.bias.float()  # (N, K)
        stacked = torch.cat((reference, update.to(reference.dtype)), dim=1)
        fused = torch.einsum("nkc,nchw->nkhw", weight.to(stacked.dtype), stacked)
        return fused + bias.to(fused.dtype)[:, :, None, None]
