"""`accel-ros bench`: per-frame cost of Accel, DFF and DeepLab variants (bench/variants.py),
torchvision peers, and the fast paths, on one stream.

Every variant runs in one process on the same frames, so ratios between them are comparable.
One N_R is shared by all variants whose reference branch has the same shape; timing does not
depend on weights, so models are randomly initialised unless a checkpoint is named with
`--model` ("default" or a path; a preset name gives that architecture's random weights).

Size: frames are made at `--height` x `--width` and the network runs at exactly that size
(`PipelineConfig.input_size`), whatever input size a checkpoint was trained at. Without them the
size is the `--model`'s own input size if it has one (the shipped checkpoint: 360x480), else
512x1024 on the CPU and 1024x2048 on CUDA. The header states the size that ran.

Per measurement: `--warmup` frames (both keyframe and non-key-frame paths), a cache reset,
then whole keyframe cycles of at least `--frames` frames, so the mean is the true per-frame
average (T_key + (k - 1) T_other) / k. Latency is wall clock around `process` (frame in, labels
on the host out), with a CUDA synchronise before each frame, on the production path (no
synchronise between stages). The stage breakdown is the segmenter's own: on the CPU it comes
from the same frames; on CUDA only `--breakdown` gives real per-stage numbers, from an extra
pass of the same frames that synchronises around every stage (its latency is not reported).
Peak memory is CUDA's max allocated on GPU and the process peak RSS (VmHWM, reset per
measurement where the kernel allows) on CPU; every segmenter is freed before the next is built.

Stable ratios: `--repeats N` runs the whole plan N times, interleaved (so slow drift of a busy
machine hits every variant alike); each row reports the median over the runs of its mean
per-frame time, and `x ref` is the median of the per-run ratios to the reference (same run),
with their min-max range. `--flow-epe` adds the end-point error of each flow method against
the synthetic generator's exact flow.

Fast paths given on the command line (--channels-last, --precision, --compile, --cuda-graphs,
--overlap-flow) are measured one by one against the plain fp32 path, plus all of them together
when more than one is given. Each row records what really ran (`fast_paths_ran`: graphs
captured and replayed, calls that ran eagerly, compile failures) and says so in its notes.

A `Deadline` (the device check's time box) stops the plan between frames: a cut measurement
keeps its frames and is marked incomplete, and the report's `skipped` names what did not run.

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

import contextlib
import datetime
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import BACKENDS, RANGES, ModelConfig, PipelineConfig
from ..deploy.backends import NotExportableError
from ..model import AccelNet
from ..stream import STAGES, AccelSegmenter, resolve_device
from .common import (
    NO_DEADLINE,
    Deadline,
    device_name,
    fast_path_outcome,
    free_segmenter,
    make_frames,
    median,
    new_figure,
    ping_pong,
    save_figure,
    status_mb,
    sync,
)
from .variants import (
    EVERY_FRAME_MODES,
    FAMILY,
    MODEL_KEY,
    REFERENCE_ONLY,
    VARIANTS,
    PeerSegmenter,
    build_models,
    canonical_variant,
)

FAST_PATHS = ("channels_last", "precision", "compile", "cuda_graphs", "overlap_flow")
DEFAULT_CLASSES = 11
# The settings a benchmark shares with the pipeline take the pipeline's defaults.
PIPELINE_DEFAULTS = PipelineConfig()


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on (the CLI's options, validated)."""

    variants: tuple[str, ...] = FAMILY
    intervals: tuple[int, ...] = tuple(range(1, 11))
    # None: the --model's input size, else 512x1024 on CPU, 1024x2048 on CUDA (`resolution`)
    height: int | None = None
    width: int | None = None
    frames: int = 20
    warmup: int = 3
    device: str = PIPELINE_DEFAULTS.device
    precision: str = PIPELINE_DEFAULTS.precision
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    overlap_flow: bool = False
    flow: str = PIPELINE_DEFAULTS.flow_method
    flow_scale: float = PIPELINE_DEFAULTS.flow_scale
    reference_backbone: str | None = "resnet101"  # None: the --model's own
    num_classes: int = DEFAULT_CLASSES
    fast_variants: tuple[str, ...] | None = None  # None: same as variants
    fast_intervals: tuple[int, ...] | None = None  # None: same as intervals
    clip_frames: int = 24
    seed: int = 0
    repeats: int = 1
    breakdown: bool = False
    model: str | None = None  # preset name or checkpoint ("default", a path) for deeplab/accel
    flow_epe: bool = False
    # Runtimes of the networks (config.BACKENDS); every one but torch is measured as a fast
    # path of its own, on the fast-path variants and intervals.
    backends: tuple[str, ...] = (PIPELINE_DEFAULTS.backend,)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants + (self.fast_variants or ()) if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        if not self.variants:
            raise ValueError("no variants to benchmark")
        if not self.intervals:
            raise ValueError("no keyframe intervals to benchmark")
        for interval in self.intervals + (self.fast_intervals or ()):
            RANGES["keyframe_interval"].check("keyframe_interval", interval)
        if self.frames < 1 or self.warmup < 0 or self.clip_frames < 2 or self.repeats < 1:
            raise ValueError(
                "--frames and --repeats must be >= 1, --warmup >= 0 and --clip-frames >= 2"
            )
        if (self.height is None) != (self.width is None):
            raise ValueError("give both --height and --width, or neither")
        if self.height is not None and min(self.height, self.width or 0) < 32:
            raise ValueError(f"resolution must be at least 32x32, got {self.height}x{self.width}")
        # The allowed values live in config.py: PipelineConfig/ModelConfig check them.
        PipelineConfig(precision=self.precision, flow_method=self.flow, flow_scale=self.flow_scale)
        for backend in self.backends:
            PipelineConfig(backend=backend)
        if self.reference_backbone is not None:
            ModelConfig(reference_backbone=self.reference_backbone, num_classes=self.num_classes)

    def resolution(
        self, device: torch.device, model_size: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """(height, width) every variant runs at: the requested size, else the --model's own
        input size (`model_size`), else 512x1024 on the CPU and 1024x2048 on CUDA."""
        if self.height is not None and self.width is not None:
            return self.height, self.width
        if model_size is not None:
            return int(model_size[0]), int(model_size[1])
        return (1024, 2048) if device.type == "cuda" else (512, 1024)

    def all_variants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.variants + (self.fast_variants or ())))

    def model_overrides(self) -> dict[str, Any]:
        """ModelConfig fields every Accel model gets: the reference backbone (unless the
        --model's own is kept) and the class count (unless a --model keeps its own)."""
        overrides: dict[str, Any] = {}
        if self.model is None or self.num_classes != DEFAULT_CLASSES:
            overrides["num_classes"] = self.num_classes
        if self.reference_backbone is not None:
            overrides["reference_backbone"] = self.reference_backbone
        return overrides


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
    # Other runtimes are alternatives to torch's fast paths, not one more switch to combine.
    for backend in dict.fromkeys(settings.backends):
        if not BACKENDS[backend].graphs:
            continue
        configs.append(FastPath(backend, {"backend": backend}))
        # A graph runtime's other precision (OpenVINO bf16) is a row of its own.
        precision = settings.precision
        if precision != "fp32" and precision in BACKENDS[backend].precisions:
            configs.append(FastPath(f"{backend} {precision}",
                                    {"backend": backend, "precision": precision}))
    return configs


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
            self._baseline = status_mb("VmRSS") or 0.0

    def peak(self) -> tuple[float | None, float | None]:
        """(peak MB, peak above the start of the measurement MB); None where unavailable."""
        if self.device.type == "cuda":
            peak: float | None = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = status_mb("VmHWM")
            if peak is None:
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return peak, (max(peak - self._baseline, 0.0) if peak is not None else None)


