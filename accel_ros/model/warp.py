"""Backward warping of feature maps by optical flow (bilinear `grid_sample`).

Flow convention used throughout the package: `flow` is (N, 2, H, W) in pixels of the map it is
given for, channel 0 = x (u), channel 1 = y (v). It is *backward* flow from the current frame to
the previous one: the content at current pixel p was at p + flow[p] in the previous frame. So
warping previous features is a pure gather, `warped[p] = previous[p + flow[p]]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_flow(flow: torch.Tensor) -> None:
    """Raise ValueError for a flow that is not (N, 2, H, W) or holds NaN/inf."""
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, H, W), got shape {tuple(flow.shape)}")
    if not torch.isfinite(flow).all():
        raise ValueError("flow contains NaN or infinite values")


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize flow (N, 2, H, W) to (N, 2, h, w), rescaling the vectors to the new pixel units.

    A displacement of 16 px at 1024 px width is 1 px at 64 px width: u scales with w / W and
    v with h / H (separately, so anisotropic resizes stay correct).
    """
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = flow.new_tensor([size[1] / width, size[0] / height]).view(1, 2, 1, 1)
    return resized * scale


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Sampling grid (N, h, w, 2) in grid_sample's normalised coordinates (align_corners=True)."""
    height, width = flow.shape[-2:]
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype)
    base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    x = base_x.unsqueeze(0) + flow[:, 0]
    y = base_y.unsqueeze(0) + flow[:, 1]
    # Pixel centres map to -1 .. 1 exactly under align_corners=True, so integer flows sample
    # exactly one source pixel (no blur): the known-shift tests rely on this.
    x = 2.0 * x / max(width - 1, 1) - 1.0
    y = 2.0 * y / max(height - 1, 1) - 1.0
    return torch.stack((x, y), dim=-1)


def warp(
    features: torch.Tensor, flow: torch.Tensor, out_of_frame: str = "border"
) -> torch.Tensor:
    """Warp `features` (N, C, h, w) by backward `flow` (N, 2, h, w) at feature resolution.

    `out_of_frame` says what a sample from outside the previous frame gets: `border` repeats
    the nearest edge feature (scene content entering the view usually continues the edge),
    `zeros` gives zero features (no evidence; the update branch has to supply it).
    """
    check_flow(flow)
    if features.shape[-2:] != flow.shape[-2:] or features.shape[0] != flow.shape[0]:
        raise ValueError(
            f"features {tuple(features.shape)} and flow {tuple(flow.shape)} do not match; "
            "resize the flow with resize_flow() first"
        )
    if out_of_frame not in ("border", "zeros"):
        raise ValueError(f"out_of_frame must be 'border' or 'zeros', got {out_of_frame!r}")
    grid = flow_to_grid(flow.to(features.dtype))
    return F.grid_sample(
        features, grid, mode="bilinear", padding_mode=out_of_frame, align_corners=True
    )


def out_of_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) bool: True where p + flow[p] lies outside the previous frame."""
    grid = flow_to_grid(flow)
    outside = (grid.abs() > 1.0 + 1e-6).any(dim=-1)
    return outside.unsqueeze(1)
