"""The parts of an `AccelNet` that become ONNX graphs: torch modules with static shapes.

One graph per network call the streaming pipeline makes (`fastpath.OP_NAMES`), plus the warp:

| graph                | inputs                                        | output                  |
|----------------------|-----------------------------------------------|-------------------------|
| `reference_features` | image (B, 3, H, W) float RGB in [0, 1]        | f_R (B, C_R, h, w)      |
| `reference_scores`   | f_R (B, C_R, h, w)                            | s_R (B, K, h, w)        |
| `update_features`    | image (B, 3, H, W)                            | f_U (B, C_U, h_U, w_U)  |
| `update_scores`      | f_U                                           | s_U (B, K, h_U, w_U)    |
| `fuse`               | s_R, s_U (score fusion) or f_R, f_U (feature) | scores (B, K, h, w)     |
|                      | (+ age_s (B,) seconds: age-aware fusion)      |                         |
| `warp`               | s_R (or f_R), flow (B, 2, h, w) in cells      | warped s_R (or f_R)     |

(h, w) = ceil((H, W) / output stride). `warp` takes the map the pipeline caches: s_R when
N_task is a 1x1 conv and out-of-frame samples repeat the border (`AccelNet.warps_scores`), else
f_R. The update branch's antialiased downscale of the frame
(`update_input_scale`) is inside its graph: the legacy exporter has no antialiased Resize, so
it is written as a strided depthwise convolution (or two matrix products) that reproduces
torch's resampling weights exactly (`antialiased_downscale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..model.accel import AccelNet, SegmentationBranch
from ..model.resampling import resize_matrix
from ..model.warp import warp

# In the order a non-key frame meets them; `warp` is for deployments (the pipeline warps in
# torch, ~1 ms at 360x480).
GRAPH_NAMES = (
    "reference_features", "reference_scores", "update_features", "update_scores", "fuse", "warp"
)


def branch_input_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The (h, w) a branch with `input_scale` resizes an (H, W) frame to: the rule of
    `SegmentationBranch.features` (the export's parity check fails should the two differ)."""
    if scale == 1.0:
        return int(size[0]), int(size[1])
    return max(16, round(size[0] * scale)), max(16, round(size[1] * scale))


@dataclass
class _StridedKernel:
    """One axis of a resampling that is a strided convolution: out[i] = sum_k kernel[k] *
    x[stride * i - padding + k] / norm[i] (zero outside the input)."""

    kernel: torch.Tensor  # (K,)
    stride: int
    padding: int
    norm: torch.Tensor  # (size_out,)


def _as_strided_kernel(matrix: torch.Tensor) -> _StridedKernel | None:
    """The strided-convolution form of a resampling matrix (out, in), or None when it has none
    (a non-integer factor): the middle row gives the kernel, and every row must match it
    shifted by the stride and renormalised over the taps inside the input."""
    size_out, size_in = matrix.shape
    if size_in % size_out:
        return None
    stride, middle = size_in // size_out, size_out // 2
    taps = torch.nonzero(matrix[middle]).flatten()
    first, last = int(taps[0]), int(taps[-1])
    kernel, padding = matrix[middle, first : last + 1], stride * middle - first
    rebuilt = torch.zeros_like(matrix)
    for row in range(size_out):
        start = stride * row - padding
        lo, hi = max(start, 0), min(start + kernel.numel(), size_in)
        if lo < hi:
            rebuilt[row, lo:hi] = kernel[lo - start : hi - start]
    norm = rebuilt.sum(dim=1)
    if (norm <= 0).any() or (rebuilt / norm[:, None] - matrix).abs().max() > 1e-9:
        return None
    conv_out = (size_in + 2 * padding - kernel.numel()) // stride + 1
    if conv_out < size_out:
        return None
    return _StridedKernel(kernel, stride, padding, norm)