def cycle_frames(frames: int, interval: int | None) -> int:
    """Timed frames: `frames` rounded up to whole keyframe cycles."""
    if interval is None or interval <= 1:
        return frames
    return math.ceil(frames / interval) * interval


Segmenter = AccelSegmenter | PeerSegmenter


def _warm_up(segmenter: Segmenter, frames: list[np.ndarray], warmup: int,
             deadline: Deadline) -> int | None:
    """Run the warm-up frames; returns the next frame index, or None if the deadline cut it.
    Warm-up must see a non-key frame too (flow, warp, N_U paths; graph capture; compile)."""
    count = max(warmup, 2 if warmup else 0)
    for index in range(count):
        if deadline.expired():
            return None
        segmenter.process(ping_pong(frames, index))
    return count


def _timed_pass(
    segmenter: Segmenter, frames: list[np.ndarray], start: int, timed: int, deadline: Deadline
) -> tuple[list[float], list[dict[str, float]], list[bool]]:
    """Latency (ms), stage timings and keyframe flags of up to `timed` frames (fewer if the
    deadline passes first)."""
    latencies, timings, keyframe_flags = [], [], []
    for offset in range(timed):
        if deadline.expired():
            break
        frame = ping_pong(frames, start + offset)
        sync(segmenter.device)
        begin = time.perf_counter()
        result = segmenter.process(frame)
        sync(segmenter.device)  # labels are already on the host; this only guards changes
        latencies.append((time.perf_counter() - begin) * 1000.0)
        timings.append(result.timings)
        keyframe_flags.append(result.is_keyframe)
    return latencies, timings, keyframe_flags


