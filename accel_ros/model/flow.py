"""Optical flow estimators behind one interface.

Every estimator returns *backward* flow (current -> previous, see `warp.py`) as a tensor
(N, 2, h, w). It may be computed at a lower resolution than the frames (cheaper; features live at
1/16 anyway); the vectors are in pixels of the returned map, so `resize_flow` brings it to any
resolution correctly.

Streaming use: `prepare(frame)` turns a frame into the estimator's own representation (grey
uint8 images for OpenCV, the tensor for the network), so a pipeline prepares each frame once
and keeps the previous one; `estimate(prev_prepared, cur_prepared)` computes the flow.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FlowEstimator:
    """Base class. `__call__(previous, current)` with (N, 3, H, W) float RGB in [0, 1]."""

    name = "base"
    learnable = False

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


def downscale_frame(frame: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, round(H * scale), round(W * scale)) float, at least 8 px a side;
    the working resolution of the classical flow estimators."""
    if frame.dim() != 4 or frame.shape[1] != 3:
        raise ValueError(f"flow expects (N, 3, H, W) frames, got {tuple(frame.shape)}")
    height, width = frame.shape[-2:]
    size = (max(8, round(height * scale)), max(8, round(width * scale)))
    small = frame.detach().float()
    if size != (height, width):
        small = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return small


class _OpenCVFlow(FlowEstimator):
    """Shared plumbing of the OpenCV estimators: grey uint8 at `scale` of the frame size."""

    def __init__(self, scale: float = 0.5) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        self.scale = scale

    def prepare(self, frame: torch.Tensor) -> Any:
        small = downscale_frame(frame, self.scale)
        grey = 0.299 * small[:, 0] + 0.587 * small[:, 1] + 0.114 * small[:, 2]
        grey = (grey.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [np.ascontiguousarray(g) for g in grey], frame.device

    def estimate(self, previous: Any, current: Any) -> torch.Tensor:
        prev_images, _ = previous
        cur_images, device = current
        flows = [self._flow(cur, prev) for prev, cur in zip(prev_images, cur_images, strict=True)]
        stacked = np.stack(flows).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(stacked)).to(device)

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


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class FlowNetLite(nn.Module):
    """A small FlowNet-S style network, trainable end to end with the rest of Accel.

    Input: previous, current (N, 3, H, W) float RGB in [0, 1]. Output: backward flow
    (N, 2, ceil(H/4), ceil(W/4)) in pixels of that 1/4-resolution map. The last layer starts at
    zero, so an untrained FlowNetLite predicts zero flow (DFF then reuses keyframe features)
    rather than random displacements.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv(6, w, 2), _conv(w, w))  # 1/2
        self.enc2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))  # 1/4
        self.enc3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))  # 1/8
        self.enc4 = nn.Sequential(_conv(3 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 1/16
        self.dec3 = _conv(4 * w + 3 * w, 2 * w)
        self.dec2 = _conv(2 * w + 2 * w, 2 * w)
        self.predict = nn.Conv2d(2 * w, 2, 3, padding=1)
        nn.init.zeros_(self.predict.weight)
        nn.init.zeros_(self.predict.bias)

    def forward(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        x = torch.cat((current - 0.5, previous - 0.5), dim=1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        d3 = self.dec3(torch.cat((F.interpolate(e4, size=e3.shape[-2:], mode="bilinear",
                                                align_corners=False), e3), dim=1))
        d2 = self.dec2(torch.cat((F.interpolate(d3, size=e2.shape[-2:], mode="bilinear",
                                                align_corners=False), e2), dim=1))
        # Predicting in 1/4-resolution pixels keeps the regression target small.
        return self.predict(d2)


class LearnedFlow(FlowEstimator):
    """Adapter that runs a `FlowNetLite` (usually the one inside `AccelNet`) as an estimator."""

    name = "flownet"
    learnable = True

    def __init__(self, network: FlowNetLite) -> None:
        self.network = network

    def prepare(self, frame: torch.Tensor) -> Any:
        return frame

    def estimate(self, previous: Any, current: Any) -> torch.Tensor:
        return self.network(previous, current)


def build_flow_estimator(
    method: str, scale: float = 0.5, network: FlowNetLite | None = None
) -> FlowEstimator:
    """Make the estimator a `PipelineConfig.flow_method` names."""
    if method == "dis":
        return DISFlow(scale)
    if method == "farneback":
        return FarnebackFlow(scale)
    if method == "zero":
        return ZeroFlow()
    if method == "flownet":
        if network is None:
            raise ValueError(
                "flow_method 'flownet' needs a model built with flow_net=True "
                "(its checkpoint holds the trained flow network)"
            )
        return LearnedFlow(network)
    raise ValueError(f"unknown flow method {method!r}")
