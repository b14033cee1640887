"""Streaming Accel: per-stream keyframe cache, keyframe policy, per-stage timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DEFAULT_PRESET, ModelConfig, PipelineConfig, preset
from .accel import AccelNet
from .checkpoint import load_checkpoint, resolve_checkpoint
from .fastpath import FastOps, FlowWorker, cuda_device_context, flow_can_overlap
from .flow import FlowEstimator, build_flow
from .warp import check_flow

STAGES = ("feature", "flow", "warp", "task", "update", "fusion", "output")


@dataclass
class SegmentationResult:
    """What one frame produced. `labels` is (H, W) uint8 at the input frame's size.

    `probabilities` (K, H, W) float32 only with `PipelineConfig.return_probabilities`;
    `max_probability` (H, W) float32, the per-pixel max class probability, only with
    `AccelSegmenter(return_max_probability=True)`: it is reduced on the device, so only H x W
    floats cross to the host instead of K x H x W."""

    labels: np.ndarray
    confidence: float
    is_keyframe: bool
    keyframe_age: int
    frame_index: int
    timings: dict[str, float]
    probabilities: np.ndarray | None = None
    reset_reason: str | None = None
    max_probability: np.ndarray | None = None


class StageTimer:
    """Wall-clock per stage in ms.

    With `sync=True` (the benchmark's breakdown mode) it synchronises the CUDA device before
    reading the clock, so each stage is billed its own kernels. The production path does not:
    a synchronise per stage would stall the launch queue seven times a frame. Unsynchronised
    stage times on CUDA measure the host side (launches) only; "total" still ends after the
    labels reach the host, so it is the true latency."""

    def __init__(self, device: torch.device, sync: bool = False) -> None:
        self._sync = sync and device.type == "cuda"
        self._device = device
        self.times = dict.fromkeys(STAGES, 0.0)
        self._start = self._now()

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._now()
        yield
        self.times[name] += (self._now() - start) * 1000.0

    def finish(self) -> dict[str, float]:
        self.times["total"] = (self._now() - self._start) * 1000.0
        return dict(self.times)


@dataclass
class KeyframeCache:
    """State carried between frames of one stream."""

    features: torch.Tensor | None = None  # float32 reference features warped to the last frame
    previous: Any = None  # previous frame, prepared for the flow estimator
    keyframe_index: int = -1
    frame_size: tuple[int, int] | None = None
    last_stamp: float | None = None
    keyframe_confidence: float = 1.0
    accumulated_flow: float = 0.0  # mean flow magnitude since the keyframe, input pixels
    force_keyframe: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """'auto' -> first CUDA device if present, else CPU; otherwise torch.device(name). A CUDA
    device always comes back with its index ('cuda' -> 'cuda:<current>')."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        # An explicit index: graphs, streams and tensors must all agree on one device.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def frame_to_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check a frame and view it as (1, 3, H, W) on the host, without converting it: an
    (H, W, 3) uint8 RGB array stays uint8 (a channels-last view of the array), a (3, H, W) float
    tensor in [0, 1] stays as it is. `upload_frame` converts on the target device."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image, got dtype {frame.dtype}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"empty image ({frame.shape[0]}x{frame.shape[1]})")
        if not frame.flags.writeable:
            frame = frame.copy()  # torch.from_numpy warns on read-only buffers (e.g. from bytes)
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)
    if frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(frame.shape)}")
    if frame.shape[1] == 0 or frame.shape[2] == 0:
        raise ValueError(f"empty image ({frame.shape[1]}x{frame.shape[2]})")
    # Only float tensors can hold NaN/inf; uint8 arrays skip this full-frame scan.
    if frame.is_floating_point() and not torch.isfinite(frame).all():
        raise ValueError("image contains NaN or infinite values")
    return frame.unsqueeze(0)


