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

from ..config import ModelConfig, PipelineConfig, preset
from .accel import AccelNet
from .checkpoint import load_checkpoint, resolve_checkpoint
from .fastpath import FastOps, FlowWorker, build_flow, flow_can_overlap
from .flow import FlowEstimator
from .warp import check_flow, resize_flow, warp

STAGES = ("feature", "flow", "warp", "task", "update", "fusion", "output")


@dataclass
class SegmentationResult:
    """What one frame produced. `labels` is (H, W) uint8 at the input frame's size."""

    labels: np.ndarray
    confidence: float
    is_keyframe: bool
    keyframe_age: int
    frame_index: int
    timings: dict[str, float]
    probabilities: np.ndarray | None = None
    reset_reason: str | None = None


class StageTimer:
    """Wall-clock per stage in ms. On CUDA it synchronises before reading the clock, otherwise
    asynchronous kernel launches would be billed to whichever stage happens to wait."""

    def __init__(self, device: torch.device) -> None:
        self._sync = device.type == "cuda"
        self._device = device
        self.times = dict.fromkeys(STAGES, 0.0)
        self._start = time.perf_counter()

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

    features: torch.Tensor | None = None  # reference features warped to the last frame
    previous: Any = None  # previous frame, prepared for the flow estimator
    keyframe_index: int = -1
    frame_size: tuple[int, int] | None = None
    last_stamp: float | None = None
    keyframe_confidence: float = 1.0
    accumulated_flow: float = 0.0  # mean flow magnitude since the keyframe, input pixels
    force_keyframe: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """'auto' -> first CUDA device if present, else CPU; otherwise torch.device(name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def frame_to_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array, or (3, H, W) float tensor in [0, 1] -> (1, 3, H, W) float."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image, got dtype {frame.dtype}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"empty image ({frame.shape[0]}x{frame.shape[1]})")
        if not frame.flags.writeable:
            frame = frame.copy()  # torch.from_numpy warns on read-only buffers (e.g. from bytes)
        tensor = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        return tensor.unsqueeze(0).float().div_(255.0)
    if frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(frame.shape)}")
    if frame.shape[1] == 0 or frame.shape[2] == 0:
        raise ValueError(f"empty image ({frame.shape[1]}x{frame.shape[2]})")
    # Only float tensors can hold NaN/inf; uint8 arrays skip this full-frame scan.
    if frame.is_floating_point() and not torch.isfinite(frame).all():
        raise ValueError("image contains NaN or infinite values")
    return frame.unsqueeze(0).float()


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
    ) -> None:
        self.pipeline_config = pipeline or PipelineConfig()
        cfg = self.pipeline_config
        self.device = resolve_device(cfg.device)
        if cfg.mode in ("accel", "deeplab") and model.update is None:
            raise ValueError(f"mode {cfg.mode!r} needs a model with an update branch")
        self.model = model.to(self.device).eval()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.flow = flow or build_flow(cfg.flow_method, cfg.flow_scale, model.flow_net)
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        # Network calls go through FastOps: the model's own methods unless torch_compile /
        # cuda_graphs ask for more (fixed here; see FastOps.notes for what is active).
        self._ops = FastOps(self.model, self.device, cfg.torch_compile, cfg.cuda_graphs)
        self._flow_worker = FlowWorker()  # its thread starts on first use of overlap_flow
        self.cache = KeyframeCache()
        self.frame_index = -1

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def reset(self) -> None:
        """Drop the keyframe cache; the next frame is a keyframe."""
        self.cache = KeyframeCache()

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
        frame's own size. Raises ValueError for malformed frames without touching the cache."""
        image = frame_to_tensor(frame)
        cfg, cache = self.pipeline_config, self.cache
        size = (int(image.shape[-2]), int(image.shape[-1]))
        reset_reason = self._reset_reason(size, stamp)
        if reset_reason is not None:
            self.reset()
            cache = self.cache
        self.frame_index += 1
        timer = StageTimer(self.device)
        image = image.to(self.device, non_blocking=True)
        if cfg.input_size is not None and tuple(cfg.input_size) != size:
            image = F.interpolate(image, size=cfg.input_size, mode="bilinear", align_corners=False)
        if cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)

        keyframe = self._is_keyframe_due()
        uses_flow = cfg.mode in ("accel", "dff")
        with self._autocast():
            current_prepared = None
            early_update = None  # N_U output computed beside the flow (overlap_flow)
            if uses_flow and not keyframe and self._overlaps_flow():
                current_prepared, flow, early_update = self._flow_beside_update(image, timer)
                check_flow(flow)
            elif uses_flow:
                with timer.stage("flow"):
                    current_prepared = self.flow.prepare(image)
            if not keyframe and uses_flow:
                if early_update is None:
                    with timer.stage("flow"):
                        flow = self.flow.estimate(cache.previous, current_prepared).float()
                        check_flow(flow)
                magnitude = float(flow.norm(dim=1).mean()) / self._flow_to_input_scale(flow, image)
                cache.accumulated_flow += magnitude
                threshold = cfg.adaptive_flow_threshold
                if threshold > 0 and cache.accumulated_flow > threshold:
                    keyframe = True  # too much motion: warped features are no longer trusted
            if keyframe and cfg.mode != "deeplab":
                with timer.stage("feature"):
                    features = self._ops.reference_features(image)
                with timer.stage("task"):
                    scores = self._ops.reference_scores(features)
                if uses_flow:
                    cache.features = features
                    cache.keyframe_index = self.frame_index
                    cache.accumulated_flow = 0.0
                    cache.force_keyframe = False
            elif cfg.mode == "deeplab":
                with timer.stage("update"):
                    scores = self._ops.update_scores(self._ops.update_features(image))
            else:
                with timer.stage("warp"):
                    flow = resize_flow(flow, cache.features.shape[-2:])
                    cache.features = warp(cache.features, flow.to(cache.features.dtype),
                                          cfg.out_of_frame)
                if cfg.mode == "dff" or self.model.fuses_features:
                    with timer.stage("task" if cfg.mode == "dff" else "update"):
                        if cfg.mode == "dff":
                            scores = self._ops.reference_scores(cache.features)
                        elif early_update is not None:
                            update_features = early_update[0]
                        else:
                            update_features = self._ops.update_features(image)
                    if cfg.mode != "dff":
                        with timer.stage("fusion"):
                            scores = self._ops.fuse(cache.features, update_features)
                else:
                    with timer.stage("task"):
                        reference_scores = self._ops.reference_scores(cache.features)
                    with timer.stage("update"):
                        if early_update is not None:
                            update_features, update_scores = early_update
                        else:
                            update_features, update_scores = self._update_branch(image)
                    with timer.stage("fusion"):
                        scores = self._ops.fuse(
                            cache.features, update_features, reference_scores, update_scores
                        )
            if uses_flow:
                cache.previous = current_prepared
            with timer.stage("output"):
                scores = scores.float()
                low_res_probs = scores.softmax(dim=1)
                confidence = float(low_res_probs.amax(dim=1).mean())
                logits = self.model.upsample(scores, size)
                labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
                probabilities = None
                if cfg.return_probabilities:
                    probabilities = logits.softmax(dim=1)[0].cpu().numpy().astype(np.float32)

        if uses_flow:
            if keyframe:
                cache.keyframe_confidence = confidence
            drop = cfg.adaptive_confidence_drop
            if drop > 0 and cache.keyframe_confidence - confidence > drop:
                cache.force_keyframe = True  # the next frame re-anchors on the reference net
        cache.frame_size = size
        cache.last_stamp = stamp
        age = 0 if keyframe or not uses_flow else self.frame_index - cache.keyframe_index
        return SegmentationResult(
            labels=labels,
            confidence=confidence,
            is_keyframe=bool(keyframe),
            keyframe_age=age,
            frame_index=self.frame_index,
            timings=timer.finish(),
            probabilities=probabilities,
            reset_reason=reset_reason,
        )

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
    model: str | ModelConfig = "camvid34",
    pipeline: PipelineConfig | None = None,
    checkpoint: str | None = None,
) -> AccelSegmenter:
    """One-call construction used by the node and the tools."""
    return AccelSegmenter(build_model(model, checkpoint), pipeline)
