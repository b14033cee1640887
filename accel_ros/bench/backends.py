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
) -> list[BackendTiming]:
    """Time each backend (a `PipelineConfig.backend`, or "backend:precision" such as
    "openvino:bf16") at each (mode, keyframe interval) on `frames` ((H, W, 3) uint8 RGB; a
    clip of a few keyframe intervals), interleaved frame by frame over `rounds` rounds after
    one warm-up round. `pipeline` gives the other settings (device, flow, input size;
    default `PipelineConfig(device="cpu")`). Rows come back in the order of `backends`, each
    with `ratio_to_torch` where "torch" was timed at the same setting."""
    base = pipeline or PipelineConfig(device="cpu")
    segmenters = {
        (backend, mode, k): AccelSegmenter(model, _setting(base, backend, mode, k))
        for backend in backends
        for mode, k in settings
    }
    samples: dict[Key, list[tuple[float, dict[str, float]]]] = {key: [] for key in segmenters}
    try:
        with torch.inference_mode():
            _round(segmenters, frames, 0)  # warm-up: allocations, kernel choices
            for index in range(rounds):
                for key, sample in _round(segmenters, frames, index).items():
                    samples[key].append(sample)
    finally:
        for segmenter in segmenters.values():
            segmenter.close()
    return _rows(samples, len(frames))


def _round(
    segmenters: dict[Key, AccelSegmenter], frames: Sequence[np.ndarray], index: int
) -> dict[Key, tuple[float, dict[str, float]]]:
    """One clip through every segmenter from empty caches, frame by frame in rotating order:
    per segmenter the mean wall-clock ms per frame (`process`, labels on the host) and the
    mean ms per frame of each stage."""
    keys = list(segmenters)
    totals = {key: dict.fromkeys(("wall", *STAGES), 0.0) for key in keys}
    for segmenter in segmenters.values():
        segmenter.reset()
    for position, frame in enumerate(frames):
        shift = (index + position) % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            result = segmenters[key].process(frame)
            totals[key]["wall"] += (time.perf_counter() - start) * 1000.0
            for name in STAGES:
                totals[key][name] += result.timings.get(name, 0.0)
    count = len(frames)
    return {
        key: (total["wall"] / count, {name: total[name] / count for name in STAGES})
        for key, total in totals.items()
    }


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
    lines = [f"{'backend':<14} {'mode':<10} {'k':>2} {'ms/frame':>9} {'spread':>13} "
             f"{'x torch':>7} {'x range':>11} {'feature':>8} {'update':>7} {'flow':>5} "
             f"{'warp':>5} {'output':>6}"]
    for row in rows:
        ratio, low_high = "-", "-"
        if row.ratio_to_torch is not None and row.ratio_range is not None:
            ratio = f"{row.ratio_to_torch:.3f}"
            low_high = f"{row.ratio_range[0]:.2f}-{row.ratio_range[1]:.2f}"
        stages = row.stages
        lines.append(
            f"{row.backend:<14} {row.mode:<10} {row.keyframe_interval:>2} "
            f"{row.ms_per_frame:>9.1f} {row.fastest:>6.1f}-{row.slowest:<6.1f} {ratio:>7} "
            f"{low_high:>11} {stages['feature']:>8.1f} {stages['update']:>7.1f} "
            f"{stages['flow']:>5.1f} {stages['warp']:>5.1f} {stages['output']:>6.1f}"
        )
    return "\n".join(lines)
