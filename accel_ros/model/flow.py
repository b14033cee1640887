"""Optical flow estimators behind one interface.

Every estimator returns *backward* flow (current -> previous, see `warp.py`) as a tensor
(N, 2, h, w). It may be computed at a lower resolution than the frames (cheaper; features live at
1/16 anyway); the vectors are in pixels of the returned map, so `resize_flow` brings it to any
resolution correctly.

Streaming use: `prepare(frame)` turns a frame into the estimator's own representation (grey
uint8 images for OpenCV, the tensor for the network), so a pipeline prepares each frame once
and keeps the previous one; `estimate(prev_prepared, cur_prepared)` computes the flow.

Every estimator lives here, bound by name to the registry of `PipelineConfig.flow_method`
values (`config.FLOW_METHODS` -> `FLOW_ESTIMATORS`):
- `dis` (default): OpenCV DIS on the CPU. On a CUDA pipeline this costs a device->host copy of
  the grey frame, a host->device copy of the flow and a wait for both, every frame.
- `torch`: coarse-to-fine Lucas-Kanade in torch; runs wherever the frames are, so a CUDA
  pipeline never leaves the device for flow. No weights.
- `farneback`: OpenCV Farneback (slower, smoother). `zero`: static camera.
End-point errors on the synthetic generator's exact flow: README, "Optical flow".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..config import FLOW_METHODS
from .warp import flow_to_grid, resize_flow


class FlowEstimator:
    """Base class. `__call__(previous, current)` with (N, 3, H, W) float RGB in [0, 1]."""

    name = "base"
    # Whether `estimate` itself refuses NaN/inf flow, so its callers need not scan it again.
    checks_finite = False

    def prepare(self, frame: torch.Tensor) -> Any:
        raise NotImplementedError

    def estimate(self, previous: Any, current: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if previous.shape != current.shape:
            raise ValueError(
                f"flow needs frames of one size: {tuple(previous.shape)} vs {tuple(current.shape)}"
            )
        return self.estimate(self.prepare(previous), self.prepare(current))


class ZeroFlow(FlowEstimator):
    """Static-camera flow (all zeros): DFF degenerates to reusing the keyframe features."""

    name = "zero"

    def prepare(self, frame: torch.Tensor) -> Any:
        return frame.shape[0], frame.shape[-2:], frame.device

    def estimate(self, previous: Any, current: Any) -> torch.Tensor:
        n, (height, width), device = current
        return torch.zeros(n, 2, height, width, device=device)


def working_size(frame: torch.Tensor, scale: float) -> tuple[int, int]:
    """The classical flow estimators' working resolution of frames (N, 3, H, W):
    (round(H * scale), round(W * scale)), at least 8 px a side. Raises ValueError for frames of
    another shape."""
    if frame.dim() != 4 or frame.shape[1] != 3:
        raise ValueError(f"flow expects (N, 3, H, W) frames, got {tuple(frame.shape)}")
    height, width = frame.shape[-2:]
    return max(8, round(height * scale)), max(8, round(width * scale))


def downscale_frame(frame: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, h, w) float at `working_size`, bilinear."""
    size = working_size(frame, scale)
    small = frame.detach().float()
    if size != tuple(frame.shape[-2:]):
        small = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return small


