"""`accel-ros bench`: per-frame cost of Accel, DFF and DeepLab variants, and of the fast paths.

Every variant runs in one process on the same frames, so ratios between them are comparable:

- `reference`: N_R (DeepLab on the reference backbone, ResNet-101 by default) on every frame.
- `dff`: N_R on keyframes, warped features + N_R's head elsewhere (no update branch).
- `deeplab18/34/50`: the update network N_U alone on every frame.
- `accel18/34/50/101`: the paper's presets (score fusion; feature fusion for Accel-101).
- `deeplab` / `accel`: the update branch alone / Accel of the `--model` configuration (a preset
  name such as the shipped one, or a checkpoint: "default" or a path); with `--model`,
  `reference` and `dff` use that model's reference branch too.
- peers, what a user would pick instead, every frame (`--variants peers` for all four):
  torchvision `tv_deeplabv3_resnet101`, `tv_deeplabv3_resnet50`,
  `tv_deeplabv3_mobilenet_v3_large`, `tv_lraspp_mobilenet_v3_large` (weights=None,
  weights_backbone=None: timing only).

One N_R is shared by all variants whose reference branch has the same shape; timing does not
depend on weights, so models are randomly initialised. Per measurement: `--warmup` frames (both
keyframe and non-key-frame paths), a cache reset, then whole keyframe cycles of at least
`--frames` frames, so the mean is the true per-frame average (T_key + (k - 1) T_other) / k.
Latency is wall clock around `AccelSegmenter.process` (frame in, labels on the host out), with
a CUDA synchronise before each frame, on the production path (no synchronise between stages).
The stage breakdown is the segmenter's own: on the CPU it comes from the same frames; on CUDA
only `--breakdown` gives real per-stage numbers, from an extra pass of the same frames that
synchronises around every stage (its latency is not reported). Peak memory is CUDA's max
allocated on GPU and the process peak RSS (VmHWM, reset per measurement where the kernel
allows) on CPU.

Stable ratios: `--repeats N` runs the whole plan N times, interleaved (so slow drift of a busy
machine hits every variant alike); each row reports the median over the runs of its mean
per-frame time, and `x ref` is the median of the per-run ratios to the reference (same run),
with their min-max range. `--flow-epe` adds the end-point error of each flow method against
the synthetic generator's exact flow.

Fast paths given on the command line (--channels-last, --precision, --compile, --cuda-graphs,
--overlap-flow) are measured one by one against the plain fp32 path, plus all of them together
when more than one is given.

Several cameras: `--streams 1,2,4` measures one node serving N streams (`process_batch`)
against N separate single-stream processes on the same cores (tools/bench_streams.py).

--accuracy FILE pairs timings with mIoU for the accuracy-vs-time plot (paper Fig. 4). Accepted:
  1. `accel-ros eval`'s eval.json: {"per_interval": {mode: {"k": miou}}}; modes reference and
     dff map to those variants, accel and deeplab to the run's single accel*/deeplab* variant;
  2. {variant: {"miou": x}} (optionally with "keyframe_interval": k; default 5 or the only one
     timed) for flow variants; every-frame variants need no interval;
  3. {variant: {"k": miou, ...}}: one mIoU per keyframe interval.
Variant keys are matched loosely ("Accel-18" = "accel18", "DeepLab-101" = "reference"); mIoU
may be a fraction or a percentage. Without --accuracy, --plot draws time vs keyframe interval.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FLOW_METHODS, PRESETS, ModelConfig, PipelineConfig, preset
from ..model import STAGES, AccelNet, AccelSegmenter, resolve_device
from ..model.fastpath import CompiledCall, CudaGraphCall
from ..model.pipeline import FrameUploader, StageTimer, cuda_device_context, frame_to_tensor
from ..report import write_json
from . import streams as bench_streams

MODEL_KEY = "--model"
# variant -> (pipeline mode, preset that supplies the update branch or None; MODEL_KEY: the
# --model configuration; for mode "peer": the torchvision builder)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "reference": ("reference", None),
    "dff": ("dff", None),
    "deeplab18": ("deeplab", "accel18"),
    "deeplab34": ("deeplab", "accel34"),
    "deeplab50": ("deeplab", "accel50"),
    "accel18": ("accel", "accel18"),
    "accel34": ("accel", "accel34"),
    "accel50": ("accel", "accel50"),
    "accel101": ("accel", "accel101"),
    # The --model configuration (default accel18's update branch).
    "deeplab": ("deeplab", MODEL_KEY),
    "accel": ("accel", MODEL_KEY),
    # Peers: torchvision single-frame segmentation networks, random init (timing only).
    "tv_deeplabv3_resnet101": ("peer", "deeplabv3_resnet101"),
    "tv_deeplabv3_resnet50": ("peer", "deeplabv3_resnet50"),
    "tv_deeplabv3_mobilenet_v3_large": ("peer", "deeplabv3_mobilenet_v3_large"),
    "tv_lraspp_mobilenet_v3_large": ("peer", "lraspp_mobilenet_v3_large"),
}
PEERS = tuple(v for v, (mode, _) in VARIANTS.items() if mode == "peer")
# "--variants all": the paper's family (the --model variants and the peers are named apart).
FAMILY = tuple(
    v for v, (mode, source) in VARIANTS.items() if mode != "peer" and source != MODEL_KEY
)
EVERY_FRAME_MODES = ("reference", "deeplab", "peer")  # no keyframes: the interval does not apply
FAST_PATHS = ("channels_last", "precision", "compile", "cuda_graphs", "overlap_flow")
# Issue #5 targets (paper: Accel-18 0.170 s vs DeepLab-101 0.287 s per frame): reported only.
TARGETS = (("accel18", 5, 0.45), ("accel", 5, 0.45), ("dff", 5, 0.40))
# Rendering the synthetic scene costs ~seconds per frame at 1024x2048: render at most this and
# resize; the motion (and so DIS's work) scales with the frame.
MAX_RENDER = (256, 512)


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on (the CLI's options, validated)."""

    variants: tuple[str, ...] = FAMILY
    intervals: tuple[int, ...] = tuple(range(1, 11))
    height: int | None = None  # None: 512x1024 on CPU, 1024x2048 on CUDA
    width: int | None = None
    frames: int = 20
    warmup: int = 3
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    overlap_flow: bool = False
    flow: str = "dis"
    flow_scale: float = 0.5
    reference_backbone: str | None = "resnet101"  # None: the --model's own
    num_classes: int = 11
    fast_variants: tuple[str, ...] | None = None  # None: same as variants
    fast_intervals: tuple[int, ...] | None = None  # None: same as intervals
    clip_frames: int = 24
    seed: int = 0
    repeats: int = 1
    breakdown: bool = False
    model: str | None = None  # preset name or checkpoint ("default", a path) for deeplab/accel
    flow_epe: bool = False

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants + (self.fast_variants or ()) if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        if not self.variants:
            raise ValueError("no variants to benchmark")
        if not self.intervals or min(self.intervals + (self.fast_intervals or (1,))) < 1:
            raise ValueError(f"keyframe intervals must be >= 1, got {self.intervals}")
        if self.frames < 1 or self.warmup < 0 or self.clip_frames < 2 or self.repeats < 1:
            raise ValueError(
                "--frames and --repeats must be >= 1, --warmup >= 0 and --clip-frames >= 2"
            )
        if (self.height is None) != (self.width is None):
            raise ValueError("give both --height and --width, or neither")
        if self.height is not None and min(self.height, self.width or 0) < 32:
            raise ValueError(f"resolution must be at least 32x32, got {self.height}x{self.width}")
        PipelineConfig(precision=self.precision, flow_method=self.flow, flow_scale=self.flow_scale)
        if self.reference_backbone is not None:
            ModelConfig(reference_backbone=self.reference_backbone, num_classes=self.num_classes)

    def resolution(self, device: torch.device) -> tuple[int, int]:
        if self.height is not None and self.width is not None:
            return self.height, self.width
        return (1024, 2048) if device.type == "cuda" else (512, 1024)