def _synchronised_stages(
    segmenter: Segmenter, frames: list[np.ndarray], start: int, count: int, deadline: Deadline
) -> list[dict[str, float]]:
    """Stage timings of the same frames again with a synchronise around every stage (CUDA)."""
    segmenter.reset()
    segmenter.sync_stages = True
    timings = []
    try:
        for offset in range(count):
            if deadline.expired():
                break
            timings.append(segmenter.process(ping_pong(frames, start + offset)).timings)
    finally:
        segmenter.sync_stages = False
    return timings


def measure(
    segmenter: Segmenter,
    frames: list[np.ndarray],
    timed: int,
    warmup: int,
    memory: MemoryProbe,
    breakdown: bool = False,
    deadline: Deadline = NO_DEADLINE,
) -> dict[str, Any] | None:
    """Warm up, reset the cache, then time `timed` frames. Returns the numbers of one run, or
    None when the deadline passed before a frame was timed; a run the deadline cut has
    `complete` False and counts the frames it timed.

    Latency is the production path's (no per-stage synchronise). On CUDA the stage times of
    that pass count launches only, so with `breakdown` the same frames run once more with
    `sync_stages` and the stage columns come from that pass; on the CPU one pass gives both."""
    device = segmenter.device
    start = _warm_up(segmenter, frames, warmup, deadline)
    if start is None:
        return None
    segmenter.reset()
    memory.start()
    latencies, timings, flags = _timed_pass(segmenter, frames, start, timed, deadline)
    if not latencies:
        return None
    peak, extra = memory.peak()
    synchronised = device.type != "cuda"
    if breakdown and device.type == "cuda":
        synced = _synchronised_stages(segmenter, frames, start, len(latencies), deadline)
        if len(synced) == len(latencies):
            timings, synchronised = synced, True
    return _run_numbers(latencies, timings, flags, timed, synchronised, peak, extra)


