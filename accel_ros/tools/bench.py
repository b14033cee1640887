"""`accel-ros bench`: per-frame cost of Accel, DFF and DeepLab variants, and of the fast paths.

Every variant runs in one process on the same frames, so ratios between them are comparable:

- `reference`: N_R (DeepLab on the reference backbone, ResNet-101 by default) on every frame.
- `dff`: N_R on keyframes, warped features + N_R's head elsewhere (no update branch).
- `deeplab18/34/50`: the update network N_U alone on every frame.
- `accel18/34/50/101`: the paper's presets (score fusion; feature fusion for Accel-101).

One N_R is shared by all variants whose reference branch has the same shape; timing does not
depend on weights, so models are randomly initialised. Per measurement: `--warmup` frames (both
keyframe and non-key-frame paths), a cache reset, then whole keyframe cycles of at least
`--frames` frames, so the mean is the true per-frame average (T_key + (k - 1) T_other) / k.
Latency is wall clock around `AccelSegmenter.process` (frame in, labels on the host out), with
a CUDA synchronise before each frame; the stage breakdown is the segmenter's own (it
synchronises around stages on CUDA). Peak memory is CUDA's max allocated on GPU and the
process peak RSS (VmHWM, reset per measurement where the kernel allows) on CPU.

Fast paths given on the command line (--channels-last, --precision, --compile, --cuda-graphs,
--overlap-flow) are measured one by one against the plain fp32 path, plus all of them together
when more than one is given.

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

from ..config import ModelConfig, PipelineConfig, preset
from ..model import STAGES, AccelNet, AccelSegmenter, resolve_device

# variant -> (pipeline mode, preset that supplies the update branch or None)
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
}
EVERY_FRAME_MODES = ("reference", "deeplab")  # no keyframes: the interval does not apply
FAST_PATHS = ("channels_last", "precision", "compile", "cuda_graphs", "overlap_flow")
# Issue #5 targets (paper: Accel-18 0.170 s vs DeepLab-101 0.287 s per frame): reported only.
TARGETS = (("accel18", 5, 0.45), ("dff", 5, 0.40))
# Rendering the synthetic scene costs ~seconds per frame at 1024x2048: render at most this and
# resize; the motion (and so DIS's work) scales with the frame.
MAX_RENDER = (256, 512)


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on (the CLI's options, validated)."""

    variants: tuple[str, ...] = tuple(VARIANTS)
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
    reference_backbone: str = "resnet101"
    num_classes: int = 11
    fast_variants: tuple[str, ...] | None = None  # None: same as variants
    fast_intervals: tuple[int, ...] | None = None  # None: same as intervals
    clip_frames: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants + (self.fast_variants or ()) if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        if not self.variants:
            raise ValueError("no variants to benchmark")
        if not self.intervals or min(self.intervals + (self.fast_intervals or (1,))) < 1:
            raise ValueError(f"keyframe intervals must be >= 1, got {self.intervals}")
        if self.frames < 1 or self.warmup < 0 or self.clip_frames < 2:
            raise ValueError("--frames must be >= 1, --warmup >= 0 and --clip-frames >= 2")
        if (self.height is None) != (self.width is None):
            raise ValueError("give both --height and --width, or neither")
        if self.height is not None and min(self.height, self.width or 0) < 32:
            raise ValueError(f"resolution must be at least 32x32, got {self.height}x{self.width}")
        PipelineConfig(precision=self.precision, flow_method=self.flow, flow_scale=self.flow_scale)
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