@dataclass
class FastPath:
    """One measured configuration: a name and the PipelineConfig fields it sets."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


def fast_path_configs(settings: BenchSettings) -> list[FastPath]:
    """The plain path first, then each requested switch alone, then all together (if > 1)."""
    single = []
    if settings.channels_last:
        single.append(FastPath("channels_last", {"channels_last": True}))
    if settings.precision != "fp32":
        single.append(FastPath(settings.precision, {"precision": settings.precision}))
    if settings.compile:
        single.append(FastPath("compile", {"torch_compile": True}))
    if settings.cuda_graphs:
        single.append(FastPath("cuda_graphs", {"cuda_graphs": True}))
    if settings.overlap_flow:
        single.append(FastPath("overlap_flow", {"overlap_flow": True}))
    configs = [FastPath("plain"), *single]
    if len(single) > 1:
        combined: dict[str, Any] = {}
        for config in single:
            combined.update(config.fields)
        configs.append(FastPath("all", combined))
    return configs


# -- frames ------------------------------------------------------------------------------------
def make_frames(
    count: int, height: int, width: int, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """`count` consecutive (H, W, 3) uint8 RGB frames of a moving scene, and where they came
    from: the synthetic driving scene if available, else a smooth random texture panning
    diagonally (both give DIS real motion to track)."""
    import cv2

    render = (min(height, MAX_RENDER[0]), min(width, MAX_RENDER[1]))
    try:
        from ..data.synthetic import generate_clip
    except ImportError:
        generate_clip = None
    if generate_clip is not None:
        images = [f.image for f in generate_clip(count, render[0], render[1], seed=seed)]
        source = f"synthetic driving scene rendered at {render[0]}x{render[1]}"
    else:
        rng = np.random.default_rng(seed)
        margin = 3 * count + 8
        texture = rng.integers(0, 256, (render[0] + margin, render[1] + margin, 3), np.uint8)
        texture = cv2.GaussianBlur(texture, (0, 0), 3.0)
        images = [
            np.ascontiguousarray(texture[2 * t : 2 * t + render[0], 3 * t : 3 * t + render[1]])
            for t in range(count)
        ]
        source = f"random texture panning (3, 2) px/frame at {render[0]}x{render[1]}"
    if render != (height, width):
        images = [
            cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR) for img in images
        ]
        source += f", resized to {height}x{width}"
    return images, source


def ping_pong(frames: list[np.ndarray], index: int) -> np.ndarray:
    """Frame `index` of the clip played forwards then backwards, endlessly (smooth motion)."""
    period = 2 * len(frames) - 2
    index %= period
    return frames[index if index < len(frames) else period - index]


# -- models ------------------------------------------------------------------------------------
def _structure(module: torch.nn.Module) -> tuple:
    return tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())


def model_config(settings: BenchSettings) -> ModelConfig | None:
    """The --model configuration: a preset's, or the one a checkpoint stores (None without
    --model)."""
    if settings.model is None:
        return None
    if settings.model in PRESETS:
        return preset(settings.model)
    from ..model import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(settings.model)
    if path is None:
        raise ValueError(f"--model {settings.model!r} is neither a preset nor a checkpoint")
    net, _ = load_checkpoint(path)
    return net.config


def build_models(settings: BenchSettings) -> dict[str, AccelNet]:
    """One AccelNet per configuration the variants need ("reference-only" for reference/dff,
    MODEL_KEY for deeplab/accel), all sharing a single N_R when their reference branches have
    the same shape. Random weights: timing does not depend on them."""
    base = model_config(settings) or preset("accel18")
    overrides: dict[str, Any] = {"num_classes": settings.num_classes}
    if settings.reference_backbone is not None:
        overrides["reference_backbone"] = settings.reference_backbone
    if settings.model is not None and settings.num_classes == BenchSettings.num_classes:
        overrides.pop("num_classes")  # the model's own classes
    names = {
        VARIANTS[v][1] or "reference-only"
        for v in _all_variants(settings)
        if VARIANTS[v][0] != "peer"
    }
    models: dict[str, AccelNet] = {}
    shared: dict[tuple, torch.nn.Module] = {}
    for name in sorted(names):
        if name == "reference-only":
            config = dataclasses.replace(base, update_backbone=None)
        elif name == MODEL_KEY:
            config = base
        else:
            config = preset(name)
        config = dataclasses.replace(config, **overrides)
        model = AccelNet(config).eval()
        key = _structure(model.reference)
        if key in shared:
            model.reference = shared[key]  # type: ignore[assignment]
        else:
            shared[key] = model.reference
        models[name] = model
    return models


class PeerSegmenter:
    """A torchvision single-frame segmentation network behind `AccelSegmenter`'s interface
    (process / reset / close / device / fast_path_notes), every frame a "keyframe" of its own.

    Same frame path as Accel: uint8 upload, float on the device, ImageNet normalisation,
    network, argmax, labels to the host. Precision, channels_last, torch.compile and CUDA
    graphs follow the PipelineConfig; flow and keyframe options do not apply. Network time is
    billed to "feature", argmax and the copy to "output"."""

    def __init__(
        self, builder: str, num_classes: int, pipeline: PipelineConfig, sync_stages: bool = False
    ) -> None:
        from torchvision.models import segmentation

        self.pipeline_config = pipeline
        self.device = resolve_device(pipeline.device)
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None,
                                  "num_classes": num_classes}
        if builder.startswith("deeplabv3"):
            kwargs["aux_loss"] = False
        network = getattr(segmentation, builder)(**kwargs).eval().to(self.device)
        if pipeline.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network = network
        self.sync_stages = sync_stages
        self._upload = FrameUploader(self.device)
        self._mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(pipeline.precision)
        self.fast_path_notes: list[str] = [f"torchvision {builder}, random weights"]
        call: Any = self._forward
        if pipeline.torch_compile:
            call = CompiledCall(call, builder)
        if pipeline.cuda_graphs and self.device.type == "cuda":
            call = CudaGraphCall(call, builder, self.device)
        self._call = call

    def _forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network((image - self._mean) / self._std)["out"]

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    @torch.inference_mode()
    def process(self, frame: np.ndarray, stamp: float | None = None) -> Any:
        host = frame_to_tensor(frame)
        timer = StageTimer(self.device, self.sync_stages)
        autocast = (
            torch.autocast(self.device.type, dtype=self._dtype, cache_enabled=False)
            if self._dtype is not None else contextlib.nullcontext()
        )
        with cuda_device_context(self.device), autocast:
            image = self._upload(host)
            if self.pipeline_config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with timer.stage("feature"):
                logits = self._call(image)
            with timer.stage("output"):
                labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        return _PeerResult(labels, timer.finish())


@dataclass
class _PeerResult:
    labels: np.ndarray
    timings: dict[str, float]
    is_keyframe: bool = False


def _all_variants(settings: BenchSettings) -> tuple[str, ...]:
    return tuple(dict.fromkeys(settings.variants + (settings.fast_variants or ())))


# -- measuring ---------------------------------------------------------------------------------
class MemoryProbe:
    """Peak memory of one measurement: CUDA max allocated, or the process peak RSS (VmHWM)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"
        self._baseline = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            # Writing 5 to clear_refs resets this process's VmHWM to the current RSS (Linux).
            with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._baseline = _status_mb("VmRSS") or 0.0

    def peak(self) -> tuple[float | None, float | None]:
        """(peak MB, peak above the start of the measurement MB); None where unavailable."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _status_mb("VmHWM")
            if peak is None:
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return peak, (max(peak - self._baseline, 0.0) if peak is not None else None)


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle_frames(frames: int, interval: int | None) -> int:
    """Timed frames: `frames` rounded up to whole keyframe cycles."""
    if interval is None or interval <= 1:
        return frames
    return math.ceil(frames / interval) * interval


def measure(
    segmenter: AccelSegmenter | PeerSegmenter,
    frames: list[np.ndarray],
    timed: int,
    warmup: int,
    memory: MemoryProbe,
    breakdown: bool = False,
) -> dict[str, Any]:
    """Warm up, reset the cache, then time `timed` frames. Returns the numbers of one result.

    Latency is the production path's (no per-stage synchronise). On CUDA the stage times of
    that pass count launches only, so with `breakdown` the same frames run once more with
    `sync_stages` and the stage columns come from that pass; on the CPU one pass gives both."""
    device = segmenter.device
    index = 0
    # Warm-up must see a non-key frame too (flow, warp, N_U paths; graph capture; compile).
    for _ in range(max(warmup, 2 if warmup else 0)):
        segmenter.process(ping_pong(frames, index))
        index += 1
    segmenter.reset()
    memory.start()
    start_index = index
    latencies, timings, keyframe_flags = [], [], []
    for _ in range(timed):
        frame = ping_pong(frames, index)
        index += 1
        _sync(device)
        start = time.perf_counter()
        result = segmenter.process(frame)
        _sync(device)  # labels are already on the host; this only guards future changes
        latencies.append((time.perf_counter() - start) * 1000.0)
        timings.append(result.timings)
        keyframe_flags.append(result.is_keyframe)
    peak, extra = memory.peak()
    synchronised = device.type != "cuda"
    if breakdown and device.type == "cuda":
        segmenter.reset()
        segmenter.sync_stages = True
        try:
            timings = [segmenter.process(ping_pong(frames, start_index + i)).timings
                       for i in range(timed)]
        finally:
            segmenter.sync_stages = False
        synchronised = True
    values = np.asarray(latencies)
    flags = np.asarray(keyframe_flags)
    mean = float(values.mean())
    return {
        "frames": timed,
        "keyframes": int(flags.sum()),
        "latency_ms": {
            "mean": mean,
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "keyframe": float(values[flags].mean()) if flags.any() else None,
            "non_keyframe": float(values[~flags].mean()) if (~flags).any() else None,
        },
        "fps": 1000.0 / mean if mean > 0 else 0.0,
        "stages_ms": {
            stage: float(np.mean([t.get(stage, 0.0) for t in timings]))
            for stage in (*STAGES, "total")
        },
        "stages_synchronised": synchronised,
        "peak_memory_mb": peak,
        "peak_extra_mb": extra,
    }


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from `measure`'s numbers of repeated runs: medians over runs (latency
    statistics, stage times), the per-run means (`latency_ms.runs`) and their spread
    (`latency_ms.spread_pct` = (max - min) / median in %), the largest peak memory."""
    means = [r["latency_ms"]["mean"] for r in runs]
    latency: dict[str, Any] = {}
    for key in ("mean", "p50", "p99", "keyframe", "non_keyframe"):
        values = [r["latency_ms"][key] for r in runs if r["latency_ms"][key] is not None]
        latency[key] = _median(values) if values else None
    latency["runs"] = means
    latency["spread_pct"] = (
        100.0 * (max(means) - min(means)) / latency["mean"] if latency["mean"] else 0.0
    )
    peaks = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
    extras = [r["peak_extra_mb"] for r in runs if r["peak_extra_mb"] is not None]
    stages = runs[0]["stages_ms"].keys()
    return {
        "frames": runs[0]["frames"],
        "keyframes": runs[0]["keyframes"],
        "repeats": len(runs),
        "latency_ms": latency,
        "fps": 1000.0 / latency["mean"] if latency["mean"] else 0.0,
        "stages_ms": {s: _median([r["stages_ms"][s] for r in runs]) for s in stages},
        "stages_synchronised": all(r["stages_synchronised"] for r in runs),
        "peak_memory_mb": max(peaks) if peaks else None,
        "peak_extra_mb": max(extras) if extras else None,
    }