class FrameUploader:
    """Host frame (from `frame_to_tensor`) -> (1, 3, H, W) float32 in [0, 1] on `device`.

    uint8 frames cross the bus as uint8 (a quarter of the float bytes) and become float on the
    device. On CUDA they go through one page-locked staging buffer per frame size, so the copy
    is a true asynchronous DMA (`non_blocking` does nothing for pageable memory). The buffer is
    reused on the next frame, which is safe because `process` returns only after its labels
    reached the host, i.e. after this copy finished on the same stream. Float tensor frames are
    moved as they are."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._staging: torch.Tensor | None = None

    def __call__(self, host: torch.Tensor) -> torch.Tensor:
        if host.dtype != torch.uint8:
            return host.to(self.device, non_blocking=host.is_pinned()).float()
        hwc = host[0].permute(1, 2, 0)  # the array's own (H, W, 3) layout: contiguous
        if self.pinned:
            if self._staging is None or self._staging.shape != hwc.shape:
                self._staging = torch.empty(hwc.shape, dtype=torch.uint8, pin_memory=True)
            self._staging.copy_(hwc)
            hwc = self._staging.to(self.device, non_blocking=True)
        else:
            hwc = hwc.to(self.device)
        # (1, 3, H, W) with channels-last strides, as the permuted array view always had.
        return hwc.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


@dataclass
class FlowStep:
    """What the flow stage hands on: the current frame prepared for the estimator (kept for the
    next frame), the backward flow from the previous frame (None on keyframes without a
    previous frame), and the update branch output when `overlap_flow` computed it already."""

    prepared: Any = None
    flow: torch.Tensor | None = None
    early_update: tuple[torch.Tensor, torch.Tensor | None] | None = None


def upsample_labels(
    model: AccelNet, scores: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (1, K, h, w) float -> (labels (H, W) uint8, logits (1, K, H, W)) on the device.

    The logits are computed channels-last and reduced with `max(dim=1).indices`: the same
    labels as `upsample(...).argmax(dim=1)` (both keep the first maximum), but on a CPU the
    contiguous-format argmax over channels is a strided reduction that took ~22 ms of ~26 ms for
    11 classes at 256x512; channels-last upsampling + max takes ~5 ms."""
    logits = model.upsample(scores.contiguous(memory_format=torch.channels_last), size)
    labels = logits.max(dim=1).indices[0].to(torch.uint8)
    return labels, logits