def _run_numbers(
    latencies: list[float], timings: list[dict[str, float]], keyframe_flags: list[bool],
    planned: int, synchronised: bool, peak: float | None, extra: float | None,
) -> dict[str, Any]:
    values = np.asarray(latencies)
    flags = np.asarray(keyframe_flags)
    mean = float(values.mean())
    return {
        "frames": len(latencies),
        "complete": len(latencies) == planned,
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


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from `measure`'s numbers of repeated runs: medians over runs (latency
    statistics, stage times), the per-run means (`latency_ms.runs`) and their spread
    (`latency_ms.spread_pct` = (max - min) / median in %), the largest peak memory."""
    means = [r["latency_ms"]["mean"] for r in runs]
    latency: dict[str, Any] = {}
    for key in ("mean", "p50", "p99", "keyframe", "non_keyframe"):
        values = [r["latency_ms"][key] for r in runs if r["latency_ms"][key] is not None]
        latency[key] = median(values) if values else None
    latency["runs"] = means
    latency["spread_pct"] = (
        100.0 * (max(means) - min(means)) / latency["mean"] if latency["mean"] else 0.0
    )
    peaks = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
    extras = [r["peak_extra_mb"] for r in runs if r["peak_extra_mb"] is not None]
    stages = runs[0]["stages_ms"].keys()
    return {
        "frames": runs[0]["frames"],
        "complete": all(r.get("complete", True) for r in runs),
        "keyframes": runs[0]["keyframes"],
        "repeats": len(runs),
        "latency_ms": latency,
        "fps": 1000.0 / latency["mean"] if latency["mean"] else 0.0,
        "stages_ms": {s: median([r["stages_ms"][s] for r in runs]) for s in stages},
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
    size: tuple[int, int],
) -> Segmenter:
    """The segmenter one measurement times (a fresh one per measurement), running the
    network at exactly `size` (frames are made at that size too)."""
    mode, source = VARIANTS[variant]
    pipeline = PipelineConfig(
        mode="reference" if mode == "peer" else mode,
        keyframe_interval=interval or 1,
        device=str(device),
        flow_method=settings.flow,
        flow_scale=settings.flow_scale,
        input_size=size,
        **fast.fields,
    )
    if mode == "peer":
        classes = next(iter(models.values())).config.num_classes if models else (
            settings.num_classes
        )
        assert source is not None
        return PeerSegmenter(source, classes, pipeline)
    model = models[source or REFERENCE_ONLY]
    # channels_last converts the (shared) model in place; undo it for other configs.
    model.to(memory_format=torch.channels_last if fast.fields.get("channels_last") else (
        torch.contiguous_format
    ))
    return AccelSegmenter(model, pipeline)


PlanEntry = tuple[FastPath, str, int | None]


def _plan(settings: BenchSettings) -> Iterator[PlanEntry]:
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


def _entry_name(entry: PlanEntry) -> str:
    fast, variant, interval = entry
    return f"{fast.name} {variant} " + ("every frame" if interval is None else f"k={interval}")


@dataclass
class _Measured:
    """The runs of one plan entry and what its fast paths really did in the last of them."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ran: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Context:
    """What every measurement of one benchmark run shares."""

    settings: BenchSettings
    models: dict[str, AccelNet]
    clip: list[np.ndarray]
    size: tuple[int, int]
    device: torch.device
    memory: MemoryProbe
    log: Callable[[str], None]
    deadline: Deadline


def _measure_entry(context: _Context, entry: PlanEntry, into: _Measured) -> str | None:
    """One measurement of `entry`, appended to `into`; the reason if nothing was timed."""
    fast, variant, interval = entry
    settings = context.settings
    segmenter = make_segmenter(settings, context.models, fast, variant, interval,
                               context.device, context.size)
    try:
        run = measure(segmenter, context.clip, cycle_frames(settings.frames, interval),
                      settings.warmup, context.memory, settings.breakdown, context.deadline)
        into.notes = list(segmenter.fast_path_notes)
        into.ran = fast_path_outcome(segmenter)
    except NotExportableError as error:
        return str(error)
    finally:
        free_segmenter(segmenter)  # peers and graphs must not inflate the next row's peak
        del segmenter
    if run is None:
        return "deadline passed during warm-up"
    into.runs.append(run)
    if not run["complete"]:
        into.notes.append(f"stopped at the deadline after {run['frames']} timed frames")
    return None


def _measure_plan(
    context: _Context, plan: list[PlanEntry]
) -> tuple[list[_Measured], list[str]]:
    """Every entry `repeats` times, interleaved. Returns the measurements (same order as
    `plan`) and the names of the runs the deadline left out."""
    repeats = context.settings.repeats
    measured = [_Measured() for _ in plan]
    skipped: list[str] = []
    for repeat in range(repeats):
        for number, entry in enumerate(plan):
            label = f"run {repeat + 1}/{repeats}: {_entry_name(entry)}"
            if context.deadline.expired():
                skipped.append(f"{label} (deadline)")
                continue
            reason = _measure_entry(context, entry, measured[number])
            if reason is not None:
                skipped.append(f"{label} ({reason})")
                continue
            mean = measured[number].runs[-1]["latency_ms"]["mean"]
            context.log(f"[run {repeat + 1}/{repeats}, {number + 1}/{len(plan)}] "
                        f"{_entry_name(entry):<40} {mean:9.1f} ms/frame")
    return measured, skipped