def make_segmenter(
    settings: BenchSettings,
    models: dict[str, AccelNet],
    fast: FastPath,
    variant: str,
    interval: int | None,
    device: torch.device,
) -> AccelSegmenter | PeerSegmenter:
    """The segmenter one measurement times (a fresh one per measurement)."""
    mode, source = VARIANTS[variant]
    pipeline = PipelineConfig(
        mode="reference" if mode == "peer" else mode,
        keyframe_interval=interval or 1,
        device=str(device),
        flow_method=settings.flow,
        flow_scale=settings.flow_scale,
        **fast.fields,
    )
    if mode == "peer":
        classes = next(iter(models.values())).config.num_classes if models else (
            settings.num_classes
        )
        assert source is not None
        return PeerSegmenter(source, classes, pipeline)
    model = models[source or "reference-only"]
    # channels_last converts the (shared) model in place; undo it for other configs.
    model.to(memory_format=torch.channels_last if fast.fields.get("channels_last") else (
        torch.contiguous_format
    ))
    return AccelSegmenter(model, pipeline)


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure every (fast path, variant, interval), `settings.repeats` times interleaved;
    returns the JSON-ready report."""
    log = log or (lambda message: None)
    device = resolve_device(settings.device)
    height, width = settings.resolution(device)
    models = build_models(settings)
    plan = list(_plan(settings))
    longest = settings.warmup + 2 + max(cycle_frames(settings.frames, k) for _, _, k in plan)
    clip, source = make_frames(min(longest, settings.clip_frames), height, width, settings.seed)
    memory = MemoryProbe(device)
    runs: list[list[dict[str, Any]]] = [[] for _ in plan]
    notes: list[list[str]] = [[] for _ in plan]
    started = time.perf_counter()
    for repeat in range(settings.repeats):
        for number, (fast, variant, interval) in enumerate(plan):
            segmenter = make_segmenter(settings, models, fast, variant, interval, device)
            try:
                runs[number].append(measure(
                    segmenter, clip, cycle_frames(settings.frames, interval), settings.warmup,
                    memory, settings.breakdown,
                ))
            finally:
                segmenter.close()
            notes[number] = list(segmenter.fast_path_notes)
            shown = "every frame" if interval is None else f"k={interval}"
            log(
                f"[run {repeat + 1}/{settings.repeats}, {number + 1}/{len(plan)}] "
                f"{fast.name:<13} {variant:<10} {shown:<11} "
                f"{runs[number][-1]['latency_ms']['mean']:9.1f} ms/frame"
            )
    results: list[dict[str, Any]] = []
    for (fast, variant, interval), measured, note in zip(plan, runs, notes, strict=True):
        results.append({
            "variant": variant,
            "mode": VARIANTS[variant][0],
            "fastpath": fast.name,
            "keyframe_interval": interval,
            **aggregate_runs(measured),
            "notes": note,
        })
    _add_ratios(results)
    report: dict[str, Any] = {
        "meta": {
            "device": str(device),
            "device_name": _device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "height": height,
            "width": width,
            "frames": settings.frames,
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "flow": settings.flow,
            "flow_scale": settings.flow_scale,
            "model": settings.model,
            "reference_backbone": (
                settings.reference_backbone
                or (models[MODEL_KEY].config.reference_backbone if MODEL_KEY in models
                    else "resnet101")
            ),
            "num_classes": settings.num_classes,
            "frame_source": source + f", {len(clip)} frames played back and forth",
            "memory": memory.kind,
            "weights": "random init (timing does not depend on weights)",
            "seconds": round(time.perf_counter() - started, 1),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "results": results,
        "targets": check_targets(results),
    }
    if settings.flow_epe:
        report["flow_epe"] = flow_epe(device=device, scale=settings.flow_scale)
    return report


def _plan(settings: BenchSettings) -> Iterator[tuple[FastPath, str, int | None]]:
    for fast in fast_path_configs(settings):
        plain = fast.name == "plain"
        variants = settings.variants if plain else (settings.fast_variants or settings.variants)
        intervals = settings.intervals if plain else (
            settings.fast_intervals or settings.intervals
        )
        for variant in variants:
            if VARIANTS[variant][0] in EVERY_FRAME_MODES:
                yield fast, variant, None
            else:
                for interval in intervals:
                    yield fast, variant, interval


def _add_ratios(results: list[dict[str, Any]]) -> None:
    """ratio_to_reference: the median over runs of (this run's mean / `reference`'s mean in
    the same run), within the same fast path, or against the plain path's `reference` where
    that fast path did not time it; ratio_range: (min, max) of those per-run ratios."""
    reference = {
        r["fastpath"]: r["latency_ms"].get("runs", [r["latency_ms"]["mean"]])
        for r in results
        if r["variant"] == "reference"
    }
    for result in results:
        base = reference.get(result["fastpath"], reference.get("plain"))
        own = result["latency_ms"].get("runs", [result["latency_ms"]["mean"]])
        if not base or len(base) != len(own) or min(base) <= 0:
            result["ratio_to_reference"] = None
            result["ratio_range"] = None
            continue
        ratios = [mine / ref for mine, ref in zip(own, base, strict=True)]
        result["ratio_to_reference"] = _median(ratios)
        result["ratio_range"] = [min(ratios), max(ratios)]


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's cost targets on the plain path, for the (variant, interval) pairs measured."""
    report = []
    for variant, interval, target in TARGETS:
        for result in results:
            if (
                result["fastpath"] == "plain"
                and result["variant"] == variant
                and result["keyframe_interval"] == interval
                and result["ratio_to_reference"] is not None
            ):
                ratio = result["ratio_to_reference"]
                report.append(
                    {
                        "name": f"{variant} at keyframe interval {interval} vs reference",
                        "ratio": ratio,
                        "target": target,
                        "met": bool(ratio <= target),
                    }
                )
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