class AccelSegmenter:
    """Runs Accel on one video stream, frame by frame.

    Keyframes (every `keyframe_interval` frames, or when an adaptive rule fires, or after a
    reset) run the reference branch and cache its features. Other frames warp the cache by the
    flow from the previous frame (incrementally, so warps compound as in the paper), score it
    with the reference head, and - in `accel` mode - fuse with the update branch.
    """

    def __init__(
        self,
        model: AccelNet,
        pipeline: PipelineConfig | None = None,
        flow: FlowEstimator | None = None,
        *,
        return_max_probability: bool = False,
        sync_stages: bool = False,
    ) -> None:
        """`return_max_probability`: fill `SegmentationResult.max_probability` (reduced on the
        device; what a scores topic needs). `sync_stages`: synchronise CUDA around every stage
        so `timings` is a true per-stage breakdown (benchmarks); off in production."""
        self.pipeline_config = pipeline or PipelineConfig()
        cfg = self.pipeline_config
        self.device = resolve_device(cfg.device)
        if cfg.mode in ("accel", "deeplab") and model.update is None:
            raise ValueError(f"mode {cfg.mode!r} needs a model with an update branch")
        self.model = model.to(self.device).eval()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.flow = flow or build_flow(cfg.flow_method, cfg.flow_scale)
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        # Network calls go through FastOps: the model's own methods unless torch_compile /
        # cuda_graphs ask for more (fixed here; see FastOps.notes for what is active).
        self._ops = FastOps(self.model, self.device, cfg.torch_compile, cfg.cuda_graphs)
        self._flow_worker = FlowWorker()  # its thread starts on first use of overlap_flow
        self._upload = FrameUploader(self.device)
        self.return_max_probability = return_max_probability
        self.sync_stages = sync_stages
        self.cache = KeyframeCache()
        self.frame_index = -1

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) frames are resized to: the pipeline's `input_size`, else the size the
        checkpoint was trained at, else None (frames go in at their own size)."""
        return self.pipeline_config.input_size or self.model.config.input_size

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def reset(self, reason: str | None = None) -> None:
        """Drop the keyframe cache; the next frame is a keyframe. A `reason` (e.g. a time gap
        the caller judged on frame arrival) is reported as the next result's reset_reason."""
        self.cache = KeyframeCache()
        if reason:
            self.cache.extra["reset_reason"] = reason

    @property
    def fast_path_notes(self) -> list[str]:
        """Which fast paths are active, or why a requested one fell back (human-readable)."""
        return list(self._ops.notes)

    def close(self) -> None:
        """Stop the overlap_flow worker thread, if it was started."""
        self._flow_worker.close()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        # A CUDA graph must not capture autocast's cached weight casts (freed on context exit).
        return torch.autocast(
            self.device.type,
            dtype=self._autocast_dtype,
            cache_enabled=not self.pipeline_config.cuda_graphs,
        )

    def _overlaps_flow(self) -> bool:
        """overlap_flow applies: accel mode (there is an update branch to hide the flow
        behind), a CPU estimator, and a previous frame to compute flow from."""
        cfg = self.pipeline_config
        return (
            cfg.overlap_flow
            and cfg.mode == "accel"
            and flow_can_overlap(self.flow)
            and self.cache.previous is not None
        )

    def _update_branch(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N_U on (1, 3, H, W): features (1, C_U, h, w) and, for score fusion, s_U."""
        update_features = self._ops.update_features(image)
        if self.model.fuses_features:
            return update_features, None
        return update_features, self._ops.update_scores(update_features)

    def _flow_beside_update(
        self, image: torch.Tensor, timer: StageTimer
    ) -> tuple[Any, torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
        """Flow in the worker thread while N_U runs here. Returns (prepared current frame,
        flow, update branch output). "flow" is billed the worker's own time, so with overlap
        the stages add up to more than "total"."""
        job = self._flow_worker.submit(self.flow, self.cache.previous, image)
        try:
            with timer.stage("update"):
                update = self._update_branch(image)
        finally:
            done = job.result()  # never leave the worker running into the next frame
        timer.times["flow"] += done.milliseconds
        return done.prepared, done.flow, update

    def _reset_reason(self, size: tuple[int, int], stamp: float | None) -> str | None:
        cache = self.cache
        if cache.frame_size is None:
            return None
        if cache.frame_size != size:
            return f"resolution changed from {cache.frame_size} to {size}"
        if stamp is not None and cache.last_stamp is not None:
            gap = stamp - cache.last_stamp
            if gap < 0:
                return f"time went backwards by {-gap:.3f} s"
            if gap > self.pipeline_config.max_time_gap:
                return f"time gap of {gap:.3f} s > max_time_gap"
        return None

    def _is_keyframe_due(self) -> bool:
        cfg, cache = self.pipeline_config, self.cache
        if cfg.mode in ("reference", "deeplab"):
            return cfg.mode == "reference"
        if cache.features is None or cache.force_keyframe:
            return True
        return self.frame_index - cache.keyframe_index >= cfg.keyframe_interval

    @torch.inference_mode()
    def process(
        self, frame: np.ndarray | torch.Tensor, stamp: float | None = None
    ) -> SegmentationResult:
        """Segment one frame: (H, W, 3) uint8 RGB (or (3, H, W) float). Returns labels at the
        frame's own size. Raises ValueError for malformed frames without touching the cache.

        Steps, each timed: flow (frames that warp) -> keyframe (N_R, cache) | warp and score
        (propagate the cache, s_R) -> fuse (N_U, fusion) -> output (upsample, labels). The
        host waits for the device once, when the labels come back (plus once mid-frame when an
        adaptive flow threshold must look at the flow)."""
        host = frame_to_tensor(frame)
        cfg, size = self.pipeline_config, (int(host.shape[-2]), int(host.shape[-1]))
        reset_reason = self._reset_reason(size, stamp)
        if reset_reason is not None:
            if self.cache.frame_size != size:
                self._ops.release()  # graphs captured for the old resolution
            self.reset()
        cache = self.cache
        reset_reason = reset_reason or cache.extra.pop("reset_reason", None)
        self.frame_index += 1
        timer = StageTimer(self.device, self.sync_stages)
        uses_flow = cfg.mode in ("accel", "dff")
        with cuda_device_context(self.device), self._autocast():
            image = self._prepare_image(host)
            keyframe = self._is_keyframe_due()
            step = self._flow_step(image, keyframe, timer) if uses_flow else FlowStep()
            motion = None
            if step.flow is not None:
                motion = step.flow.norm(dim=1).mean() / self._flow_to_input_scale(step.flow, image)
                threshold = cfg.adaptive_flow_threshold
                if threshold > 0 and cache.accumulated_flow + float(motion) > threshold:
                    keyframe = True  # too much motion: warped features are no longer trusted
            if cfg.mode == "deeplab":
                with timer.stage("update"):
                    scores = self._ops.update_scores(self._ops.update_features(image))
            elif keyframe:
                scores = self._keyframe_step(image, timer)
            else:
                assert step.flow is not None
                scores = self._warp_and_score_step(step.flow, image, timer)
                if cfg.mode == "accel":
                    scores = self._fuse_step(scores, image, step.early_update, timer)
            if uses_flow:
                cache.previous = step.prepared
            output = self._output_step(scores, size, timer)

        # The labels are on the host, so the device is idle: these reads cost no stall.
        confidence = float(output["confidence"])
        if uses_flow:
            if keyframe:
                cache.keyframe_confidence = confidence
            elif motion is not None:
                cache.accumulated_flow += float(motion)
            drop = cfg.adaptive_confidence_drop
            if drop > 0 and cache.keyframe_confidence - confidence > drop:
                cache.force_keyframe = True  # the next frame re-anchors on the reference net
        cache.frame_size = size
        cache.last_stamp = stamp
        age = 0 if keyframe or not uses_flow else self.frame_index - cache.keyframe_index
        return SegmentationResult(
            labels=output["labels"],
            confidence=confidence,
            is_keyframe=bool(keyframe),
            keyframe_age=age,
            frame_index=self.frame_index,
            timings=timer.finish(),
            probabilities=output["probabilities"],
            reset_reason=reset_reason,
            max_probability=output["max_probability"],
        )

    # -- the steps of process() ----------------------------------------------------------------
    def _prepare_image(self, host: torch.Tensor) -> torch.Tensor:
        """Host frame -> (1, 3, H', W') float on the device, resized to the network input size
        and in the requested memory format."""
        cfg = self.pipeline_config
        image = self._upload(host)
        size = self.input_size
        if size is not None and tuple(size) != tuple(image.shape[-2:]):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        if cfg.channels_last:
            return image.contiguous(memory_format=torch.channels_last)
        return image

    def _flow_step(self, image: torch.Tensor, keyframe: bool, timer: StageTimer) -> FlowStep:
        """Prepare the frame for the flow estimator and, on a frame that will warp, estimate
        the backward flow from the previous frame (beside N_U with overlap_flow)."""
        previous = self.cache.previous
        if keyframe or previous is None:
            with timer.stage("flow"):
                return FlowStep(prepared=self.flow.prepare(image))
        if self._overlaps_flow():
            prepared, flow, early_update = self._flow_beside_update(image, timer)
            check_flow(flow)
            return FlowStep(prepared, flow, early_update)
        with timer.stage("flow"):
            prepared = self.flow.prepare(image)
            flow = self.flow.estimate(previous, prepared).float()
            check_flow(flow)
        return FlowStep(prepared, flow)

    def _keyframe_step(self, image: torch.Tensor, timer: StageTimer) -> torch.Tensor:
        """N_R on the frame: s_R, and (flow modes) a fresh float32 cache.

        The cache is float32 under any autocast precision, so the warp, N_task and their CUDA
        graphs / compiled kernels always see one dtype (keyframe or not)."""
        cfg, cache = self.pipeline_config, self.cache
        with timer.stage("feature"):
            features = self._ops.reference_features(image).float()
        with timer.stage("task"):
            scores = self._ops.reference_scores(features)
        if cfg.mode in ("accel", "dff"):
            cache.features = features
            cache.keyframe_index = self.frame_index
            cache.accumulated_flow = 0.0
            cache.force_keyframe = False
        return scores

    def _warp_and_score_step(
        self, flow: torch.Tensor, image: torch.Tensor, timer: StageTimer
    ) -> torch.Tensor | None:
        """Move the cache by the flow (`AccelNet.propagate`) and score it with N_task: s_R.
        Feature fusion scores the fused features instead, so it gets None here."""
        cache = self.cache
        assert cache.features is not None
        with timer.stage("warp"):
            cache.features = self.model.propagate(
                cache.features, flow, self.pipeline_config.out_of_frame,
                image_size=(int(image.shape[-2]), int(image.shape[-1])),
            )
        if self.pipeline_config.mode == "accel" and self.model.fuses_features:
            return None
        with timer.stage("task"):
            return self._ops.reference_scores(cache.features)

    def _fuse_step(
        self,
        reference_scores: torch.Tensor | None,
        image: torch.Tensor,
        early_update: tuple[torch.Tensor, torch.Tensor | None] | None,
        timer: StageTimer,
    ) -> torch.Tensor:
        """N_U on the frame (unless overlap_flow ran it already) and the fusion (`AccelNet.fuse`)
        of the warped reference with it."""
        with timer.stage("update"):
            update_features, update_scores = early_update or self._update_branch(image)
        with timer.stage("fusion"):
            return self._ops.fuse(
                self.cache.features, update_features, reference_scores, update_scores
            )

    def _output_step(
        self, scores: torch.Tensor, size: tuple[int, int], timer: StageTimer
    ) -> dict[str, Any]:
        """Low-resolution scores (1, K, h, w) -> labels (H, W) uint8 on the host, the mean max
        probability (a device scalar) and, if asked for, probabilities / max probability
        reduced on the device before they cross to the host."""
        cfg = self.pipeline_config
        with timer.stage("output"):
            scores = scores.float()
            confidence = scores.softmax(dim=1).amax(dim=1).mean()
            labels, logits = upsample_labels(self.model, scores, size)
            probabilities = max_probability = None
            if cfg.return_probabilities or self.return_max_probability:
                full = logits.softmax(dim=1)[0]
                if self.return_max_probability:
                    max_probability = full.amax(dim=0).cpu().numpy()
                if cfg.return_probabilities:
                    probabilities = full.contiguous().cpu().numpy()
            labels_host = labels.cpu().numpy()  # the one wait for the device
        return {
            "labels": labels_host,
            "confidence": confidence,
            "probabilities": probabilities,
            "max_probability": max_probability,
        }

    @staticmethod
    def _flow_to_input_scale(flow: torch.Tensor, image: torch.Tensor) -> float:
        """Ratio flow-map width / input width, to express flow magnitude in input pixels."""
        return flow.shape[-1] / image.shape[-1]


def build_model(model: str | ModelConfig, checkpoint: str | None = None) -> AccelNet:
    """A model from a checkpoint ("default" = shipped, a path) or random weights (None/"none").
    A checkpoint carries its own config, which wins over `model`."""
    path = resolve_checkpoint(checkpoint)
    if path is not None:
        net, _ = load_checkpoint(path)
        return net
    config = preset(model) if isinstance(model, str) else model
    return AccelNet(config)


def build_segmenter(
    model: str | ModelConfig = DEFAULT_PRESET,
    pipeline: PipelineConfig | None = None,
    checkpoint: str | None = None,
    *,
    return_max_probability: bool = False,
) -> AccelSegmenter:
    """One-call construction used by the node and the tools. `return_max_probability` is
    what a scores topic needs (see `AccelSegmenter`); it can also be switched live through the
    segmenter's attribute of that name."""
    return AccelSegmenter(
        build_model(model, checkpoint), pipeline, return_max_probability=return_max_probability
    )
