"""Streaming Accel: per-stream keyframe caches, keyframe policy, batched inference over
streams, per-stage timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import BACKENDS, DEFAULT_PRESET, MODES, ModelConfig, PipelineConfig
from ..deploy.auto import resolve_backend
from ..deploy.backends import build_networks
from ..deploy.runtimes import RUNTIMES
from ..model.accel import AccelNet
from ..model.checkpoint import load_model_or_preset
from ..model.flow import FlowEstimator, build_flow
from ..model.warp import check_flow, mean_flow_magnitude
from .ages import NOMINAL_FRAME_TIME_S, StampCheck
from .backend_info import BackendInfo, backend_info
from .fastpath import AUTOCAST_DTYPES, FastOps, FlowWorker, cuda_device_context, flow_can_overlap
from .framing import IGNORE_LABEL, Canvas, canvas, canvas_to_frame, frame_to_canvas
from .labels import LabelUpsampler, class_argmax
from .timegaps import StampGapMonitor

STAGES = ("feature", "flow", "warp", "task", "update", "fusion", "output")
# The stream `AccelSegmenter.process` uses when none is named.
DEFAULT_STREAM = "default"


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
    stream: str = DEFAULT_STREAM
    batch_size: int = 1  # frames in the batch; `timings` are the batch's
    # Why the frame's stamp could not time its keyframe age (stream/ages.py); None when it did.
    stamp_note: str | None = None


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

    # float32 reference map warped to the last frame: N_feat features (N, C_R, h, w), or the
    # scores s_R (N, K, h, w) where warping them is exact (`AccelNet.warps_scores`).
    features: torch.Tensor | None = None
    holds_scores: bool = False
    previous: Any = None  # previous frame, prepared for the flow estimator
    keyframe_index: int = -1
    keyframe_stamp: float | None = None  # seconds; None when the keyframe had no stamp
    frame_size: tuple[int, int] | None = None
    keyframe_confidence: float = 1.0
    accumulated_flow: float = 0.0  # mean flow magnitude since the keyframe, input pixels
    force_keyframe: bool = False
    # Frames the interval after this keyframe is shortened by (staggered streams; 0 after).
    interval_offset: int = 0
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
    device. On CUDA they go through a page-locked staging buffer, so the copy is a true
    asynchronous DMA (`non_blocking` does nothing for pageable memory). Each frame of a batch
    has its own buffer (`slot` = its place in the batch): the copies are still in flight while
    the next frame is staged. A buffer is reused by the next batch, which is safe because
    `process_batch` returns only after its labels reached the host, i.e. after these copies
    finished on the same stream. Float tensor frames are moved as they are."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._staging: dict[int, torch.Tensor] = {}  # slot -> pinned (H, W, 3) uint8

    def staging(self, slot: int = 0) -> torch.Tensor | None:
        """The page-locked buffer of batch slot `slot` (None before its first CUDA frame)."""
        return self._staging.get(slot)

    def __call__(self, host: torch.Tensor, slot: int = 0) -> torch.Tensor:
        if host.dtype != torch.uint8:
            return host.to(self.device, non_blocking=host.is_pinned()).float()
        hwc = host[0].permute(1, 2, 0)  # the array's own (H, W, 3) layout: contiguous
        if self.pinned:
            staging = self._staging.get(slot)
            if staging is None or staging.shape != hwc.shape:
                staging = self._staging[slot] = torch.empty(
                    hwc.shape, dtype=torch.uint8, pin_memory=True
                )
            staging.copy_(hwc)
            hwc = staging.to(self.device, non_blocking=True)
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
    """Scores (N, K, h, w) float -> (labels (N, H, W) uint8, logits (N, K, H, W)) on the
    device. The logits come out channels-last, so `class_argmax` reduces them without a
    copy."""
    logits = model.upsample(scores.contiguous(memory_format=torch.channels_last), size)
    return class_argmax(logits), logits


@dataclass(frozen=True)
class StreamFrame:
    """One frame of one stream, for `AccelSegmenter.process_batch`: (H, W, 3) uint8 RGB (or
    (3, H, W) float in [0, 1]) and its header time in seconds (None = unknown)."""

    stream: str
    frame: np.ndarray | torch.Tensor
    stamp: float | None = None


@dataclass
class StreamState:
    """Everything one stream carries between its frames: its keyframe cache, its own frame
    count, its stamps (`gaps`, the time-gap rule; a cache reset keeps them; `gaps_on_arrival`
    once a caller judges them itself through `note_arrival`) and where its keyframes sit
    relative to stream 0's (`phase`, a fraction of the keyframe interval; see
    `AccelSegmenter.configure_streams`)."""

    cache: KeyframeCache = field(default_factory=KeyframeCache)
    gaps: StampGapMonitor = field(default_factory=StampGapMonitor)
    gaps_on_arrival: bool = False
    frame_index: int = -1
    phase: float = 0.0
    stamps: StampCheck = field(default_factory=StampCheck)  # for keyframe ages (ages.py)


@dataclass(eq=False)
class _Job:
    """One frame on its way through `process_batch`."""

    name: str
    state: StreamState
    host: torch.Tensor  # (1, 3, H, W) as `frame_to_tensor` returns it
    stamp: float | None
    reset_reason: str | None
    image: torch.Tensor | None = None  # (1, 3, H', W') on the device, network input size
    pixels: torch.Tensor | None = None  # `host`, where the image networks take it as it is
    keyframe: bool = False
    step: FlowStep = field(default_factory=FlowStep)
    motion: torch.Tensor | None = None  # mean flow magnitude, input pixels (device scalar)
    scores: torch.Tensor | None = None  # (1, K, h, w)
    stamp_note: str | None = None  # why `stamp` is None although the frame had one, or none

    @property
    def size(self) -> tuple[int, int]:
        return int(self.host.shape[-2]), int(self.host.shape[-1])

    @property
    def network_input(self) -> torch.Tensor:
        """What the image networks (N_R, N_U) take: the pixels where they may, else `image`."""
        return self.pixels if self.pixels is not None else self.image


def _batch_key(args: tuple[torch.Tensor | None, ...]) -> tuple:
    return tuple(None if a is None else (tuple(a.shape[1:]), a.dtype, a.device) for a in args)


def _split(output: Any, index: int) -> Any:
    if output is None:
        return None
    if isinstance(output, torch.Tensor):
        return output[index : index + 1]
    return tuple(_split(part, index) for part in output)


def run_batched(
    fn: Callable[..., Any],
    inputs: Sequence[tuple[torch.Tensor | None, ...]],
    keys: Sequence[Hashable] | None = None,
) -> list[Any]:
    """`fn` once per group of argument tuples whose tensors agree in everything but the batch
    size (and whose `keys` are equal), on their concatenation along dim 0; the outputs (tensor,
    tuple of tensors, None entries allowed) are split back into one per input, in order. With
    `keys`, the group's key is passed to `fn` as a last argument.

    Frames of several streams resized to one network input size form one group, so each
    network runs once per batch instead of once per stream."""
    groups: dict[tuple, list[int]] = {}
    for index, args in enumerate(inputs):
        extra = keys[index] if keys is not None else None
        groups.setdefault((_batch_key(args), extra), []).append(index)
    results: list[Any] = [None] * len(inputs)
    for members in groups.values():
        extra = () if keys is None else (keys[members[0]],)
        if len(members) == 1:
            results[members[0]] = fn(*inputs[members[0]], *extra)
            continue
        columns = zip(*(inputs[i] for i in members), strict=True)
        joined = tuple(None if parts[0] is None else torch.cat(parts) for parts in columns)
        output = fn(*joined, *extra)
        for position, index in enumerate(members):
            results[index] = _split(output, position)
    return results


class AccelSegmenter:
    """Runs Accel on one or several video streams, frame by frame.

    Keyframes (every `keyframe_interval` frames, or when an adaptive rule fires, or after a
    reset) run the reference branch and cache its features. Other frames warp the cache by the
    flow from the previous frame (incrementally, so warps compound as in the paper), score it
    with the reference head, and - in `accel` mode - fuse with the update branch.

    Every stream (named; `process` uses `DEFAULT_STREAM`) has its own cache, frame count,
    resolution and time-gap state. `process_batch` takes at most one frame per stream and runs
    each network once over all the frames of the batch that need it; one model serves them all.
    """

    def __init__(
        self,
        model: AccelNet,
        pipeline: PipelineConfig | None = None,
        flow: FlowEstimator | None = None,
        *,
        return_max_probability: bool = False,
        sync_stages: bool = False,
        model_hash: str = "",
    ) -> None:
        """`return_max_probability`: fill `SegmentationResult.max_probability` (reduced on the
        device; what a scores topic needs). `sync_stages`: synchronise CUDA around every stage
        so `timings` is a true per-stage breakdown (benchmarks); off in production.
        `model_hash`: the identity of the weights (`LoadedModel.fingerprint`), reported with
        the labels' class metadata; empty when unknown."""
        self.model_hash = model_hash
        self.device = resolve_device((pipeline or PipelineConfig()).device)
        # backend auto becomes the runtime and precision it stands for on this device; the
        # segmenter's config names them, and the first note says why.
        self.pipeline_config, self._backend_note = resolve_backend(pipeline or PipelineConfig(),
                                                                   self.device)
        cfg = self.pipeline_config
        if MODES[cfg.mode].update_branch and model.update is None:
            raise ValueError(f"mode {cfg.mode!r} needs a model with an update branch")
        self.model = model.to(self.device).eval()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.flow = flow or build_flow(cfg.flow_method, cfg.flow_scale)
        # Other backends run their own precision (OpenVINO bf16): torch's autocast stays off.
        autocast = AUTOCAST_DTYPES.get(cfg.precision)
        self._autocast_dtype = None if BACKENDS[cfg.backend].graphs else autocast
        # Network calls go through FastOps (backend torch: the model's own methods unless
        # torch_compile / cuda_graphs ask for more) or through exported graphs in another
        # runtime; fixed here, `fast_path_notes` says what is active.
        self._ops = NETWORK_CALLS[cfg.backend](self.model, cfg, self.device, self.input_size)
        self._flow_worker = FlowWorker()  # its thread starts on first use of overlap_flow
        self._upload = FrameUploader(self.device)
        self.return_max_probability = return_max_probability
        self.sync_stages = sync_stages
        # On a CPU, labels from bilinear scores skip upsampling what cannot win (labels.py).
        self._labels = (
            LabelUpsampler()
            if self.device.type == "cpu" and model.upsampler.mode == "bilinear" else None
        )
        self._streams: dict[str, StreamState] = {DEFAULT_STREAM: StreamState()}

    # -- streams -------------------------------------------------------------------------------
    def configure_streams(self, names: Sequence[str]) -> None:
        """Declare the streams in order (they start over: empty caches, no stamps seen). With
        `stagger_keyframes`, stream i of N keyframes about i * keyframe_interval / N frames
        after stream 0 (its first interval is shortened by that much), so a batch of N frames
        carries about one reference-network run instead of N every k-th batch."""
        names = list(names)
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"stream names must be unique, non-empty strings, got {names}")
        self._streams = {
            name: StreamState(phase=index / len(names)) for index, name in enumerate(names)
        }
        for graph in self._ops.graphs.values():  # one graph per batch size that occurs
            graph.max_signatures = max(2, 2 * len(names))

    @property
    def streams(self) -> tuple[str, ...]:
        """The names of the streams seen or configured so far."""
        return tuple(self._streams)

    def stream_state(self, stream: str = DEFAULT_STREAM) -> StreamState:
        """The state of `stream` (created empty on first use)."""
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = StreamState()
        return state

    @property
    def cache(self) -> KeyframeCache:
        """The keyframe cache of the default stream (the one `process` uses)."""
        return self.stream_state().cache

    @property
    def frame_index(self) -> int:
        """Frames of the default stream so far, minus one."""
        return self.stream_state().frame_index

    def canvas(self, frame_size: tuple[int, int]) -> Canvas:
        """Where a frame of `frame_size` meets the network input under `resize_mode`
        (model/framing.py): the region of its pixel grid that is resized to `input_size`."""
        return canvas(frame_size, self.input_size, self.pipeline_config.resize_mode)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) frames are resized to: the pipeline's `input_size`, else the size the
        checkpoint was trained at, else None (frames go in at their own size)."""
        return self.pipeline_config.input_size or self.model.config.input_size

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def reset(self, reason: str | None = None, stream: str | None = DEFAULT_STREAM) -> None:
        """Drop the keyframe cache of `stream` (None: of every stream); its next frame is a
        keyframe. A `reason` (e.g. a time gap the caller judged on frame arrival) is reported
        as that stream's next result's reset_reason. The stream's stamps are kept (the time-gap
        rule goes on); `configure_streams` starts streams over entirely."""
        for name in self.streams if stream is None else (stream,):
            state = self.stream_state(name)
            state.cache = KeyframeCache()
            if reason:
                state.cache.extra["reset_reason"] = reason

    @property
    def fast_path_notes(self) -> list[str]:
        """Which backend runs the networks (and why, for backend auto), which fast paths are
        active, or why a requested one fell back (human-readable)."""
        return [note for note in (self._backend_note, *self._ops.notes) if note]

    def backend_info(self) -> BackendInfo:
        """What runs the networks now: the backend really running, precision, device, threads
        and `fast_path_notes` (stream/backend_info.py); what the run summaries print."""
        return backend_info(self._ops, self.pipeline_config, self.device,
                            self.fast_path_notes)

    def close(self) -> None:
        """Stop the overlap_flow worker thread, if it was started."""
        self._flow_worker.close()

    @staticmethod
    def check_frame(frame: np.ndarray | torch.Tensor) -> None:
        """Raise the ValueError `process` would raise for a malformed frame (cheap: no copy of
        a well-formed uint8 array)."""
        frame_to_tensor(frame)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        # A CUDA graph must not capture autocast's cached weight casts (freed on context exit).
        return torch.autocast(
            self.device.type,
            dtype=self._autocast_dtype,
            cache_enabled=not self.pipeline_config.cuda_graphs,
        )

    def note_arrival(self, stamp: float | None, stream: str = DEFAULT_STREAM) -> str | None:
        """Judge the time-gap rule (stream/timegaps.py) on the arrival of a frame of `stream`
        (`stamp` in seconds, None = unstamped), for a caller that may drop frames before they
        reach `process_batch` (the ROS node's newest-frame slot): judging every arrival, drops
        never look like gaps. Returns the reason to `reset` the stream before the next frame
        it processes, or None. From the first call on, the stream's processed frames are no
        longer judged again (their stamps then only time keyframe ages), until
        `configure_streams` starts the streams over. Call it from one thread per stream."""
        state = self.stream_state(stream)
        state.gaps_on_arrival = True
        return state.gaps.observe(stamp, self.pipeline_config.max_time_gap)

    def _reset_reason(
        self, state: StreamState, size: tuple[int, int], stamp: float | None
    ) -> str | None:
        """Why the stream's cache must go before a frame of `size` stamped `stamp`: its
        resolution changed or its stamps broke (`StampGapMonitor`, which sees every stamped
        frame, unless the caller judges arrivals itself: `note_arrival`); None while the cache
        is empty (the frame is a keyframe anyway)."""
        time_break = (None if state.gaps_on_arrival
                      else state.gaps.observe(stamp, self.pipeline_config.max_time_gap))
        cache = state.cache
        if cache.frame_size is None:
            return None
        if cache.frame_size != size:
            return f"resolution changed from {cache.frame_size} to {size}"
        return time_break

    def _is_keyframe_due(self, state: StreamState) -> bool:
        cfg, cache = self.pipeline_config, state.cache
        if MODES[cfg.mode].every_frame:
            return cfg.mode == "reference"
        if cache.features is None or cache.force_keyframe:
            return True
        if cache.holds_scores != self._warps_scores():
            return True  # out_of_frame changed live: re-anchor on the kind of map it allows
        interval = cfg.keyframe_interval - cache.interval_offset
        return state.frame_index - cache.keyframe_index >= max(interval, 1)

    def _warps_scores(self) -> bool:
        """The caches hold and warp s_R rather than N_feat features (exact; see
        `AccelNet.warps_scores`)."""
        return self.model.warps_scores(self.pipeline_config.out_of_frame)

    # -- processing ----------------------------------------------------------------------------
    def process(
        self,
        frame: np.ndarray | torch.Tensor,
        stamp: float | None = None,
        stream: str = DEFAULT_STREAM,
    ) -> SegmentationResult:
        """Segment one frame of `stream`: (H, W, 3) uint8 RGB (or (3, H, W) float), taken at
        `stamp` (seconds; None = unknown), which the time-gap rule judges (stream/timegaps.py).
        Returns labels at the frame's own size. Raises ValueError for malformed frames without
        touching the cache. A batch of one: see `process_batch`."""
        return self.process_batch([StreamFrame(stream, frame, stamp)])[0]

    @torch.inference_mode()
    def process_batch(self, frames: Sequence[StreamFrame]) -> list[SegmentationResult]:
        """Segment one frame of each of several streams; one result per frame, in order.

        Steps, each timed once for the whole batch (every result carries the batch's timings):
        flow per stream (frames that warp) -> keyframes (N_R on the keyframes of the batch,
        caches) | warp and score (propagate each cache, s_R) -> fuse (N_U, fusion) -> output
        (upsample, labels). Frames resized to one network size share every network call. The
        host waits for the device once per output size, when the labels come back (plus once
        mid-batch when an adaptive flow threshold must look at the flow).

        Raises ValueError, before any stream's cache changes, for a malformed frame (naming
        its stream) or for two frames of one stream."""
        names = [item.stream for item in frames]
        if len(set(names)) != len(names):
            raise ValueError(f"a batch holds at most one frame per stream, got {names}")
        hosts = []
        for item in frames:
            try:
                hosts.append(frame_to_tensor(item.frame))
            except ValueError as error:
                if item.stream == DEFAULT_STREAM:
                    raise
                raise ValueError(f"stream {item.stream!r}: {error}") from error
        jobs = [self._start(item, host) for item, host in zip(frames, hosts, strict=True)]
        if not jobs:
            return []
        cfg = self.pipeline_config
        timer = StageTimer(self.device, self.sync_stages)
        uses_flow = not MODES[cfg.mode].every_frame
        with cuda_device_context(self.device), self._autocast():
            for slot, job in enumerate(jobs):
                job.image = self._prepare_image(job.host, slot)
                job.pixels = self._network_pixels(job)
                job.keyframe = self._is_keyframe_due(job.state)
            if uses_flow:
                self._flow_steps(jobs, timer)
            if cfg.mode == "deeplab":
                with timer.stage("update"):
                    for job, scores in zip(jobs, run_batched(
                        lambda image: self._ops.update_scores(self._ops.update_features(image)),
                        [(job.network_input,) for job in jobs],
                    ), strict=True):
                        job.scores = scores
            else:
                self._keyframe_step([job for job in jobs if job.keyframe], timer)
                warping = [job for job in jobs if not job.keyframe]
                self._warp_and_score_step(warping, timer)
                if cfg.mode == "accel":
                    self._fuse_step(warping, timer)
            outputs = self._output_step(jobs, timer)
        timings = timer.finish()
        return [
            self._finish(job, output, timings, len(jobs))
            for job, output in zip(jobs, outputs, strict=True)
        ]

    # -- the steps of process_batch() ----------------------------------------------------------
    def _start(self, item: StreamFrame, host: torch.Tensor) -> _Job:
        """Judge the stream's reset rules (resolution, time) and count its frame."""
        state = self.stream_state(item.stream)
        size = (int(host.shape[-2]), int(host.shape[-1]))
        reason = self._reset_reason(state, size, item.stamp)
        if reason is not None:
            if state.cache.frame_size != size:
                self._ops.release()  # graphs captured for the old resolution
            self.reset(stream=item.stream)
        reason = reason or state.cache.extra.pop("reset_reason", None)
        state.frame_index += 1
        stamp, note = state.stamps.usable(  # for keyframe ages
            item.stamp, item.stream, restart=state.cache.frame_size is None)
        return _Job(item.stream, state, host, stamp, reason, stamp_note=note)

    def _prepare_image(self, host: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """Host frame -> (1, 3, H', W') float on the device, resized to the network input size
        and in the requested memory format. `slot`: the frame's place in its batch."""
        cfg = self.pipeline_config
        image = self._upload(host, slot)
        size = self.input_size
        if size is not None and tuple(size) != tuple(image.shape[-2:]):
            box = self.canvas((int(image.shape[-2]), int(image.shape[-1])))
            image = F.interpolate(frame_to_canvas(image, box), size=size, mode="bilinear",
                                  align_corners=False)
        if cfg.channels_last:
            return image.contiguous(memory_format=torch.channels_last)
        return image

    @property
    def _scan_flow(self) -> bool | None:
        """`check_flow`'s NaN/inf scan: skipped (False) for an estimator that made it already
        (0.24 ms a frame at 180x240 on one CPU thread), else its default."""
        return False if getattr(self.flow, "checks_finite", False) else None

    def _network_pixels(self, job: _Job) -> torch.Tensor | None:
        """The frame's uint8 pixels, (1, 3, H, W), when the image networks take them as they
        are (a runtime that converts them inside its graphs, `takes_pixels`), the frame is at
        the network input size and on the host; else None (they take `job.image`)."""
        if not (self._ops.takes_pixels and job.host.dtype == torch.uint8
                and self.device.type == "cpu"):
            return None
        return job.host if job.host.shape[-2:] == job.image.shape[-2:] else None

    def _overlaps_flow(self, job: _Job) -> bool:
        """overlap_flow applies: accel mode (there is an update branch to hide the flow
        behind), a CPU estimator, a frame that warps and a previous frame to compute flow
        from."""
        cfg = self.pipeline_config
        return (
            cfg.overlap_flow
            and cfg.mode == "accel"
            and flow_can_overlap(self.flow)
            and not job.keyframe
            and job.state.cache.previous is not None
        )

    def _flow_steps(self, jobs: list[_Job], timer: StageTimer) -> None:
        """Prepare each frame for the flow estimator and, on frames that will warp, estimate
        the backward flow from the stream's previous frame. With overlap_flow the flows run in
        the worker thread while N_U runs here on those frames ("flow" is then billed the
        worker's own time, so the stages add up to more than "total"). An adaptive flow
        threshold may turn a frame into a keyframe here."""
        overlapped = [job for job in jobs if self._overlaps_flow(job)]
        if overlapped:
            futures = [
                self._flow_worker.submit(self.flow, job.state.cache.previous, job.image)
                for job in overlapped
            ]
            try:
                with timer.stage("update"):
                    updates = run_batched(self._update_branch,
                                          [(j.network_input,) for j in overlapped])
            finally:
                done = [future.result() for future in futures]  # never leave work running
            for job, flow_job, update in zip(overlapped, done, updates, strict=True):
                check_flow(flow_job.flow, finite=self._scan_flow)
                job.step = FlowStep(flow_job.prepared, flow_job.flow, update)
                timer.times["flow"] += flow_job.milliseconds
        for job in jobs:
            if job in overlapped:
                continue
            previous = job.state.cache.previous
            with timer.stage("flow"):
                prepared = self.flow.prepare(job.image)
                if job.keyframe or previous is None:
                    job.step = FlowStep(prepared=prepared)
                    continue
                flow = self.flow.estimate(previous, prepared).float()
                check_flow(flow, finite=self._scan_flow)
            job.step = FlowStep(prepared, flow)
        threshold = self.pipeline_config.adaptive_flow_threshold
        for job in jobs:
            flow = job.step.flow
            if flow is None:
                continue
            job.motion = mean_flow_magnitude(flow) / (flow.shape[-1] / job.image.shape[-1])
            if threshold > 0 and job.state.cache.accumulated_flow + float(job.motion) > threshold:
                job.keyframe = True  # too much motion: warped features are no longer trusted

    def _update_branch(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N_U on (N, 3, H, W): features (N, C_U, h, w) and, for score fusion, s_U."""
        update_features = self._ops.update_features(image)
        if self.model.fuses_features:
            return update_features, None
        return update_features, self._ops.update_scores(update_features)

    def _keyframe_step(self, jobs: list[_Job], timer: StageTimer) -> None:
        """N_R on the keyframes of the batch: s_R, and (flow modes) fresh float32 caches.

        The cache is float32 under any autocast precision, so the warp, N_task and their CUDA
        graphs / compiled kernels always see one dtype (keyframe or not)."""
        if not jobs:
            return
        cfg = self.pipeline_config
        with timer.stage("feature"):
            features = run_batched(
                lambda image: self._ops.reference_features(image).float(),
                [(job.network_input,) for job in jobs],
            )
        with timer.stage("task"):
            scores = run_batched(self._ops.reference_scores, [(f,) for f in features])
        holds_scores = self._warps_scores()
        for job, job_features, job_scores in zip(jobs, features, scores, strict=True):
            job.scores = job_scores
            if cfg.mode not in ("accel", "dff"):
                continue
            cache = job.state.cache
            first = cache.features is None
            cache.features = job_scores.float() if holds_scores else job_features
            cache.holds_scores = holds_scores
            cache.keyframe_index = job.state.frame_index
            cache.keyframe_stamp = job.stamp
            cache.accumulated_flow = 0.0
            cache.force_keyframe = False
            # The stream's first keyframe (start, reset) shortens its first interval by its
            # phase; later intervals are whole.
            stagger = cfg.stagger_keyframes and first and len(self._streams) > 1
            phase = round(job.state.phase * cfg.keyframe_interval) if stagger else 0
            cache.interval_offset = min(phase, cfg.keyframe_interval - 1)

    def _warp_and_score_step(self, jobs: list[_Job], timer: StageTimer) -> None:
        """Move each cache by its flow (`AccelNet.propagate`) and score it with N_task: s_R
        (a cache of scores is s_R once warped). Feature fusion scores the fused features
        instead, so its s_R stays None."""
        if not jobs:
            return
        out_of_frame = self.pipeline_config.out_of_frame
        with timer.stage("warp"):
            warped = run_batched(
                lambda features, flow, image_size: self.model.propagate(
                    features, flow, out_of_frame, image_size=image_size
                ),
                [(job.state.cache.features, job.step.flow) for job in jobs],
                keys=[(int(job.image.shape[-2]), int(job.image.shape[-1])) for job in jobs],
            )
        for job, features in zip(jobs, warped, strict=True):
            job.state.cache.features = features
            if job.state.cache.holds_scores:
                job.scores = features  # s_R itself
        to_score = [job for job in jobs if not job.state.cache.holds_scores]
        if not to_score or (self.pipeline_config.mode == "accel" and self.model.fuses_features):
            return
        with timer.stage("task"):
            scores = run_batched(self._ops.reference_scores,
                                 [(job.state.cache.features,) for job in to_score])
        for job, job_scores in zip(to_score, scores, strict=True):
            job.scores = job_scores

    def _fuse_step(self, jobs: list[_Job], timer: StageTimer) -> None:
        """N_U on the frames (unless overlap_flow ran it already) and the fusion
        (`AccelNet.fuse`) of each warped reference with it."""
        if not jobs:
            return
        pending = [job for job in jobs if job.step.early_update is None]
        with timer.stage("update"):
            updates = run_batched(self._update_branch, [(job.network_input,) for job in pending])
        for job, update in zip(pending, updates, strict=True):
            job.step.early_update = update
        with timer.stage("fusion"):
            if getattr(self.model, "fusion_uses_age", False):
                # An age-aware fusion (a few 1x1 weights mixed per frame) runs eagerly in
                # torch with each frame's keyframe age; the fast paths and exported graphs
                # serve the plain fusion's four-tensor call.
                fused = run_batched(
                    lambda *inputs: self.model.fuse(*inputs[:4], age_s=inputs[4]),
                    [(*self._fusion_inputs(job), self._keyframe_age(job)) for job in jobs],
                )
            else:
                fused = run_batched(self._ops.fuse, [self._fusion_inputs(job) for job in jobs])
        for job, scores in zip(jobs, fused, strict=True):
            job.scores = scores

    @staticmethod
    def _fusion_inputs(job: _Job) -> tuple[torch.Tensor | None, ...]:
        """(warped reference features, update features, s_R, s_U) of one frame."""
        assert job.step.early_update is not None
        update_features, update_scores = job.step.early_update
        return job.state.cache.features, update_features, job.scores, update_scores

    def _keyframe_age(self, job: _Job) -> torch.Tensor:
        """(1,) seconds since the frame's keyframe: from the stamps when both are known, else
        frames since the keyframe at NOMINAL_FRAME_TIME_S each."""
        cache = job.state.cache
        if job.stamp is not None and cache.keyframe_stamp is not None:
            age = job.stamp - cache.keyframe_stamp
        else:
            age = (job.state.frame_index - cache.keyframe_index) * NOMINAL_FRAME_TIME_S
        return torch.tensor([max(age, 0.0)], device=self.device)

    def _output_step(self, jobs: list[_Job], timer: StageTimer) -> list[dict[str, Any]]:
        """Low-resolution scores (1, K, h, w) of each frame -> labels (H, W) uint8 on the host
        at the frame's own size, the mean max probability (a device scalar) and, if asked
        for, probabilities / max probability reduced on the device before they cross to the
        host. Frames of one size share one upsampling and one copy to the host."""
        cfg = self.pipeline_config
        with timer.stage("output"):
            grouped = run_batched(
                self._upsample_and_reduce, [(job.scores,) for job in jobs],
                keys=[job.size for job in jobs],
            )
            results = []
            for labels, logits, confidence in grouped:
                probabilities = max_probability = None
                if cfg.return_probabilities or self.return_max_probability:
                    size = (int(labels.shape[-2]), int(labels.shape[-1]))
                    full = canvas_to_frame(logits.softmax(dim=1)[0], self.canvas(size), size, 0.0)
                    if self.return_max_probability:
                        max_probability = full.amax(dim=0).cpu().numpy()
                    if cfg.return_probabilities:
                        probabilities = full.contiguous().cpu().numpy()
                results.append({"labels": labels[0].numpy(), "confidence": confidence,
                                "probabilities": probabilities,
                                "max_probability": max_probability})
        return results

    def _upsample_and_reduce(
        self, scores: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Scores (N, K, h, w) -> labels (N, H, W) uint8 on the host (the one wait for the
        device), logits (N, K, H, W) on the device when probabilities are asked for (else None)
        and the mean max probability per frame (N,) on the device."""
        scores = scores.float()
        confidence = scores.softmax(dim=1).amax(dim=1).mean(dim=(1, 2))
        box = self.canvas(size)
        wants_logits = self.pipeline_config.return_probabilities or self.return_max_probability
        if self._labels is not None and not wants_logits:
            labels, logits = self._labels(scores, (box.height, box.width)), None
        else:
            labels, logits = upsample_labels(self.model, scores, (box.height, box.width))
        # Back onto the frame's own pixel grid (resize_mode): what the canvas padded is cut
        # away, what it cropped gets the ignore label.
        labels = canvas_to_frame(labels, box, size, IGNORE_LABEL)
        return labels.cpu(), logits, confidence

    def _finish(
        self, job: _Job, output: dict[str, Any], timings: dict[str, float], batch_size: int
    ) -> SegmentationResult:
        """Book the frame into its stream's state and build its result. The labels are on the
        host, so the device is idle: the reads here cost no stall."""
        cfg, state = self.pipeline_config, job.state
        cache = state.cache
        uses_flow = not MODES[cfg.mode].every_frame
        confidence = float(output["confidence"])
        if uses_flow:
            cache.previous = job.step.prepared
            if job.keyframe:
                cache.keyframe_confidence = confidence
            elif job.motion is not None:
                cache.accumulated_flow += float(job.motion)
            drop = cfg.adaptive_confidence_drop
            if drop > 0 and cache.keyframe_confidence - confidence > drop:
                cache.force_keyframe = True  # the next frame re-anchors on the reference net
        cache.frame_size = job.size
        age = 0 if job.keyframe or not uses_flow else state.frame_index - cache.keyframe_index
        return SegmentationResult(
            labels=output["labels"],
            confidence=confidence,
            is_keyframe=bool(job.keyframe),
            keyframe_age=age,
            frame_index=state.frame_index,
            timings=dict(timings),
            probabilities=output["probabilities"],
            reset_reason=job.reset_reason,
            max_probability=output["max_probability"],
            stream=job.name,
            batch_size=batch_size,
            stamp_note=job.stamp_note,
        )


def _torch_calls(
    model: AccelNet, cfg: PipelineConfig, device: torch.device, input_size: tuple[int, int] | None
) -> FastOps:
    """Backend torch: the model's own methods on `device`, compiled or replayed as CUDA graphs
    where `cfg` asks (`input_size` is not needed: torch takes any size)."""
    return FastOps(model, device, cfg.torch_compile, cfg.cuda_graphs)


# backend -> the builder of what `AccelSegmenter` runs its networks through: an object with the
# calls of `fastpath.OP_NAMES`, `notes`, `graphs` and `release()`. One builder per value of
# config.BACKENDS that runs networks (bind checks, at import; auto has become one of them
# when the segmenter is built): torch's `FastOps`; the graph runtimes'
# `deploy.backends.GraphNetworks`, which exports (or loads from its cache) the graphs of
# `input_size` when built, so a first start pays the export before the first frame.
NETWORK_CALLS: dict[str, Callable[..., Any]] = BACKENDS.bind(
    {"torch": _torch_calls} | dict.fromkeys(RUNTIMES, build_networks),
    BACKENDS.select(lambda backend: not backend.chooses),
)


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
    loaded = load_model_or_preset(model, checkpoint)
    return AccelSegmenter(loaded.model, pipeline, return_max_probability=return_max_probability,
                          model_hash=loaded.fingerprint)