# -- output ------------------------------------------------------------------------------------
def format_table(report: dict[str, Any]) -> str:
    """Fixed-width text table, one row per result (stage columns are mean ms per frame)."""
    stages = [s for s in STAGES if s != "output"] + ["output"]
    width = max([10] + [len(r["variant"]) for r in report["results"]])
    header = (
        f"{'fastpath':<13} {'variant':<{width}} {'k':>3} {'mean':>8} {'p50':>8} {'p99':>8} "
        f"{'fps':>7} {'x ref':>6} {'x ref range':>11} {'spread':>6} "
        + " ".join(f"{s[:7]:>7}" for s in stages)
        + f" {'peak MB':>8} {'+MB':>6}"
    )
    meta = report["meta"]
    repeats = meta.get("repeats", 1)
    lines = [
        f"accel-ros bench: {meta['height']}x{meta['width']} on {meta['device']} "
        f"({meta['device_name']}), {meta['threads']} threads, flow {meta['flow']} at "
        f"{meta['flow_scale']}x, times in ms per frame, median of {repeats} run(s) of "
        f">= {meta['frames']} frames",
        "x ref = median over runs of mean / reference's mean in the same run (range: min-max); "
        "spread = (max - min) / median of the run means; +MB = peak above the memory in use "
        "at the start",
        header,
        "-" * len(header),
    ]
    for r in report["results"]:
        k = "-" if r["keyframe_interval"] is None else str(r["keyframe_interval"])
        ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.3f}"
        span = r.get("ratio_range")
        span_text = "" if not span else f"{span[0]:.3f}-{span[1]:.3f}"
        peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        extra = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
        lat = r["latency_ms"]
        spread = f"{lat.get('spread_pct', 0.0):5.1f}%"
        lines.append(
            f"{r['fastpath']:<13} {r['variant']:<{width}} {k:>3} {lat['mean']:8.1f} "
            f"{lat['p50']:8.1f} {lat['p99']:8.1f} {r['fps']:7.2f} {ratio:>6} {span_text:>11} "
            f"{spread:>6} "
            + " ".join(f"{r['stages_ms'][s]:7.1f}" for s in stages)
            + f" {peak:>8} {extra:>6}"
        )
    if not all(r.get("stages_synchronised", True) for r in report["results"]):
        lines.append("note: stage columns on CUDA count launches only; rerun with --breakdown")
    for target in report["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"target: {target['name']}: {target['ratio']:.3f} (<= {target['target']:.2f}) "
            f"{verdict}"
        )
    notes = sorted({note for r in report["results"] for note in r["notes"]})
    lines.extend(f"note: {note}" for note in notes)
    for row in report.get("flow_epe", {}).get("methods", []):
        lines.append(
            f"flow {row['method']:<10} end-point error {row['epe']:.3f} px "
            f"(non-occluded {row['epe_visible']:.3f}), {row['ms_median']:.1f} ms per pair"
        )
    return "\n".join(lines)