class _OpenCVFlow(FlowEstimator):
    """Shared plumbing of the OpenCV estimators: grey uint8 at `scale` of the frame size."""

    checks_finite = True  # on the host, before the flow becomes a tensor

    def __init__(self, scale: float = 0.5) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        self.scale = scale

    def prepare(self, frame: torch.Tensor) -> Any:
        """(N, 3, H, W) float RGB in [0, 1] -> per frame, the (h, w) uint8 grey image at `scale`
        (bilinear, as `downscale_frame`), and the frame's device.

        Grey first, then resize, in OpenCV on the (H, W, 3) layout: the segmenter's frames are
        channels-last, so that is a view, and OpenCV's SIMD kernels take 0.14 ms where torch's
        strided per-channel arithmetic and 3-channel resize took 1.06 ms (360x480, one thread).
        The two agree up to float rounding (0.03% of grey levels differ by 1)."""
        size = working_size(frame, self.scale)
        greys = []
        for image in frame.detach().float().cpu():
            grey = cv2.cvtColor(np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
                                cv2.COLOR_RGB2GRAY)
            if size != tuple(frame.shape[-2:]):
                grey = cv2.resize(grey, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            greys.append(np.rint(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8))
        return greys, frame.device

    def estimate(self, previous: Any, current: Any) -> torch.Tensor:
        prev_images, _ = previous
        cur_images, device = current
        flows = [self._flow(cur, prev) for prev, cur in zip(prev_images, cur_images, strict=True)]
        stacked = np.ascontiguousarray(np.stack(flows).transpose(0, 3, 1, 2))
        # Checked here, on the host, where it is free: on a GPU it would cost a sync.
        if not np.isfinite(stacked).all():
            raise ValueError("flow contains NaN or infinite values")
        flow = torch.from_numpy(stacked)
        if device.type == "cuda":
            return flow.pin_memory().to(device, non_blocking=True)
        return flow.to(device)

    def _flow(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """(h, w, 2) float32 flow with current(p) ~= previous(p + flow(p))."""
        raise NotImplementedError


class DISFlow(_OpenCVFlow):
    """OpenCV Dense Inverse Search flow (Kroeger et al. 2016): fast, no weights needed."""

    name = "dis"
    _PRESETS: ClassVar[dict[str, int]] = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }

    def __init__(self, scale: float = 0.5, preset: str = "fast") -> None:
        super().__init__(scale)
        if preset not in self._PRESETS:
            raise ValueError(f"DIS preset {preset!r} is not one of {sorted(self._PRESETS)}")
        self._dis = cv2.DISOpticalFlow_create(self._PRESETS[preset])

    def _flow(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        return self._dis.calc(current, previous, None)


class FarnebackFlow(_OpenCVFlow):
    """OpenCV Farneback polynomial-expansion flow: slower than DIS, smoother."""

    name = "farneback"

    def _flow(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(current, previous, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _spatial_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of (N, 1, h, w), replicate-padded: (d/dx, d/dy), each (N, 1, h, w)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return gx, gy


class TorchFlow(FlowEstimator):
    """Dense coarse-to-fine Lucas-Kanade flow in torch: runs wherever the frames are (CUDA
    frames never visit the host), needs no weights, and is deterministic.

    Frames are converted to grey at `scale` of their size; a pyramid of `levels` halvings
    (stopping above 8 px) is solved coarse to fine with `iterations` Gauss-Newton steps per level
    over a (2 * radius + 1)^2 window. `regularization` damps the 2x2 normal equations so
    textureless regions keep the coarser estimate instead of amplifying noise, and after each
    step the flow is box-filtered over (2 * smooth + 1)^2 pixels (0: off), which stops flat
    regions from drifting over the iterations (on the synthetic clips: end-point error 3.5 px
    without it, 1.9 with it and 6 levels; README, "Optical flow"). Output: backward
    flow (N, 2, h, w) float32 in pixels of the scaled map, like every `FlowEstimator`. It always
    computes in float32 (autocast off): gradients of 8-bit images need the precision.
    """

    name = "torch"

    def __init__(
        self,
        scale: float = 0.5,
        levels: int = 6,
        iterations: int = 3,
        radius: int = 3,
        regularization: float = 1e-4,
        smooth: int = 1,
    ) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        if levels < 1 or iterations < 1 or radius < 1 or smooth < 0:
            raise ValueError("levels, iterations and radius must all be >= 1, smooth >= 0")
        self.scale = scale
        self.levels = levels
        self.iterations = iterations
        self.radius = radius
        self.regularization = regularization
        self.smooth = smooth

    def prepare(self, frame: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> grey (N, 1, h, w) float32 on the same device."""
        with torch.autocast(frame.device.type, enabled=False):
            small = downscale_frame(frame, self.scale)
            # Weights as Python numbers: a tensor built from a list would be a blocking
            # host->device copy on every CUDA frame.
            return (
                0.299 * small[:, 0:1] + 0.587 * small[:, 1:2] + 0.114 * small[:, 2:3]
            ).contiguous()

    def estimate(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if previous.shape != current.shape:
            raise ValueError(
                f"flow needs frames of one size: {tuple(previous.shape)} vs {tuple(current.shape)}"
            )
        with torch.autocast(current.device.type, enabled=False):
            return self._solve(previous.float(), current.float())

    def _solve(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        prev_pyramid, cur_pyramid = [previous], [current]
        while len(prev_pyramid) < self.levels and min(prev_pyramid[-1].shape[-2:]) >= 16:
            prev_pyramid.append(F.avg_pool2d(prev_pyramid[-1], 2, ceil_mode=True))
            cur_pyramid.append(F.avg_pool2d(cur_pyramid[-1], 2, ceil_mode=True))
        flow: torch.Tensor | None = None
        for prev, cur in zip(reversed(prev_pyramid), reversed(cur_pyramid), strict=True):
            if flow is None:
                flow = prev.new_zeros(prev.shape[0], 2, *prev.shape[-2:])
            else:
                flow = resize_flow(flow, tuple(prev.shape[-2:]))
            for _ in range(self.iterations):
                flow = self._smoothed(flow + self._step(prev, cur, flow))
        assert flow is not None
        return flow

    def _smoothed(self, flow: torch.Tensor) -> torch.Tensor:
        if self.smooth == 0:
            return flow
        r = self.smooth
        return F.avg_pool2d(F.pad(flow, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)

    def _step(self, prev: torch.Tensor, cur: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """One Gauss-Newton update (N, 2, h, w) of backward flow, prev(p + flow) ~= cur(p)."""
        warped = F.grid_sample(
            prev, flow_to_grid(flow), mode="bilinear", padding_mode="border", align_corners=True
        )
        # Gradients of the mean image are symmetric in the two frames: converges in fewer steps.
        gx, gy = _spatial_gradients(0.5 * (warped + cur))
        error = warped - cur
        size = 2 * self.radius + 1
        terms = torch.cat((gx * gx, gx * gy, gy * gy, gx * error, gy * error), dim=1)
        sums = F.avg_pool2d(terms, size, stride=1, padding=self.radius, count_include_pad=False)
        a11, a12, a22, b1, b2 = sums.unbind(dim=1)
        a11 = a11 + self.regularization
        a22 = a22 + self.regularization
        det = a11 * a22 - a12 * a12
        du = -(a22 * b1 - a12 * b2) / det
        dv = -(a11 * b2 - a12 * b1) / det
        # Linearisation holds within about a pixel per level; larger steps overshoot.
        return torch.stack((du, dv), dim=1).clamp(-1.0, 1.0)


# flow_method -> factory(scale), one for each value of config.FLOW_METHODS (bind checks, at
# import), in its order.
FLOW_ESTIMATORS: dict[str, Callable[[float], FlowEstimator]] = FLOW_METHODS.bind({
    "dis": DISFlow,
    "farneback": FarnebackFlow,
    "torch": TorchFlow,
    "zero": lambda scale: ZeroFlow(),
})


def build_flow(method: str, scale: float = 0.5) -> FlowEstimator:
    """Make the estimator a `PipelineConfig.flow_method` names."""
    if method not in FLOW_ESTIMATORS:
        raise ValueError(f"unknown flow method {method!r}; choose from {sorted(FLOW_ESTIMATORS)}")
    return FLOW_ESTIMATORS[method](scale)


build_flow_estimator = build_flow  # the name earlier releases exported