def run_benchmark(
    settings: BenchSettings,
    log: Callable[[str], None] | None = None,
    deadline: Deadline = NO_DEADLINE,
) -> dict[str, Any]:
    """Measure every (fast path, variant, interval), `settings.repeats` times interleaved,
    until `deadline`; returns the JSON-ready report (`skipped` names what did not run)."""
    device = resolve_device(settings.device)
    started = time.perf_counter()
    models = build_models(settings.all_variants(), settings.model, **settings.model_overrides())
    size = settings.resolution(device, _model_input_size(settings, models))
    plan = list(_plan(settings))
    longest = settings.warmup + 2 + max(cycle_frames(settings.frames, k) for _, _, k in plan)
    clip, source = make_frames(min(longest, settings.clip_frames), size[0], size[1],
                               settings.seed)
    context = _Context(settings, models, clip, size, device, MemoryProbe(device),
                       log or (lambda message: None), deadline)
    measured, skipped = _measure_plan(context, plan)
    results = [
        {"variant": variant, "mode": VARIANTS[variant][0], "fastpath": fast.name,
         "keyframe_interval": interval, **aggregate_runs(m.runs), "notes": m.notes,
         "fast_paths_ran": m.ran}
        for (fast, variant, interval), m in zip(plan, measured, strict=True) if m.runs
    ]
    _add_ratios(results)
    meta = _meta(settings, models, context, source, started)
    report: dict[str, Any] = {"meta": meta, "results": results, "skipped": skipped}
    if settings.flow_epe:
        report["flow_epe"] = flow_epe(device=device, scale=settings.flow_scale, deadline=deadline)
    return report


def _model_input_size(
    settings: BenchSettings, models: dict[str, AccelNet]
) -> tuple[int, int] | None:
    """The input size the --model was trained at (None without --model or without one)."""
    if settings.model is None:
        return None
    for name in (MODEL_KEY, REFERENCE_ONLY):
        if name in models:
            return models[name].config.input_size
    return None