def flow_epe(
    methods: tuple[str, ...] = ("zero", "dis", "torch"),
    pairs: int = 10,
    height: int = 256,
    width: int = 512,
    scale: float = 0.5,
    seeds: tuple[int, ...] = (0, 1),
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """End-point error (px at the frame size, mean over pixels and pairs) of each flow method
    against the synthetic generator's exact backward flow, also over non-occluded pixels only,
    and the median cost per frame pair (prepare both frames + estimate, on `device`)."""
    from ..data.synthetic import generate_clip
    from ..model.flow import build_flow
    from ..model.warp import resize_flow

    device = torch.device(device)
    clips = [generate_clip(pairs + 1, height, width, seed=seed) for seed in seeds]
    rows = []
    for method in methods:
        estimator = build_flow(method, scale)
        errors, visible, costs = [], [], []
        for clip in clips:
            for t in range(1, len(clip)):
                previous, current = (
                    torch.from_numpy(clip[i].image).permute(2, 0, 1)[None].float().div(255.0)
                    .to(device) for i in (t - 1, t)
                )
                _sync(device)
                start = time.perf_counter()
                with torch.inference_mode():
                    flow = estimator(previous, current)
                _sync(device)
                costs.append((time.perf_counter() - start) * 1000.0)
                full = resize_flow(flow.float().cpu(), (height, width))[0].permute(1, 2, 0)
                error = np.linalg.norm(full.numpy() - clip[t].flow, axis=-1)
                errors.append(float(error.mean()))
                visible.append(float(error[~clip[t].occluded].mean()))
        rows.append({
            "method": method,
            "epe": float(np.mean(errors)),
            "epe_visible": float(np.mean(visible)),
            "ms_median": _median(costs),
        })
    magnitude = float(np.mean([
        np.linalg.norm(frame.flow, axis=-1).mean() for clip in clips for frame in clip[1:]
    ]))
    return {
        "height": height, "width": width, "scale": scale, "pairs": pairs * len(seeds),
        "seeds": list(seeds), "mean_flow_px": magnitude, "device": str(device),
        "methods": rows,
    }


def canonical_variant(name: str, reference_backbone: str = "resnet101") -> str:
    """'Accel-18' -> 'accel18', 'DeepLab-101' (the reference backbone) -> 'reference'."""
    key = re.sub(r"[\s_\-]", "", str(name).lower())
    depth = reference_backbone.removeprefix("resnet")
    if key in (f"deeplab{depth}", "reference", "nr", "deeplabreference"):
        return "reference"
    return key


def load_accuracy(
    path: str | Path, report: dict[str, Any]
) -> dict[str, dict[int | None, float]]:
    """mIoU in percent per variant and keyframe interval (None for every-frame variants),
    from any of the formats the module docstring lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accuracy file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of variants")
    measured = {r["variant"] for r in report["results"]}
    backbone = report["meta"].get("reference_backbone", "resnet101")
    if isinstance(data.get("per_interval"), dict):
        data = _from_eval_json(data["per_interval"], measured, path)
    accuracy: dict[str, dict[int | None, float]] = {}
    for raw_name, entry in data.items():
        name = canonical_variant(raw_name, backbone)
        every_frame = name in VARIANTS and VARIANTS[name][0] in EVERY_FRAME_MODES
        if isinstance(entry, (int, float)):
            entry = {"miou": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {raw_name!r} must be a number or an object")
        if "miou" in entry:
            interval = entry.get("keyframe_interval")
            if interval is None and not every_frame:
                interval = _default_interval(name, report)
            values = {None if every_frame else int(interval): float(entry["miou"])}
        else:
            try:
                values = {
                    None if every_frame else int(k): float(v)
                    for k, v in entry.items()
                    if v is not None
                }
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{path}: entry {raw_name!r} must map keyframe intervals to mIoU: {error}"
                ) from error
        accuracy[name] = values
    scale = 100.0 if all(v <= 1.0 for vals in accuracy.values() for v in vals.values()) else 1.0
    return {
        name: {k: v * scale for k, v in values.items()} for name, values in accuracy.items()
    }


def _from_eval_json(
    per_interval: dict[str, dict[str, float]], measured: set[str], path: Path
) -> dict[str, Any]:
    mapped: dict[str, Any] = {}
    for mode, values in per_interval.items():
        if mode in ("reference", "dff"):
            mapped[mode] = values
            continue
        candidates = sorted(v for v in measured if VARIANTS.get(v, ("",))[0] == mode)
        if len(candidates) > 1:
            raise ValueError(
                f"{path}: eval.json has one {mode!r} model but this run timed {candidates}; "
                "bench only the evaluated variant or write {variant: {interval: miou}}"
            )
        if candidates:
            mapped[candidates[0]] = {"1": values["1"]} if mode == "deeplab" else values
    return mapped


def _default_interval(variant: str, report: dict[str, Any]) -> int:
    timed = sorted(
        {
            r["keyframe_interval"]
            for r in report["results"]
            if r["variant"] == variant and r["keyframe_interval"] is not None
        }
    )
    if 5 in timed or not timed:
        return 5
    return timed[0] if len(timed) == 1 else 5


def write_plot(
    report: dict[str, Any],
    path: str | Path,
    accuracy: dict[str, dict[int | None, float]] | None = None,
) -> Path:
    """PNG of mIoU vs per-frame time (paper Fig. 4 style) when `accuracy` is given, else of
    per-frame time vs keyframe interval. Uses the plain path's timings."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    plain = [r for r in report["results"] if r["fastpath"] == "plain"]
    meta = report["meta"]
    figure = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    by_variant: dict[str, dict[int | None, float]] = {}
    for r in plain:
        by_variant.setdefault(r["variant"], {})[r["keyframe_interval"]] = r["latency_ms"]["mean"]
    if accuracy:
        points = 0
        for number, (variant, times) in enumerate(by_variant.items()):
            color = f"C{number % 10}"
            acc = accuracy.get(variant, {})
            pairs = sorted(
                (times[k], acc[k], k) for k in times if k in acc
            )
            if not pairs:
                continue
            points += len(pairs)
            xs, ys, ks = zip(*pairs, strict=True)
            if len(pairs) == 1 and ks[0] is None:
                axes.plot(xs, ys, marker="s", linestyle="none", label=variant, color=color)
                axes.annotate(variant, (xs[0], ys[0]), textcoords="offset points", xytext=(4, 4),
                              fontsize=8)
            else:
                axes.plot(xs, ys, marker="o", label=variant, color=color)
                for x, y, k in pairs:
                    axes.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(3, -9),
                                  fontsize=7)
        if points == 0:
            raise ValueError(
                "no accuracy entry matches a timed variant/interval; accuracy has "
                f"{sorted(accuracy)}, the run timed {sorted(by_variant)}"
            )
        axes.set_xlabel("per-frame time (ms)")
        axes.set_ylabel("mIoU (%)")
        axes.set_title("accuracy vs. inference time")
    else:
        for number, (variant, times) in enumerate(by_variant.items()):
            color = f"C{number % 10}"
            if None in times:
                axes.axhline(times[None], linestyle="--", linewidth=1, label=variant, color=color)
            else:
                ks = sorted(times)
                axes.plot(ks, [times[k] for k in ks], marker="o", label=variant, color=color)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("keyframe interval")
        axes.set_ylabel("per-frame time (ms)")
        axes.set_title("per-frame time vs. keyframe interval (dashed: every frame)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.text(
        0.01, 0.01, f"{meta['height']}x{meta['width']}, {meta['device_name']} ({meta['device']})",
        fontsize=7,
    )
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# -- CLI ---------------------------------------------------------------------------------------
def parse_intervals(text: str) -> tuple[int, ...]:
    """'1-10' or '1,2,3,5,10' (or a mix) -> sorted unique ints."""
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                values.update(range(low, high + 1))
            else:
                values.add(int(part))
        except ValueError as error:
            raise ValueError(f"bad keyframe interval list {text!r}: {error}") from error
    if not values:
        raise ValueError(f"no keyframe intervals in {text!r}")
    return tuple(sorted(values))


