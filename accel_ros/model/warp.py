"""Backward warping of feature maps by optical flow (bilinear `grid_sample`).

Flow convention used throughout the package: `flow` is (N, 2, H, W) in pixels of the map it is
given for, channel 0 = x (u), channel 1 = y (v). It is *backward* flow from the current frame to
the previous one: the content at current pixel p was at p + flow[p] in the previous frame. So
warping previous features is a pure gather, `warped[p] = previous[p + flow[p]]`.

Geometry of a feature map: a network of output stride s (16 for the dilated backbones here)
turns an (H, W) image into ceil(H / s) x ceil(W / s) cells, and cell (i, j) is centred on input
pixel (s * i, s * j) (every stride-2 layer has "same" padding, so output k sits on input 2k).
`flow_to_features` samples the image-space flow at exactly those pixels and divides by s per
axis. `resize_flow` (bilinear, scale by the size ratio) is right only between maps that cover the
same extent, e.g. the levels of a flow pyramid; between an image and its feature map it is off
whenever H or W is not a multiple of s (at 180x240: ceil(180 / 16) / 180 = 12 / 180 makes
vertical flow 6.7% too large).

Sampling grids are always built in float32: in fp16 a grid coordinate near 1000 px carries
~0.5 px of rounding error, in bf16 ~4 px, and incremental warps would compound it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_flow(flow: torch.Tensor, finite: bool | None = None) -> None:
    """Raise ValueError for a flow that is not (N, 2, H, W) or holds NaN/inf.

    The NaN/inf scan needs the values on the host: a flow on a GPU would stall the stream on
    every frame, so by default (`finite=None`) it runs only for CPU tensors; `finite=True`
    forces it anywhere, `finite=False` skips it."""
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, H, W), got shape {tuple(flow.shape)}")
    if finite is None:
        finite = flow.device.type == "cpu"
    if finite and not torch.isfinite(flow).all():
        raise ValueError("flow contains NaN or infinite values")


def mean_flow_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """Mean length of the vectors of flow (N, 2, H, W), over all of them: a 0-d tensor.

    `hypot` of the two planes, not `flow.norm(dim=1)`: on a CPU the norm over a 2-long channel
    axis is a strided reduction, ~5 ms on one thread for a 180x240 flow against ~0.07 ms."""
    return torch.hypot(flow[:, 0], flow[:, 1]).mean()


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize flow (N, 2, H, W) to (N, 2, h, w) over the *same extent*, rescaling the vectors to
    the new pixel units (u by w / W, v by h / H).

    For levels of one pyramid or a flow computed on a downscaled copy of the frame. To bring
    image-space flow onto a feature map of output stride s use `flow_to_features`.
    """
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    # Per-axis scale as Python numbers, in place on the fresh tensor: a tensor built from a
    # list would be a blocking host->device copy per call (TorchFlow's pyramid calls this
    # once per level, every frame).
    resized[:, 0].mul_(size[1] / width)
    resized[:, 1].mul_(size[0] / height)
    return resized


def feature_size(image_size: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """(H, W) -> (ceil(H / stride), ceil(W / stride)): the feature grid of a stride-s network."""
    return (-(-int(image_size[0]) // stride), -(-int(image_size[1]) // stride))


def flow_to_features(
    flow: torch.Tensor,
    size: tuple[int, int],
    image_size: tuple[int, int],
    stride: int = 16,
) -> torch.Tensor:
    """Image-space backward flow -> flow on a feature grid, in feature cells. float32.

    flow: (N, 2, h', w') computed on the (H, W) = `image_size` frame resized to (h', w') (any
    flow scale), in pixels of that map. size: the feature grid (h, w), normally
    `feature_size(image_size, stride)`. Cell (i, j) sits on input pixel (stride * i, stride * j),
    which lies at ((stride * i + 0.5) h' / H - 0.5, ...) in the flow map (pixel centres, as
    `F.interpolate` resizes frames); the flow there is converted to input pixels (H / h') and
    then to cells (1 / stride), per axis.
    """
    height, width = int(image_size[0]), int(image_size[1])
    flow_h, flow_w = flow.shape[-2:]
    rows, cols = int(size[0]), int(size[1])
    flow = flow.float()
    scale_y, scale_x = flow_h / height, flow_w / width  # flow-map px per input px
    ys = (stride * torch.arange(rows, device=flow.device, dtype=torch.float32) + 0.5) * scale_y
    xs = (stride * torch.arange(cols, device=flow.device, dtype=torch.float32) + 0.5) * scale_x
    ys, xs = ys - 0.5, xs - 0.5
    grid_y = 2.0 * ys / max(flow_h - 1, 1) - 1.0
    grid_x = 2.0 * xs / max(flow_w - 1, 1) - 1.0
    grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
    grid = grid.unsqueeze(0).expand(flow.shape[0], rows, cols, 2)
    with torch.autocast(flow.device.type, enabled=False):
        sampled = F.grid_sample(
            flow, grid, mode="bilinear", padding_mode="border", align_corners=True
        )
    # Python numbers, not a tensor built from a list (a blocking host->device copy on CUDA,
    # every non-key frame); `sampled` is grid_sample's fresh output, so in place is safe.
    sampled[:, 0].mul_(1.0 / (scale_x * stride))
    sampled[:, 1].mul_(1.0 / (scale_y * stride))
    return sampled


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Sampling grid (N, h, w, 2) float32 in grid_sample's normalised coordinates
    (align_corners=True), whatever the dtype of `flow`."""
    flow = flow.float()
    height, width = flow.shape[-2:]
    ys = torch.arange(height, device=flow.device, dtype=torch.float32)
    xs = torch.arange(width, device=flow.device, dtype=torch.float32)
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

    The grid and the sampling are float32 whatever the features' dtype (and outside autocast),
    and the result has the features' dtype: a float32 cache stays float32 frame after frame.
    """
    check_flow(flow)
    if features.shape[-2:] != flow.shape[-2:] or features.shape[0] != flow.shape[0]:
        raise ValueError(
            f"features {tuple(features.shape)} and flow {tuple(flow.shape)} do not match; "
            "bring the flow to the feature grid with flow_to_features() first"
        )
    if out_of_frame not in ("border", "zeros"):
        raise ValueError(f"out_of_frame must be 'border' or 'zeros', got {out_of_frame!r}")
    if flow.device.type != "cpu":
        # No host sync for the NaN check on a GPU: a non-finite vector becomes "no motion".
        flow = torch.nan_to_num(flow.float(), nan=0.0, posinf=0.0, neginf=0.0)
    grid = flow_to_grid(flow)
    with torch.autocast(features.device.type, enabled=False):
        warped = F.grid_sample(
            features.float(), grid, mode="bilinear", padding_mode=out_of_frame,
            align_corners=True,
        )
    return warped.to(features.dtype)


def out_of_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) bool: True where p + flow[p] lies outside the previous frame."""
    grid = flow_to_grid(flow)
    outside = (grid.abs() > 1.0 + 1e-6).any(dim=-1)
    return outside.unsqueeze(1)
