"""Run summaries shared by the tools: frame/keyframe/skip counts, throughput and a per-stage
latency table (runs, mean, median, p90, max, per-frame cost in ms), and the JSON report file
the benchmarks write. numpy only, no torch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Same order as accel_ros.model.STAGES, plus the per-frame total; kept literal here so the
# report can be imported without loading torch.
STAGE_COLUMNS = ("feature", "flow", "warp", "task", "update", "fusion", "output", "total")


@dataclass(frozen=True)
class StageLatency:
    """Latency of one stage over a run, in ms. `runs` counts frames on which the stage ran
    (time > 0); mean/p50/p90/max are over those frames, `per_frame` averages over all frames
    (what the stage costs the stream on average, e.g. the reference branch on keyframes only).
    """

    stage: str
    runs: int
    mean: float
    p50: float
    p90: float
    max: float
    per_frame: float


def latency_rows(
    timings: Sequence[Mapping[str, float]], stages: Iterable[str] = STAGE_COLUMNS
) -> list[StageLatency]:
    """Per-stage statistics over frames; stages that never ran (e.g. "update" in dff mode)
    are left out."""
    rows = []
    for stage in stages:
        values = np.asarray([float(t.get(stage, 0.0)) for t in timings], dtype=np.float64)
        ran = values[values > 0]
        if ran.size == 0:
            continue
        rows.append(
            StageLatency(
                stage=stage,
                runs=int(ran.size),
                mean=float(ran.mean()),
                p50=float(np.percentile(ran, 50)),
                p90=float(np.percentile(ran, 90)),
                max=float(ran.max()),
                per_frame=float(values.mean()),
            )
        )
    return rows


def format_latency_table(
    timings: Sequence[Mapping[str, float]], stages: Iterable[str] = STAGE_COLUMNS
) -> str:
    """Fixed-width text table of `latency_rows`; a note when there are no timings."""
    rows = latency_rows(timings, stages)
    if not rows:
        return "  (no frames timed)"
    lines = [
        f"  {'stage':<8} {'runs':>5} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9}"
        f" {'ms/frame':>9}"
    ]
    for row in rows:
        lines.append(
            f"  {row.stage:<8} {row.runs:5d} {row.mean:9.2f} {row.p50:9.2f} {row.p90:9.2f}"
            f" {row.max:9.2f} {row.per_frame:9.2f}"
        )
    return "\n".join(lines)


@dataclass
class RunSummary:
    """Accumulates what a replay/demo/bench run did, frame by frame.

    `add` takes anything with SegmentationResult's ``is_keyframe``, ``timings`` and
    ``reset_reason`` attributes (and counts its ``stamp_note``, if any, in `unstamped`); `skip`
    records an input that produced no output and why.
    Wall time runs from construction (or `start`) to `stop` (or now, while running).
    """

    name: str = "run"
    frames: int = 0
    keyframes: int = 0
    resets: int = 0
    unstamped: int = 0  # frames whose keyframe age was counted, not timed (stream/ages.py)
    stamp_note: str | None = None  # the first such frame's note
    timings: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter, repr=False)
    _stop: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Restart the wall clock (e.g. after model loading, which should not count)."""
        self._start = time.perf_counter()
        self._stop = None

    def stop(self) -> None:
        self._stop = time.perf_counter()

    def add(self, result: Any) -> None:
        self.frames += 1
        self.keyframes += int(bool(result.is_keyframe))
        self.resets += int(result.reset_reason is not None)
        self.timings.append(dict(result.timings))
        note = getattr(result, "stamp_note", None)
        if note:
            self.unstamped += 1
            self.stamp_note = self.stamp_note or note

    def skip(self, reason: str) -> None:
        self.skipped.append(reason)

    @property
    def wall_seconds(self) -> float:
        end = self._stop if self._stop is not None else time.perf_counter()
        return max(end - self._start, 0.0)

    @property
    def fps(self) -> float:
        """Frames written per wall-clock second (decoding and writing included)."""
        wall = self.wall_seconds
        return self.frames / wall if wall > 0 else 0.0

    @property
    def model_fps(self) -> float:
        """Frames per second of segmenter time alone (mean of the per-frame "total")."""
        totals = [t.get("total", 0.0) for t in self.timings]
        mean_ms = float(np.mean(totals)) if totals else 0.0
        return 1000.0 / mean_ms if mean_ms > 0 else 0.0

    def format(self, max_skipped: int = 5) -> str:
        """Multi-line human-readable summary."""
        lines = [
            f"{self.name}: {self.frames} frames, {self.keyframes} keyframes, "
            f"{len(self.skipped)} skipped, {self.resets} cache resets",
            f"  wall {self.wall_seconds:.2f} s, {self.fps:.2f} fps end to end, "
            f"{self.model_fps:.2f} fps segmenter only",
        ]
        if self.unstamped:
            lines.append(f"  stamps: {self.unstamped} frames without a usable one "
                         f"({self.stamp_note})")
        for key, value in self.extra.items():
            lines.append(f"  {key}: {value}")
        for reason in self.skipped[:max_skipped]:
            lines.append(f"  skipped: {reason}")
        if len(self.skipped) > max_skipped:
            lines.append(f"  ... and {len(self.skipped) - max_skipped} more skipped")
        lines.append(format_latency_table(self.timings))
        return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write a benchmark report as indented JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return path
