"""Switchable fast paths of the streaming pipeline (`PipelineConfig` fields in brackets).

- `FastOps` [torch_compile, cuda_graphs]: the network calls `AccelSegmenter` makes, either the
  model's own bound methods (plain path), `torch.compile`d, and/or replayed from CUDA graphs
  captured once per input shape. Every fast path falls back to the plain call with a warning
  that says why (no CUDA device, compiler failure, capture failure) instead of failing a frame.
- `FlowWorker` [overlap_flow]: one background thread that computes CPU optical flow (OpenCV
  releases the GIL) while the main thread runs the update branch, which does not need the flow.
- `TorchFlow` [flow_method="torch"]: classical coarse-to-fine Lucas-Kanade flow in torch, so a
  CUDA pipeline never copies frames to the host for flow and needs no trained weights.

Nothing here changes numbers on the plain path: with every switch off `FastOps` hands out the
model's methods unchanged.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .flow import FlowEstimator, FlowNetLite, build_flow_estimator, downscale_frame
from .warp import flow_to_grid, resize_flow

# The calls AccelSegmenter makes on AccelNet, in the order of a non-key frame.
OP_NAMES = ("reference_features", "reference_scores", "update_features", "update_scores", "fuse")
# The fixed-shape per-frame path of non-key frames; keyframes (the big N_R) stay eager so the
# graphs' private memory pools hold only the cheap branch's activations.
GRAPHED_OPS = ("reference_scores", "update_features", "update_scores", "fuse")
# Estimators that run on the CPU through OpenCV, which releases the GIL: worth a thread.
OVERLAPPABLE_FLOWS = ("dis", "farneback")


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class CompiledCall:
    """`torch.compile(fn)` that falls back to `fn` for good if compilation fails.

    A failure of the compiled call is only blamed on the compiler when the eager call then
    succeeds; an error the eager call raises too (a bad input) propagates unchanged and leaves
    the compiled path enabled.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        backend: str | Callable[..., Any] = "inductor",
        mode: str | None = None,
    ) -> None:
        self.name = name
        self.eager = fn
        # dynamic=False: the stream's frame size is fixed, so one specialised graph per shape.
        self.compiled = torch.compile(fn, backend=backend, mode=mode, dynamic=False)
        self.failure: str | None = None

    def __call__(self, *args: Any) -> Any:
        if self.failure is None:
            try:
                return self.compiled(*args)
            except Exception as error:  # dynamo/inductor raise many types; judged below
                result = self.eager(*args)  # raises again if the input itself was bad
                # Dynamo puts the real cause on later lines of its message: keep them all.
                self.failure = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                _warn(f"torch.compile of {self.name} failed ({self.failure}); running eagerly")
                return result
        return self.eager(*args)


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor | None, ...]
    outputs: Any  # tensor or tuple of tensors


