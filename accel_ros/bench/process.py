"""`accel-ros bench --source PATH`: what a user's `AccelSegmenter.process(frame, stamp)` call
costs, frame in and labels out, on the user's own frames (an image folder, a video or a
rosbag2), for each backend and precision, with their labels compared to torch fp32's.

Every segmenter sees the same frames with their recorded stamps, interleaved frame by frame in
one process (`bench.backends.time_backends`), so load from other processes falls on all of them
alike and the ratios hold where absolute milliseconds do not. The report names what the
figures depend on: the CPU model and its instruction sets (accel_ros.machine), the threads, the
path timed and the frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PipelineConfig
from ..machine import cpu_info
from ..replay.sources import Frame, open_source
from .backends import BackendTiming, format_rows, time_backends

PATH_TIMED = "AccelSegmenter.process(frame, stamp): (H, W, 3) uint8 RGB in, labels on the host out"


@dataclass
class ProcessSettings:
    """What `run_process_benchmark` times. `backends`: "torch", "openvino", "openvino:bf16",
    ... (torch fp32 always runs too: it is what the others are compared with)."""

    source: str
    model: str = "default"
    backends: tuple[str, ...] = ("torch",)
    mode: str = PipelineConfig.mode
    keyframe_interval: int = PipelineConfig.keyframe_interval
    frames: int = 40
    rounds: int = 3
    topic: str | None = None
    fps: float | None = None
    device: str = "cpu"


@dataclass
class SourceFrames:
    """Frames read from a source: (H, W, 3) uint8 RGB, their stamps in seconds, and what they
    are (for the report)."""

    frames: list[np.ndarray]
    stamps: list[float]
    description: dict[str, Any]


def read_frames(source: str | Path, count: int, topic: str | None = None,
                fps: float | None = None) -> SourceFrames:
    """The first `count` decodable frames of `source` (a bag's `topic`, default its first
    camera) with their stamps. Raises ValueError when it holds no decodable frame."""
    from ..io import rosbag

    opened = open_source(source, topic, fps, rosbag.make_typestore())
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    try:
        for item in opened:
            if isinstance(item, Frame) and item.rgb is not None:
                frames.append(item.rgb)
                stamps.append(item.stamp_seconds)
                if len(frames) == count:
                    break
    finally:
        opened.close()
    if not frames:
        raise ValueError(f"{source}: no decodable frame to time")
    sizes = sorted({f"{f.shape[0]}x{f.shape[1]}" for f in frames})
    span = stamps[-1] - stamps[0]
    description = {
        "source": str(source),
        "topic": getattr(opened, "topic", None),
        "count": len(frames),
        "sizes": sizes,
        "seconds_spanned": round(span, 3),
        "mean_period_s": round(span / (len(frames) - 1), 4) if len(frames) > 1 else None,
    }
    return SourceFrames(frames, stamps, description)


def run_process_benchmark(settings: ProcessSettings) -> dict[str, Any]:
    """Time `settings.backends` on the source's frames; the report: `meta` (CPU, threads, path,
    frames, model) and `results` (one `BackendTiming` dict per backend)."""
    import torch

    from ..model import load_model

    loaded = load_model(settings.model)
    read = read_frames(settings.source, settings.frames, settings.topic, settings.fps)
    backends = ("torch", *(b for b in settings.backends if b != "torch"))
    pipeline = PipelineConfig(device=settings.device)
    rows = time_backends(loaded.model, read.frames, backends,
                         ((settings.mode, settings.keyframe_interval),),
                         rounds=settings.rounds, pipeline=pipeline, stamps=read.stamps)
    return {
        "meta": {
            "cpu": cpu_info().to_dict(),
            "device": settings.device,
            "threads": torch.get_num_threads(),
            "path": PATH_TIMED,
            "frames": read.description,
            "model": settings.model,
            "fingerprint": loaded.fingerprint,
            "rounds": settings.rounds,
            "settings": dataclasses.asdict(settings),
        },
        "results": [row.to_dict() for row in rows],
    }


def format_report(report: dict[str, Any]) -> str:
    """The table with the lines that say what it was measured on."""
    meta = report["meta"]
    frames = meta["frames"]
    rows = [BackendTiming(**{**row, "ratio_range": tuple(row["ratio_range"])
                             if row.get("ratio_range") else None})
            for row in report["results"]]
    head = [
        f"accel-ros bench --source: {meta['path']}",
        f"CPU: {meta['cpu']['description']}; {meta['threads']} torch thread(s); "
        f"device {meta['device']}",
        f"frames: {frames['count']} of {frames['source']} ({', '.join(frames['sizes'])}), "
        f"{frames['seconds_spanned']:g} s of stamps; {meta['rounds']} timed rounds after one "
        "warm-up, segmenters interleaved frame by frame",
    ]
    return "\n".join([*head, format_rows(rows)])


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of ms per frame per backend and precision, stacked by stage, each labelled with
    its ratio to torch and its share of labels equal to torch's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = [f"{r['backend'].partition(':')[0]}\n{r['precision']}" for r in rows]
    stages = ("feature", "update", "flow", "warp", "output")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(rows) + 2), 4.2))
    bottom = np.zeros(len(rows))
    for stage in stages:
        values = np.array([r["stages"].get(stage, 0.0) for r in rows])
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    # What the stages do not time: checking and converting the frame, the call itself.
    rest = np.maximum(np.array([r["ms_per_frame"] for r in rows]) - bottom, 0.0)
    ax.bar(names, rest, bottom=bottom, label="other", color="0.75")
    bottom += rest
    for x, row in enumerate(rows):
        text = f"{row['ms_per_frame']:.1f} ms"
        if row.get("ratio_to_torch") is not None:
            text += f"\n{row['ratio_to_torch']:.2f}x"
        if row.get("labels_equal") is not None and row["backend"] != "torch":
            text += f"\n{100 * row['labels_equal']:.1f}% ="
        ax.text(x, max(bottom[x], row["ms_per_frame"]), text, ha="center", va="bottom",
                fontsize=8)
    meta = report["meta"]
    ax.set_ylabel("ms per process() call (stages stacked)")
    ax.set_title(f"{meta['cpu']['description']}, {meta['threads']} thread(s)\n"
                 f"{rows[0]['mode']} k={rows[0]['keyframe_interval']}, "
                 f"{meta['frames']['count']} frames of {Path(meta['frames']['source']).name}",
                 fontsize=9)
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