def parse_variants(text: str) -> tuple[str, ...]:
    """A comma list of variant names (loose spelling accepted), where 'all' stands for every
    Accel-family variant (not the peers) and 'peers' for the four torchvision networks."""
    names: list[str] = []
    for raw in (v.strip() for v in text.split(",")):
        if not raw:
            continue
        if raw.lower() == "all":
            names.extend(FAMILY)
        elif raw.lower() == "peers":
            names.extend(PEERS)
        elif raw.lower() in VARIANTS:
            names.append(raw.lower())
        else:
            names.append(canonical_variant(raw))
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variants {unknown or text!r}; choose from {list(VARIANTS)}")
    return tuple(names)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="per-frame latency of Accel/DFF/DeepLab variants and of the fast paths",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", default=None,
                        help="comma list of: all (the paper's family), peers (torchvision), "
                        f"{', '.join(VARIANTS)} (default all)")
    parser.add_argument("--intervals", default=None,
                        help="keyframe intervals, e.g. 1-10 or 1,2,3,5,10 (default 1-10; "
                        "with --streams one interval, default 5)")
    parser.add_argument("--height", type=int, default=None,
                        help="frame height (default 512, or 1024 on CUDA; 360 with --streams)")
    parser.add_argument("--width", type=int, default=None,
                        help="frame width (default 1024, or 2048 on CUDA; 480 with --streams)")
    parser.add_argument("--frames", type=int, default=None,
                        help="timed frames per measurement, rounded up to whole keyframe cycles "
                        "(default 20; with --streams timed frames per stream, default 40)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed frames per measurement (default 3; with --streams untimed "
                        "rounds, default one keyframe cycle)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="measure autocast at this precision against fp32")
    parser.add_argument("--channels-last", action="store_true",
                        help="measure channels_last memory format against the plain path")
    parser.add_argument("--compile", action="store_true",
                        help="measure torch.compile (slow to compile, esp. on CPU)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="measure CUDA graphs of the non-key-frame path (CUDA only)")
    parser.add_argument("--overlap-flow", action="store_true",
                        help="measure CPU flow computed beside the update branch")
    parser.add_argument("--flow", choices=FLOW_METHODS, default="dis",
                        help="flow estimator (torch stays on the device)")
    parser.add_argument("--flow-scale", type=float, default=0.5)
    parser.add_argument("--reference-backbone", default=None,
                        help="N_R of every variant (default resnet101, or the --model's own)")
    parser.add_argument("--model", default=None,
                        help="configuration of the deeplab/accel variants (and of N_R for "
                        "reference/dff): a preset name or a checkpoint ('default', a path)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole plan this many times, interleaved; report medians "
                        "and the spread")
    parser.add_argument("--breakdown", action="store_true",
                        help="CUDA: an extra synchronised pass per measurement for real stage "
                        "times (latency always comes from the unsynchronised pass)")
    parser.add_argument("--flow-epe", action="store_true",
                        help="also measure each flow method's end-point error on synthetic "
                        "clips with exact flow")
    parser.add_argument("--fast-variants", default=None,
                        help="variants for the fast-path runs (default: --variants)")
    parser.add_argument("--fast-intervals", default=None,
                        help="intervals for the fast-path runs (default: --intervals)")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help="distinct frames rendered (played back and forth; default 24, "
                        "with --streams 8 per stream)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    parser.add_argument("--accuracy", type=Path, default=None,
                        help="mIoU JSON (eval.json or {variant: ...}) for the trade-off plot")
    bench_streams.add_arguments(parser)
    parser.set_defaults(handler=main)
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        variants=parse_variants(args.variants or "all"),
        intervals=parse_intervals(args.intervals or "1-10"),
        height=args.height,
        width=args.width,
        frames=args.frames if args.frames is not None else 20,
        warmup=args.warmup if args.warmup is not None else 3,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        overlap_flow=args.overlap_flow,
        flow=args.flow,
        flow_scale=args.flow_scale,
        reference_backbone=(
            args.reference_backbone
            if args.reference_backbone is not None or args.model is not None
            else "resnet101"
        ),
        model=args.model,
        repeats=args.repeats,
        breakdown=args.breakdown,
        flow_epe=args.flow_epe,
        fast_variants=parse_variants(args.fast_variants) if args.fast_variants else None,
        fast_intervals=parse_intervals(args.fast_intervals) if args.fast_intervals else None,
        clip_frames=args.clip_frames if args.clip_frames is not None else 24,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> int:
    if getattr(args, "streams", None) is not None:
        # Several cameras: one node against separate processes (tools/bench_streams.py).
        return bench_streams.main(args)
    stray = bench_streams.streams_only_options(args)
    if stray:
        raise ValueError(f"{', '.join(stray)} only apply with --streams")
    settings = settings_from_args(args)
    if args.accuracy is not None and not args.accuracy.is_file():
        raise FileNotFoundError(f"accuracy file not found: {args.accuracy}")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run_benchmark(settings, log)
    accuracy = None
    if args.accuracy is not None:
        accuracy = load_accuracy(args.accuracy, report)
        report["accuracy"] = {
            name: {("every_frame" if k is None else str(k)): v for k, v in values.items()}
            for name, values in accuracy.items()
        }
    print(format_table(report))
    if args.json is not None:
        print(f"wrote {write_json(report, args.json)}")
    if args.plot is not None:
        print(f"wrote {write_plot(report, args.plot, accuracy)}")
    return 0