class CudaGraphCall:
    """Replays `fn(*tensors)` from a CUDA graph captured on first use of each input signature
    (shapes, dtypes, strides, device; None arguments are part of the signature).

    Inputs are copied into static buffers before each replay and outputs are cloned after it,
    so callers may keep results across frames. Autocast inside a capture must run with
    `cache_enabled=False` (`AccelSegmenter` does so when cuda_graphs is on), otherwise the graph
    would point at cast weights that are freed when the autocast context exits.
    """

    def __init__(self, fn: Callable[..., Any], name: str, warmup: int = 3) -> None:
        self.fn = fn
        self.name = name
        self.warmup = warmup
        self._graphs: dict[tuple, _Captured | None] = {}  # None: capture failed, run eagerly

    @staticmethod
    def _signature(args: tuple[torch.Tensor | None, ...]) -> tuple:
        return tuple(
            None if a is None else (tuple(a.shape), a.dtype, tuple(a.stride()), str(a.device))
            for a in args
        )

    @property
    def captured_shapes(self) -> int:
        """How many input signatures have a live graph."""
        return sum(entry is not None for entry in self._graphs.values())

    def __call__(self, *args: torch.Tensor | None) -> Any:
        if any(a is not None and a.device.type != "cuda" for a in args):
            return self.fn(*args)
        key = self._signature(args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        entry = self._graphs[key]
        if entry is None:
            return self.fn(*args)
        for static, arg in zip(entry.inputs, args, strict=True):
            if static is not None:
                static.copy_(arg)
        entry.graph.replay()
        if isinstance(entry.outputs, torch.Tensor):
            return entry.outputs.clone()
        return tuple(out.clone() for out in entry.outputs)

    def _capture(self, args: tuple[torch.Tensor | None, ...]) -> _Captured | None:
        try:
            inputs = tuple(
                None
                if a is None
                else torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
                for a in args
            )
            for static, arg in zip(inputs, args, strict=True):
                if static is not None:
                    static.copy_(arg)
            # Warm-up on a side stream (cuDNN autotuning, lazy init) must precede capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the overlap_flow worker may copy frames to/from the GPU on its own
            # stream while this thread captures; "global" would reject those calls.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.fn(*inputs)
            return _Captured(graph, inputs, outputs)
        except Exception as error:  # capture fails for ops that sync or allocate on the host
            _warn(f"CUDA graph capture of {self.name} failed ({error}); running it eagerly")
            return None


class FastOps:
    """The network calls of `AccelSegmenter` (names in `OP_NAMES`) with the requested fast
    paths applied. `notes` says, in words, which fast paths are active or why one is not."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        torch_compile: bool = False,
        cuda_graphs: bool = False,
        compile_backend: str | Callable[..., Any] = "inductor",
        compile_mode: str | None = None,
    ) -> None:
        self.notes: list[str] = []
        graphs = cuda_graphs and device.type == "cuda" and torch.cuda.is_available()
        if cuda_graphs and not graphs:
            message = (
                f"cuda_graphs is on but the device is {device}: CUDA graphs need a CUDA device, "
                "so the per-frame path runs eagerly"
            )
            self.notes.append(message)
            _warn(message)
        elif graphs:
            self.notes.append(
                "CUDA graphs for the non-key-frame path ("
                + ", ".join(GRAPHED_OPS)
                + "), captured once per input shape"
            )
        if torch_compile:
            self.notes.append(f"torch.compile (backend={compile_backend}, mode={compile_mode})")
        for name in OP_NAMES:
            fn: Callable[..., Any] = getattr(model, name)
            if torch_compile:
                fn = CompiledCall(fn, name, compile_backend, compile_mode)
            if graphs and name in GRAPHED_OPS:
                fn = CudaGraphCall(fn, name)
            setattr(self, name, fn)

    # Declared for type checkers; bound in __init__.
    reference_features: Callable[[torch.Tensor], torch.Tensor]
    reference_scores: Callable[[torch.Tensor], torch.Tensor]
    update_features: Callable[[torch.Tensor], torch.Tensor]
    update_scores: Callable[[torch.Tensor], torch.Tensor]
    fuse: Callable[..., torch.Tensor]


@dataclass
class FlowJob:
    """What the worker thread hands back: the prepared current frame (for the next frame's
    flow), backward flow (N, 2, h, w) float32 on the estimator's device, and its cost in ms."""

    prepared: Any
    flow: torch.Tensor
    milliseconds: float


def flow_can_overlap(estimator: FlowEstimator) -> bool:
    """True for CPU (OpenCV) estimators, which release the GIL and so gain from a thread.
    Learned or torch flow would only compete with the update branch for the same device."""
    return not estimator.learnable and estimator.name in OVERLAPPABLE_FLOWS


class FlowWorker:
    """One lazily started background thread for optical flow (used with `overlap_flow`).

    On a non-key frame the update branch needs only the current image, so the main thread runs
    it while this thread runs `prepare` + `estimate`. One job at a time: the caller collects a
    job's result before submitting the next, so the estimator is never used concurrently.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, estimator: FlowEstimator, previous: Any, image: torch.Tensor) -> Future:
        """Start flow from `previous` (prepared) to `image` (1, 3, H, W); returns a Future of
        `FlowJob`."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accel-flow")
        return self._executor.submit(_flow_job, estimator, previous, image)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _flow_job(estimator: FlowEstimator, previous: Any, image: torch.Tensor) -> FlowJob:
    # Grad mode is thread-local: the worker needs its own inference_mode.
    with torch.inference_mode():
        start = time.perf_counter()
        prepared = estimator.prepare(image)
        flow = estimator.estimate(previous, prepared).float()
        return FlowJob(prepared, flow, (time.perf_counter() - start) * 1000.0)


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
    textureless regions keep the coarser estimate instead of amplifying noise. Output: backward
    flow (N, 2, h, w) in pixels of the scaled map, like every `FlowEstimator`.
    """

    name = "torch"

    def __init__(
        self,
        scale: float = 0.5,
        levels: int = 5,
        iterations: int = 3,
        radius: int = 3,
        regularization: float = 1e-4,
    ) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        if levels < 1 or iterations < 1 or radius < 1:
            raise ValueError("levels, iterations and radius must all be >= 1")
        self.scale = scale
        self.levels = levels
        self.iterations = iterations
        self.radius = radius
        self.regularization = regularization

    def prepare(self, frame: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> grey (N, 1, h, w) float32 on the same device."""
        small = downscale_frame(frame, self.scale)
        weights = small.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (small * weights).sum(dim=1, keepdim=True).contiguous()

    def estimate(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if previous.shape != current.shape:
            raise ValueError(
                f"flow needs frames of one size: {tuple(previous.shape)} vs {tuple(current.shape)}"
            )
        prev_pyramid, cur_pyramid = [previous.float()], [current.float()]
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
                flow = flow + self._step(prev, cur, flow)
        assert flow is not None
        return flow

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


def build_flow(
    method: str, scale: float = 0.5, network: FlowNetLite | None = None
) -> FlowEstimator:
    """`build_flow_estimator` plus the "torch" method defined here."""
    if method == "torch":
        return TorchFlow(scale)
    return build_flow_estimator(method, scale, network)