def build_models(settings: BenchSettings) -> dict[str, AccelNet]:
    """One AccelNet per preset the variants need ("reference-only" for reference/dff), all
    sharing a single N_R when their reference branches have the same shape."""
    names = {VARIANTS[v][1] or "reference-only" for v in _all_variants(settings)}
    models: dict[str, AccelNet] = {}
    shared: dict[tuple, torch.nn.Module] = {}
    for name in sorted(names):
        reference_only = name == "reference-only"
        config = ModelConfig(update_backbone=None) if reference_only else preset(name)
        config = dataclasses.replace(
            config,
            reference_backbone=settings.reference_backbone,
            num_classes=settings.num_classes,
            flow_net=settings.flow == "flownet",
        )
        model = AccelNet(config).eval()
        key = _structure(model.reference)
        if key in shared:
            model.reference = shared[key]  # type: ignore[assignment]
        else:
            shared[key] = model.reference
        if model.flow_net is not None:
            # One flow network too: it is part of the per-frame cost, not of a variant.
            model.flow_net = next(
                (m.flow_net for m in models.values() if m.flow_net is not None), model.flow_net
            )
        models[name] = model
    return models


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
    segmenter: AccelSegmenter,
    frames: list[np.ndarray],
    timed: int,
    warmup: int,
    memory: MemoryProbe,
) -> dict[str, Any]:
    """Warm up, reset the cache, then time `timed` frames. Returns the numbers of one result."""
    device = segmenter.device
    index = 0
    # Warm-up must see a non-key frame too (flow, warp, N_U paths; graph capture; compile).
    for _ in range(max(warmup, 2 if warmup else 0)):
        segmenter.process(ping_pong(frames, index))
        index += 1
    segmenter.reset()
    memory.start()
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
        "peak_memory_mb": peak,
        "peak_extra_mb": extra,
    }


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure every (fast path, variant, interval); returns the JSON-ready report."""
    log = log or (lambda message: None)
    device = resolve_device(settings.device)
    height, width = settings.resolution(device)
    models = build_models(settings)
    plan = list(_plan(settings))
    longest = settings.warmup + 2 + max(cycle_frames(settings.frames, k) for _, _, k in plan)
    clip, source = make_frames(min(longest, settings.clip_frames), height, width, settings.seed)
    memory = MemoryProbe(device)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for number, (fast, variant, interval) in enumerate(plan, 1):
        mode, preset_name = VARIANTS[variant]
        model = models[preset_name or "reference-only"]
        # channels_last converts the (shared) model in place; undo it for other configs.
        memory_format = torch.channels_last if fast.fields.get("channels_last") else (
            torch.contiguous_format
        )
        model.to(memory_format=memory_format)
        pipeline = PipelineConfig(
            mode=mode,
            keyframe_interval=interval or 1,
            device=str(device),
            flow_method=settings.flow,
            flow_scale=settings.flow_scale,
            **fast.fields,
        )
        segmenter = AccelSegmenter(model, pipeline)
        try:
            numbers = measure(
                segmenter, clip, cycle_frames(settings.frames, interval), settings.warmup, memory
            )
        finally:
            segmenter.close()
        result = {
            "variant": variant,
            "mode": mode,
            "fastpath": fast.name,
            "keyframe_interval": interval,
            **numbers,
            "notes": segmenter.fast_path_notes,
        }
        results.append(result)
        shown = "every frame" if interval is None else f"k={interval}"
        log(
            f"[{number}/{len(plan)}] {fast.name:<13} {variant:<10} {shown:<11} "
            f"{result['latency_ms']['mean']:9.1f} ms/frame"
        )
    _add_ratios(results)
    return {
        "meta": {
            "device": str(device),
            "device_name": _device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "height": height,
            "width": width,
            "frames": settings.frames,
            "warmup": settings.warmup,
            "flow": settings.flow,
            "flow_scale": settings.flow_scale,
            "reference_backbone": settings.reference_backbone,
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
    """ratio_to_reference: mean per-frame time / `reference`'s within the same fast path, or
    the plain path's `reference` where that fast path did not time it."""
    reference = {
        r["fastpath"]: r["latency_ms"]["mean"] for r in results if r["variant"] == "reference"
    }
    for result in results:
        base = reference.get(result["fastpath"], reference.get("plain"))
        result["ratio_to_reference"] = (
            result["latency_ms"]["mean"] / base if base else None
        )


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
    header = (
        f"{'fastpath':<13} {'variant':<10} {'k':>3} {'mean':>8} {'p50':>8} {'p99':>8} "
        f"{'fps':>7} {'x ref':>6} " + " ".join(f"{s[:7]:>7}" for s in stages)
        + f" {'peak MB':>8} {'+MB':>6}"
    )
    meta = report["meta"]
    lines = [
        f"accel-ros bench: {meta['height']}x{meta['width']} on {meta['device']} "
        f"({meta['device_name']}), {meta['threads']} threads, flow {meta['flow']} at "
        f"{meta['flow_scale']}x, times in ms per frame",
        "x ref = mean / reference's mean; +MB = peak above the memory in use at the start",
        header,
        "-" * len(header),
    ]
    for r in report["results"]:
        k = "-" if r["keyframe_interval"] is None else str(r["keyframe_interval"])
        ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.3f}"
        peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        extra = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
        lat = r["latency_ms"]
        lines.append(
            f"{r['fastpath']:<13} {r['variant']:<10} {k:>3} {lat['mean']:8.1f} {lat['p50']:8.1f} "
            f"{lat['p99']:8.1f} {r['fps']:7.2f} {ratio:>6} "
            + " ".join(f"{r['stages_ms'][s]:7.1f}" for s in stages)
            + f" {peak:>8} {extra:>6}"
        )
    for target in report["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"target: {target['name']}: {target['ratio']:.3f} (<= {target['target']:.2f}) "
            f"{verdict}"
        )
    notes = sorted({note for r in report["results"] for note in r["notes"]})
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


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
    """'all' or a comma list of variant names (loose spelling accepted)."""
    if text.strip().lower() == "all":
        return tuple(VARIANTS)
    names = tuple(dict.fromkeys(canonical_variant(v) for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variants {unknown or text!r}; choose from {list(VARIANTS)}")
    return names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="per-frame latency of Accel/DFF/DeepLab variants and of the fast paths",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", default="all",
                        help=f"'all' or a comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--intervals", default="1-10",
                        help="keyframe intervals, e.g. 1-10 or 1,2,3,5,10")
    parser.add_argument("--height", type=int, default=None,
                        help="frame height (default 512, or 1024 on CUDA)")
    parser.add_argument("--width", type=int, default=None,
                        help="frame width (default 1024, or 2048 on CUDA)")
    parser.add_argument("--frames", type=int, default=20,
                        help="timed frames per measurement (rounded up to whole keyframe cycles)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per measurement")
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
    parser.add_argument("--flow", choices=("dis", "farneback", "flownet", "torch", "zero"),
                        default="dis", help="flow estimator (torch/flownet stay on the device)")
    parser.add_argument("--flow-scale", type=float, default=0.5)
    parser.add_argument("--reference-backbone", default="resnet101",
                        help="N_R of every variant (resnet34 times the shipped camvid34 model "
                        "as accel18)")
    parser.add_argument("--fast-variants", default=None,
                        help="variants for the fast-path runs (default: --variants)")
    parser.add_argument("--fast-intervals", default=None,
                        help="intervals for the fast-path runs (default: --intervals)")
    parser.add_argument("--clip-frames", type=int, default=24,
                        help="distinct frames rendered (played back and forth)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    parser.add_argument("--accuracy", type=Path, default=None,
                        help="mIoU JSON (eval.json or {variant: ...}) for the trade-off plot")
    parser.set_defaults(handler=main)
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        variants=parse_variants(args.variants),
        intervals=parse_intervals(args.intervals),
        height=args.height,
        width=args.width,
        frames=args.frames,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        overlap_flow=args.overlap_flow,
        flow=args.flow,
        flow_scale=args.flow_scale,
        reference_backbone=args.reference_backbone,
        fast_variants=parse_variants(args.fast_variants) if args.fast_variants else None,
        fast_intervals=parse_intervals(args.fast_intervals) if args.fast_intervals else None,
        clip_frames=args.clip_frames,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> int:
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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    if args.plot is not None:
        print(f"wrote {write_plot(report, args.plot, accuracy)}")
    return 0
