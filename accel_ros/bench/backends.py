"""Timing backends against each other on the same frames, interleaved in one process.

`time_backends` is what a benchmark calls: every backend and setting has its own
`AccelSegmenter`, and each frame of the clip goes through all of them in turn (the order
rotating frame by frame), so load from other processes on a shared CPU falls on all of them
alike. It reports frame-to-labels milliseconds per frame (flow, warp and output included) as
the median over rounds, with the fastest and slowest round, and the ratio to torch as the
median of per-round ratios (each round's torch clip ran interleaved with it). It changes no
process-wide thread setting: the caller chooses threads (`runtime.set_threads`) first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import BACKENDS, PipelineConfig
from ..model.accel import AccelNet
from ..stream import STAGES, AccelSegmenter

# (mode, keyframe interval): the reference branch on every frame, and Accel with k = 5.
DEFAULT_SETTINGS = (("reference", 1), ("accel", 5))


@dataclass
class BackendTiming:
    """One backend at one setting: ms per frame, frame to labels, over `rounds` clips."""

    backend: str
    mode: str
    keyframe_interval: int
    ms_per_frame: float  # median over rounds of the clip's mean
    fastest: float  # the fastest round's mean
    slowest: float
    rounds: int
    frames: int  # per round
    stages: dict[str, float] = field(default_factory=dict)  # median ms per frame per stage
    ratio_to_torch: float | None = None  # median over rounds of ms / torch's ms, same round
    ratio_range: tuple[float, float] | None = None  # lowest and highest round's ratio
    precision: str = "fp32"  # the precision that ran
    # Share of label pixels equal to torch fp32's at the same setting and frame (warm-up round):
    # over all frames, and the lowest single frame. None without a torch row.
    labels_equal: float | None = None
    labels_equal_min: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Key = tuple[str, str, int]  # (backend, mode, keyframe interval)


def time_backends(
    model: AccelNet,
    frames: Sequence[np.ndarray],
    backends: Sequence[str] = BACKENDS.choices,
    settings: Sequence[tuple[str, int]] = DEFAULT_SETTINGS,
    rounds: int = 5,
    pipeline: PipelineConfig | None = None,
    stamps: Sequence[float] | None = None,
) -> list[BackendTiming]:
    """Time each backend (a `PipelineConfig.backend`, or "backend:precision" such as
    "openvino:bf16") at each (mode, keyframe interval) on `frames` ((H, W, 3) uint8 RGB; a
    clip of a few keyframe intervals), interleaved frame by frame over `rounds` rounds after
    one warm-up round. Each call is what a user's `process(frame, stamp)` costs: frame in,
    labels on the host out. `stamps` (seconds, one per frame) are passed with the frames, so
    keyframe ages are the recording's. `pipeline` gives the other settings (device, flow,
    input size; default `PipelineConfig(device="cpu")`). Rows come back in the order of
    `backends`, each with `ratio_to_torch` and `labels_equal` where "torch" ran at the same
    setting."""
    base = pipeline or PipelineConfig(device="cpu")
    if stamps is not None and len(stamps) != len(frames):
        raise ValueError(f"{len(stamps)} stamps for {len(frames)} frames")
    segmenters = {
        (backend, mode, k): AccelSegmenter(model, _setting(base, backend, mode, k))
        for backend in backends
        for mode, k in settings
    }
    samples: dict[Key, list[tuple[float, dict[str, float]]]] = {key: [] for key in segmenters}
    equal: dict[Key, list[float]] = {key: [] for key in segmenters}
    try:
        with torch.inference_mode():
            # warm-up (allocations, kernel choices), also the round whose labels are compared
            _round(segmenters, frames, stamps, 0, equal)
            for index in range(rounds):
                for key, sample in _round(segmenters, frames, stamps, index).items():
                    samples[key].append(sample)
    finally:
        for segmenter in segmenters.values():
            segmenter.close()
    rows = _rows(samples, len(frames))
    for row, key in zip(rows, segmenters, strict=True):
        row.precision = segmenters[key].pipeline_config.precision
        if equal[key]:
            row.labels_equal = float(np.mean(equal[key]))
            row.labels_equal_min = float(min(equal[key]))
    return rows


def _round(
    segmenters: dict[Key, AccelSegmenter],
    frames: Sequence[np.ndarray],
    stamps: Sequence[float] | None,
    index: int,
    equal: dict[Key, list[float]] | None = None,
) -> dict[Key, tuple[float, dict[str, float]]]:
    """One clip through every segmenter from empty caches, frame by frame in rotating order:
    per segmenter the mean wall-clock ms per frame (`process`, labels on the host) and the
    mean ms per frame of each stage. With `equal`, each frame's share of label pixels equal to
    torch's at the same setting is appended there (outside the timed calls)."""
    keys = list(segmenters)
    totals = {key: dict.fromkeys(("wall", *STAGES), 0.0) for key in keys}
    for segmenter in segmenters.values():
        segmenter.reset()
    for position, frame in enumerate(frames):
        stamp = None if stamps is None else stamps[position]
        shift = (index + position) % len(keys)
        labels = {}
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            result = segmenters[key].process(frame, stamp)
            totals[key]["wall"] += (time.perf_counter() - start) * 1000.0
            labels[key] = result.labels
            for name in STAGES:
                totals[key][name] += result.timings.get(name, 0.0)
        if equal is not None:
            _compare_with_torch(labels, equal)
    count = len(frames)
    return {
        key: (total["wall"] / count, {name: total[name] / count for name in STAGES})
        for key, total in totals.items()
    }