class StridedDownscale(nn.Module):
    """Antialiased downscale by integer factors as one depthwise conv (B, 3, H, W) ->
    (B, 3, h, w), divided by a constant map that renormalises the border taps (as torch does).
    ~2 M multiply-adds at 360x480 -> 180x240."""

    def __init__(self, rows: _StridedKernel, cols: _StridedKernel, size_out: tuple[int, int]):
        super().__init__()
        weight = torch.outer(rows.kernel, cols.kernel).float()
        self.register_buffer("weight", weight.expand(3, 1, *weight.shape).contiguous())
        self.register_buffer("scale", (1.0 / torch.outer(rows.norm, cols.norm)).float()[None, None])
        self.stride = (rows.stride, cols.stride)
        self.padding = (rows.padding, cols.padding)
        self.size_out = tuple(size_out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(image, self.weight, stride=self.stride, padding=self.padding, groups=3)
        if tuple(out.shape[-2:]) != self.size_out:  # the last window hung over the edge
            out = out[..., : self.size_out[0], : self.size_out[1]]
        return out * self.scale


class MatrixDownscale(nn.Module):
    """Antialiased resize by any factor as two matrix products (B, 3, H, W) -> (B, 3, h, w):
    exact but ~170 M multiply-adds at 360x480; used only where the factor is not an integer."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows.float())  # (h, H)
        self.register_buffer("cols_t", cols.T.float().contiguous())  # (W, w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.rows, torch.matmul(image, self.cols_t))


def antialiased_downscale(size_in: tuple[int, int], size_out: tuple[int, int]) -> nn.Module:
    """An exportable module equal to `F.interpolate(..., size_out, mode="bilinear",
    antialias=True)` on (B, 3, *size_in) inputs (Identity when the sizes agree)."""
    if tuple(size_in) == tuple(size_out):
        return nn.Identity()
    rows = resize_matrix(size_in[0], size_out[0], antialias=True)
    cols = resize_matrix(size_in[1], size_out[1], antialias=True)
    row_kernel, col_kernel = _as_strided_kernel(rows), _as_strided_kernel(cols)
    if row_kernel is None or col_kernel is None:
        return MatrixDownscale(rows, cols)
    return StridedDownscale(row_kernel, col_kernel, tuple(size_out))


class BranchFeatures(nn.Module):
    """A branch's backbone -> N_feat at a fixed input size, its input resize included:
    image (B, 3, H, W) -> features (B, C, h, w)."""

    def __init__(self, branch: SegmentationBranch, input_size: tuple[int, int]) -> None:
        super().__init__()
        resized = branch_input_size(input_size, branch.input_scale)
        self.resize = antialiased_downscale(input_size, resized)
        self.backbone = branch.backbone
        self.neck = branch.neck

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(self.resize(image)))


class Fuse(nn.Module):
    """`AccelNet.fuse` with both inputs given: score fusion (s_R, s_U) -> scores; feature
    fusion (f_R, f_U) -> the reference head on the fused features; an age-aware fusion takes
    the keyframe ages in seconds (B,) as a third input."""

    def __init__(self, model: AccelNet) -> None:
        super().__init__()
        self.fusion = model.fusion
        self.head = model.reference.head if model.fuses_features else nn.Identity()

    def forward(
        self, reference: torch.Tensor, update: torch.Tensor, *age_s: torch.Tensor
    ) -> torch.Tensor:
        return self.head(self.fusion(reference, update, *age_s))


class Warp(nn.Module):
    """`model.warp.warp` with its out-of-frame rule fixed: features (B, C, h, w) and backward
    flow on the feature grid in feature cells (B, 2, h, w) (`warp.flow_to_features` brings
    image flow there) -> warped features."""

    def __init__(self, out_of_frame: str = "border") -> None:
        super().__init__()
        self.out_of_frame = out_of_frame

    def forward(self, features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return warp(features, flow, self.out_of_frame)


@dataclass
class GraphSpec:
    """One graph to export: its module, named example inputs (their shapes are the graph's)
    and what torch answers on them (the export's parity check)."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    output: str
    expected: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))


def graph_specs(
    model: AccelNet,
    input_size: tuple[int, int],
    batch: int = 1,
    out_of_frame: str = "border",
    image: torch.Tensor | None = None,
) -> list[GraphSpec]:
    """The graphs of `model` at (H, W) = `input_size`, each with example inputs made by
    running the previous graphs in torch on `image` (B, 3, H, W) (default: seeded noise).
    Models without an update branch have no update / fuse graphs."""
    model = model.eval()
    if image is None:
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(batch, 3, *input_size, generator=generator)
    specs: list[GraphSpec] = []

    def add(name: str, module: nn.Module, inputs: dict[str, torch.Tensor], output: str) -> None:
        with torch.no_grad():  # not inference_mode: the exporter traces these tensors again
            expected = module.eval()(*inputs.values())
        specs.append(GraphSpec(name, module, inputs, output, expected))

    add("reference_features", BranchFeatures(model.reference, input_size), {"image": image},
        "reference_features")
    features = specs[-1].expected
    add("reference_scores", model.reference.head, {"reference_features": features},
        "reference_scores")
    if model.update is not None:
        add("update_features", BranchFeatures(model.update, input_size), {"image": image},
            "update_features")
        add("update_scores", model.update.head, {"update_features": specs[-1].expected},
            "update_scores")
        pair = (specs[0], specs[2]) if model.fuses_features else (specs[1], specs[3])
        inputs = {spec.output: spec.expected for spec in pair}
        if model.fusion_uses_age:
            # The age of each frame's keyframe, between the knots (the graph must interpolate).
            inputs["age_s"] = torch.full((image.shape[0],), 0.2)
        add("fuse", Fuse(model), inputs, "scores")
    flow = _example_flow(features)
    # The map the streaming pipeline caches and warps: s_R where that is exact, else f_R.
    cached = specs[1] if model.warps_scores(out_of_frame) else specs[0]
    add("warp", Warp(out_of_frame), {cached.output: cached.expected, "flow": flow},
        f"warped_{cached.output.removeprefix('reference_')}")
    return specs


def _example_flow(features: torch.Tensor) -> torch.Tensor:
    """Smooth backward flow of up to ~2 cells, some of it pointing outside the map."""
    batch, _, height, width = features.shape
    ys = torch.linspace(-1.0, 1.0, height).view(1, height, 1).expand(batch, height, width)
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, width).expand(batch, height, width)
    return torch.stack((1.5 * xs + 0.3, -1.2 * ys * xs + 0.7), dim=1).contiguous()


def input_shapes(spec: GraphSpec) -> dict[str, Sequence[int]]:
    """Input name -> static shape of a graph."""
    return {name: tuple(tensor.shape) for name, tensor in spec.inputs.items()}
