"""Torch's bilinear resampling along one axis, as a matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_matrix(size_in: int, size_out: int, antialias: bool = False) -> torch.Tensor:
    """(size_out, size_in) float64: `F.interpolate(..., mode="bilinear", align_corners=False,
    antialias=antialias)` along one axis, read off torch by resizing an identity (each channel
    is a one-hot signal along the width), so the weights are torch's own. Two rows, not one:
    torch answers a one-pixel side with a constant."""
    eye = torch.eye(size_in, dtype=torch.float64).view(1, size_in, 1, size_in).expand(-1, -1, 2, -1)
    rows = F.interpolate(eye, size=(2, size_out), mode="bilinear", align_corners=False,
                         antialias=antialias)
    return rows[0, :, 0, :].T.contiguous()