def _compare_with_torch(labels: dict[Key, np.ndarray], equal: dict[Key, list[float]]) -> None:
    for (backend, mode, k), mine in labels.items():
        truth = labels.get(("torch", mode, k))
        if truth is not None:
            equal[(backend, mode, k)].append(float(np.mean(np.asarray(mine) == truth)))


def _setting(base: PipelineConfig, backend: str, mode: str, k: int) -> PipelineConfig:
    """`base` with a backend ("openvino", or "openvino:bf16" for another precision), mode and
    keyframe interval."""
    name, _, precision = backend.partition(":")
    return dataclasses.replace(base, backend=name, precision=precision or base.precision,
                               mode=mode, keyframe_interval=k)


def _rows(samples: dict[Key, list[tuple[float, dict[str, float]]]], frames: int
          ) -> list[BackendTiming]:
    rows = []
    for (backend, mode, k), runs in samples.items():
        means = [mean for mean, _ in runs]
        stages = {name: statistics.median(s[name] for _, s in runs) for name in STAGES}
        row = BackendTiming(backend, mode, k, statistics.median(means), min(means), max(means),
                            len(runs), frames, stages)
        torch_runs = samples.get(("torch", mode, k))
        if torch_runs:
            ratios = [mean / base for mean, (base, _) in zip(means, torch_runs, strict=True)]
            row.ratio_to_torch = statistics.median(ratios)
            row.ratio_range = (min(ratios), max(ratios))
        rows.append(row)
    return rows


def format_rows(rows: Sequence[BackendTiming]) -> str:
    """A plain-text table of `time_backends` rows."""
    lines = [f"{'backend':<12} {'prec':<5} {'mode':<10} {'k':>2} {'ms/frame':>9} "
             f"{'spread':>13} {'x torch':>7} {'x range':>11} {'= torch':>8} {'feature':>8} "
             f"{'update':>7} {'flow':>5} {'warp':>5} {'output':>6}"]
    for row in rows:
        ratio, low_high, same = "-", "-", "-"
        if row.ratio_to_torch is not None and row.ratio_range is not None:
            ratio = f"{row.ratio_to_torch:.3f}"
            low_high = f"{row.ratio_range[0]:.2f}-{row.ratio_range[1]:.2f}"
        if row.labels_equal is not None:
            same = f"{100 * row.labels_equal:.2f}%"
        stages = row.stages
        lines.append(
            f"{row.backend.partition(':')[0]:<12} {row.precision:<5} {row.mode:<10} "
            f"{row.keyframe_interval:>2} {row.ms_per_frame:>9.1f} "
            f"{row.fastest:>6.1f}-{row.slowest:<6.1f} {ratio:>7} {low_high:>11} {same:>8} "
            f"{stages['feature']:>8.1f} {stages['update']:>7.1f} {stages['flow']:>5.1f} "
            f"{stages['warp']:>5.1f} {stages['output']:>6.1f}"
        )
    return "\n".join(lines)