def _meta(
    settings: BenchSettings, models: dict[str, AccelNet], context: _Context, source: str,
    started: float,
) -> dict[str, Any]:
    reference = settings.reference_backbone or (
        models[MODEL_KEY].config.reference_backbone if MODEL_KEY in models else "resnet101"
    )
    return {
        "device": str(context.device),
        "device_name": device_name(context.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # The size every variant ran at: frames and network input alike.
        "height": context.size[0],
        "width": context.size[1],
        "frames": settings.frames,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "flow": settings.flow,
        "flow_scale": settings.flow_scale,
        "model": settings.model,
        "reference_backbone": reference,
        "num_classes": settings.num_classes,
        "frame_source": source + f", {len(context.clip)} frames played back and forth",
        "memory": context.memory.kind,
        "weights": "random init (timing does not depend on weights)",
        "seconds": round(time.perf_counter() - started, 1),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _add_ratios(results: list[dict[str, Any]]) -> None:
    """ratio_to_reference: the median over runs of (this run's mean / `reference`'s mean in
    the same run), within the same fast path, or against the plain path's `reference` where
    that fast path did not time it; ratio_range: (min, max) of those per-run ratios.
    ratio_to_plain: the same against the plain path's row of the same variant and keyframe
    interval (what a fast path or another backend buys); None on plain rows."""
    def runs(result: dict[str, Any]) -> list[float]:
        return result["latency_ms"].get("runs", [result["latency_ms"]["mean"]])

    reference = {r["fastpath"]: runs(r) for r in results if r["variant"] == "reference"}
    plain = {(r["variant"], r.get("keyframe_interval")): runs(r)
             for r in results if r["fastpath"] == "plain"}
    for result in results:
        own = runs(result)
        base = reference.get(result["fastpath"], reference.get("plain"))
        result["ratio_to_reference"], result["ratio_range"] = _run_ratios(own, base)
        same = (None if result["fastpath"] == "plain"
                else plain.get((result["variant"], result.get("keyframe_interval"))))
        result["ratio_to_plain"], result["ratio_to_plain_range"] = _run_ratios(own, same)


def _run_ratios(
    own: list[float], base: list[float] | None
) -> tuple[float | None, list[float] | None]:
    """Median and (min, max) of per-run ratios own / base; (None, None) without a base."""
    if not base or len(base) != len(own) or min(base) <= 0:
        return None, None
    ratios = [mine / ref for mine, ref in zip(own, base, strict=True)]
    return median(ratios), [min(ratios), max(ratios)]


# -- output ------------------------------------------------------------------------------------
def format_table(report: dict[str, Any]) -> str:
    """Fixed-width text table, one row per result (stage columns are mean ms per frame)."""
    stages = [s for s in STAGES if s != "output"] + ["output"]
    width = max([10] + [len(r["variant"]) for r in report["results"]])
    header = (
        f"{'fastpath':<13} {'variant':<{width}} {'k':>3} {'mean':>8} {'p50':>8} {'p99':>8} "
        f"{'fps':>7} {'x ref':>6} {'x ref range':>11} {'x plain':>7} {'spread':>6} "
        + " ".join(f"{s[:7]:>7}" for s in stages)
        + f" {'peak MB':>8} {'+MB':>6}"
    )
    meta = report["meta"]
    lines = [
        f"accel-ros bench: {meta['height']}x{meta['width']} on {meta['device']} "
        f"({meta['device_name']}), {meta['threads']} threads, flow {meta['flow']} at "
        f"{meta['flow_scale']}x, times in ms per frame, median of {meta.get('repeats', 1)} "
        f"run(s) of >= {meta['frames']} frames",
        "x ref = median over runs of mean / reference's mean in the same run (range: min-max); "
        "x plain = the same against the plain path's row of this variant and k; "
        "spread = (max - min) / median of the run means; +MB = peak above the memory in use "
        "at the start",
        header,
        "-" * len(header),
    ]
    lines.extend(_table_row(r, width, stages) for r in report["results"])
    if not all(r.get("stages_synchronised", True) for r in report["results"]):
        lines.append("note: stage columns on CUDA count launches only; rerun with --breakdown")
    notes = sorted({note for r in report["results"] for note in r["notes"]})
    lines.extend(f"note: {note}" for note in notes)
    lines.extend(f"not run: {name}" for name in report.get("skipped", []))
    for row in report.get("flow_epe", {}).get("methods", []):
        lines.append(
            f"flow {row['method']:<10} end-point error {row['epe']:.3f} px "
            f"(non-occluded {row['epe_visible']:.3f}), {row['ms_median']:.1f} ms per pair"
        )
    return "\n".join(lines)


def _table_row(r: dict[str, Any], width: int, stages: list[str]) -> str:
    k = "-" if r["keyframe_interval"] is None else str(r["keyframe_interval"])
    ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.3f}"
    span = r.get("ratio_range")
    span_text = "" if not span else f"{span[0]:.3f}-{span[1]:.3f}"
    to_plain = "" if r.get("ratio_to_plain") is None else f"{r['ratio_to_plain']:.3f}"
    peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
    extra = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
    lat = r["latency_ms"]
    spread = f"{lat.get('spread_pct', 0.0):5.1f}%"
    return (
        f"{r['fastpath']:<13} {r['variant']:<{width}} {k:>3} {lat['mean']:8.1f} "
        f"{lat['p50']:8.1f} {lat['p99']:8.1f} {r['fps']:7.2f} {ratio:>6} {span_text:>11} "
        f"{to_plain:>7} {spread:>6} "
        + " ".join(f"{r['stages_ms'][s]:7.1f}" for s in stages)
        + f" {peak:>8} {extra:>6}"
    )


def flow_epe(
    methods: tuple[str, ...] = ("zero", "dis", "torch"),
    pairs: int = 10,
    height: int = 256,
    width: int = 512,
    scale: float = 0.5,
    seeds: tuple[int, ...] = (0, 1),
    device: torch.device | str = "cpu",
    deadline: Deadline = NO_DEADLINE,
) -> dict[str, Any]:
    """End-point error (px at the frame size, mean over pixels and pairs) of each flow method
    against the synthetic generator's exact backward flow, also over non-occluded pixels only,
    and the median cost per frame pair (prepare both frames + estimate, on `device`). Methods
    the deadline leaves out are named in `skipped`; a cut method reports the pairs it ran."""
    from ..data.synthetic import generate_clip

    device = torch.device(device)
    clips = [generate_clip(pairs + 1, height, width, seed=seed) for seed in seeds]
    rows, skipped = [], []
    for method in methods:
        if deadline.expired():
            skipped.append(method)
            continue
        row = _flow_method_epe(method, clips, scale, device, deadline)
        if row is None:
            skipped.append(method)
        else:
            rows.append(row)
    magnitude = float(np.mean([
        np.linalg.norm(frame.flow, axis=-1).mean() for clip in clips for frame in clip[1:]
    ]))
    return {
        "height": height, "width": width, "scale": scale, "pairs": pairs * len(seeds),
        "seeds": list(seeds), "mean_flow_px": magnitude, "device": str(device),
        "methods": rows, "skipped": skipped,
    }


def _flow_method_epe(
    method: str, clips: list[list[Any]], scale: float, device: torch.device, deadline: Deadline
) -> dict[str, Any] | None:
    from ..model.flow import build_flow
    from ..model.warp import resize_flow

    estimator = build_flow(method, scale)
    errors, visible, costs = [], [], []
    for clip in clips:
        height, width = clip[0].image.shape[:2]
        for t in range(1, len(clip)):
            if deadline.expired():
                break
            previous, current = (
                torch.from_numpy(clip[i].image).permute(2, 0, 1)[None].float().div(255.0)
                .to(device) for i in (t - 1, t)
            )
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode():
                flow = estimator(previous, current)
            sync(device)
            costs.append((time.perf_counter() - start) * 1000.0)
            full = resize_flow(flow.float().cpu(), (height, width))[0].permute(1, 2, 0)
            error = np.linalg.norm(full.numpy() - clip[t].flow, axis=-1)
            errors.append(float(error.mean()))
            visible.append(float(error[~clip[t].occluded].mean()))
    if not errors:
        return None
    return {"method": method, "epe": float(np.mean(errors)),
            "epe_visible": float(np.mean(visible)), "ms_median": median(costs),
            "pairs": len(errors)}


# -- accuracy (paper Fig. 4) -------------------------------------------------------------------
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
    accuracy = {
        canonical_variant(raw_name, backbone): _accuracy_entry(
            canonical_variant(raw_name, backbone), raw_name, entry, report, path
        )
        for raw_name, entry in data.items()
    }
    scale = 100.0 if all(v <= 1.0 for vals in accuracy.values() for v in vals.values()) else 1.0
    return {
        name: {k: v * scale for k, v in values.items()} for name, values in accuracy.items()
    }


def _accuracy_entry(
    name: str, raw_name: str, entry: Any, report: dict[str, Any], path: Path
) -> dict[int | None, float]:
    """One variant's {interval (None: every frame): mIoU} from its accuracy-file entry."""
    every_frame = name in VARIANTS and VARIANTS[name][0] in EVERY_FRAME_MODES
    if isinstance(entry, (int, float)):
        entry = {"miou": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: entry {raw_name!r} must be a number or an object")
    if "miou" in entry:
        interval = entry.get("keyframe_interval")
        if interval is None and not every_frame:
            interval = _default_interval(name, report)
        return {None if every_frame else int(interval): float(entry["miou"])}
    try:
        return {
            None if every_frame else int(k): float(v) for k, v in entry.items() if v is not None
        }
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: entry {raw_name!r} must map keyframe intervals to mIoU: {error}"
        ) from error


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


# -- plots -------------------------------------------------------------------------------------
def _series_times(report: dict[str, Any]) -> dict[tuple[str, str], dict[int | None, float]]:
    """{(variant, runtime): {keyframe interval: mean ms}} of the plain path (runtime "torch")
    and of every other backend's rows (runtime = that row's fast-path name)."""
    runtimes = {"plain": "torch"} | {
        r["fastpath"]: r["fastpath"] for r in report["results"]
        if r["fastpath"].split()[0] in BACKENDS and r["fastpath"] != "torch"
    }
    series: dict[tuple[str, str], dict[int | None, float]] = {}
    for r in report["results"]:
        if r["fastpath"] in runtimes:
            key = (r["variant"], runtimes[r["fastpath"]])
            series.setdefault(key, {})[r["keyframe_interval"]] = r["latency_ms"]["mean"]
    return series


def _series_label(variant: str, runtime: str) -> str:
    return variant if runtime == "torch" else f"{variant} ({runtime})"


def draw_times(axes: Any, report: dict[str, Any]) -> None:
    """Per-frame time vs keyframe interval of the plain path and of other backends (dashed:
    every-frame variants)."""
    from matplotlib.ticker import MaxNLocator

    for number, ((variant, runtime), times) in enumerate(_series_times(report).items()):
        color, label = f"C{number % 10}", _series_label(variant, runtime)
        if None in times:
            axes.axhline(times[None], linestyle="--", linewidth=1, label=label, color=color)
        else:
            ks = sorted(k for k in times if k is not None)
            axes.plot(ks, [times[k] for k in ks], marker="o", label=label, color=color)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("keyframe interval")
    axes.set_ylabel("per-frame time (ms)")
    axes.set_title("per-frame time vs. keyframe interval (dashed: every frame)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def draw_tradeoff(
    axes: Any, report: dict[str, Any], accuracy: dict[str, dict[int | None, float]]
) -> None:
    """mIoU vs per-frame time of the plain path and of other backends (paper Fig. 4 style).
    A backend's points carry the variant's mIoU (its labels match torch fp32's; docs/deploy.md
    gives the agreement)."""
    series = _series_times(report)
    points = 0
    for number, ((variant, runtime), times) in enumerate(series.items()):
        color, label = f"C{number % 10}", _series_label(variant, runtime)
        acc = accuracy.get(variant, {})
        pairs = sorted(((times[k], acc[k], k) for k in times if k in acc),
                       key=lambda p: (p[0], p[1]))
        if not pairs:
            continue
        points += len(pairs)
        xs, ys, ks = zip(*pairs, strict=True)
        if len(pairs) == 1 and ks[0] is None:
            axes.plot(xs, ys, marker="s", linestyle="none", label=label, color=color)
            axes.annotate(label, (xs[0], ys[0]), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
        else:
            axes.plot(xs, ys, marker="o", label=label, color=color)
            for x, y, k in pairs:
                axes.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(3, -9),
                              fontsize=7)
    if points == 0:
        raise ValueError(
            "no accuracy entry matches a timed variant/interval; accuracy has "
            f"{sorted(accuracy)}, the run timed {sorted({v for v, _ in series})}"
        )
    axes.set_xlabel("per-frame time (ms)")
    axes.set_ylabel("mIoU (%)")
    axes.set_title("accuracy vs. inference time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def plot_footer(report: dict[str, Any]) -> str:
    meta = report["meta"]
    return f"{meta['height']}x{meta['width']}, {meta['device_name']} ({meta['device']})"


def write_plot(
    report: dict[str, Any],
    path: str | Path,
    accuracy: dict[str, dict[int | None, float]] | None = None,
) -> Path:
    """PNG of mIoU vs per-frame time (paper Fig. 4 style) when `accuracy` is given, else of
    per-frame time vs keyframe interval. Uses the plain path's timings."""
    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot(1, 1, 1)
    if accuracy:
        draw_tradeoff(axes, report, accuracy)
    else:
        draw_times(axes, report)
    return save_figure(figure, path, plot_footer(report))
