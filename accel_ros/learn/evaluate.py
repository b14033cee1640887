"""Evaluation: mIoU per keyframe offset and per keyframe interval, for every mode, with clips
streamed through the node's own pipeline (`AccelSegmenter`). The protocol is described in
`accel-ros eval --help` (`accel_ros/cli/evaluate.py`); `run_eval` runs it for an `EvalConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import MODES, RANGES, PipelineConfig
from ..data.clips import CAMVID_FPS, Clip, motion_clips, sequence_clips
from ..data.frames import FrameSet, load_frames
from ..metrics import ConfusionMeter, mean_iou
from ..model import AccelNet, LoadedModel, load_model, resolve_checkpoint
from ..stream import AccelSegmenter
from .config import EVAL_MODES, EvalConfig

SINGLE_FRAME_MODES = MODES.select(lambda mode: mode.every_frame)
MODE_LABELS = {
    "reference": "N_R every frame",
    "deeplab": "N_U only (DeepLab)",
    "dff": "DFF (warp only)",
    "accel": "Accel (warp + N_U, fused)",
}


def evaluate_clips(
    model: AccelNet,
    clips: Iterable[Clip],
    max_offset: int,
    modes: tuple[str, ...] = EVAL_MODES,
    pipeline: PipelineConfig | None = None,
    progress: bool = False,
    total: int | None = None,
) -> dict[str, list[ConfusionMeter]]:
    """Confusion meters per mode and keyframe offset: result[mode][offset], offsets 0..max_offset.

    Every clip is streamed through `AccelSegmenter` (the node's own pipeline: same resizing,
    flow, incremental warps, fusion and upsampling to the label size) with its keyframe on
    frame 0, so offset o is scored on frame o, stamped o x the clip's frame time (keyframe
    ages in seconds; no time-gap resets inside a clip). Single-frame modes (`reference`, `deeplab`)
    score every distinct frame once; their meter is the same object at every offset.
    """
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown eval modes {sorted(unknown)}; choose from {EVAL_MODES}")
    if model.update is None and any(MODES[mode].update_branch for mode in modes):
        raise ValueError("modes deeplab/accel need a model with an update branch")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    base = pipeline or PipelineConfig()
    length = max_offset + 1
    num_classes = model.config.num_classes
    segmenters = {
        mode: AccelSegmenter(model, dataclasses.replace(
            base, mode=mode, keyframe_interval=length, adaptive_flow_threshold=0.0,
            adaptive_confidence_drop=0.0, max_time_gap=RANGES["max_time_gap"].high))
        for mode in modes
    }
    meters: dict[str, list[ConfusionMeter]] = {}
    for mode in modes:
        if mode in SINGLE_FRAME_MODES:
            meters[mode] = [ConfusionMeter(num_classes)] * length
        else:
            meters[mode] = [ConfusionMeter(num_classes) for _ in range(length)]
    # Single-frame modes: windows over a sequence share frame objects. Keyed by id() and kept
    # alive here, so a frame freed by a clip generator can never lend its id to a new one.
    seen: dict[int, np.ndarray] = {}
    iterator: Iterable[Clip] = clips
    if progress:
        from tqdm import tqdm

        iterator = tqdm(clips, desc="eval", total=total, file=sys.stderr)
    count = 0
    for clip in iterator:
        if len(clip) < length:
            raise ValueError(f"clip {clip.name} has {len(clip)} frames, need {length}")
        count += 1
        fresh = [id(frame) not in seen for frame in clip.frames[:length]]
        seen.update((id(frame), frame) for frame in clip.frames[:length])
        for mode, segmenter in segmenters.items():
            single = mode in SINGLE_FRAME_MODES
            segmenter.reset()
            for offset in range(length):
                target = clip.labels[offset]
                if single and (not fresh[offset] or target is None):
                    continue
                # Stamps in clip time: an age-aware fusion reads the keyframe's age from them.
                result = segmenter.process(clip.frames[offset], stamp=offset * clip.frame_time_s)
                if target is not None:
                    meters[mode][offset].update(result.labels, target)
    for segmenter in segmenters.values():
        segmenter.close()
    if count == 0:
        raise ValueError(f"no clip of {length} frames to evaluate; lower --max-offset")
    return meters


def summarise(
    meters: dict[str, list[ConfusionMeter]], class_names: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Per-offset and per-interval mIoU, per-class IoU, pixel accuracy and the paper's claim
    check, as plain JSON values.

    Interval k pools one confusion matrix over offsets 0..k-1 (what a stream with a keyframe
    every k frames sees, each offset once per keyframe), then takes its mIoU.
    """
    per_offset = {m: [v.mean_iou() for v in meter] for m, meter in meters.items()}
    per_interval = {}
    for mode, meter in meters.items():
        pooled = np.cumsum(np.stack([m.matrix for m in meter]), axis=0)
        per_interval[mode] = [mean_iou(matrix) for matrix in pooled]
    claims: dict[str, Any] = {}
    if "accel" in per_interval:
        for other in ("dff", "deeplab"):
            if other in per_interval:
                claims[f"accel_beats_{other}"] = {
                    str(k): bool(per_interval["accel"][k - 1] > per_interval[other][k - 1])
                    for k in range(2, len(per_interval["accel"]) + 1)
                }
    return {
        "per_offset": {
            m: {str(o): v for o, v in enumerate(vals)} for m, vals in per_offset.items()
        },
        "per_interval": {
            m: {str(k + 1): v for k, v in enumerate(vals)} for m, vals in per_interval.items()
        },
        "pixel_accuracy": {
            m: {str(o): v.pixel_accuracy() for o, v in enumerate(meter)}
            for m, meter in meters.items()
        },
        "per_class_iou": {
            m: {str(o): _nan_to_none(v.iou_per_class().tolist()) for o, v in enumerate(meter)}
            for m, meter in meters.items()
        },
        "class_names": list(class_names),
        "claims": claims,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """Two markdown tables (mIoU % per offset, per interval), one row per mode."""
    lines = []
    if "offset_step_s" in summary:
        lines.append(f"{summary.get('split', '')}: {summary.get('clips', 'clips')}; one offset "
                     f"step = {summary['offset_step_s']:.3f} s.\n")
    for title, key, label in (("keyframe offset", "per_offset", "offset"),
                              ("keyframe interval", "per_interval", "interval")):
        modes = list(summary[key])
        columns = list(summary[key][modes[0]])
        lines.append(f"mIoU (%) per {title}:\n")
        lines.append("| mode | " + " | ".join(f"{label} {c}" for c in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for mode in modes:
            values = " | ".join(_pct(summary[key][mode][c]) for c in columns)
            lines.append(f"| {MODE_LABELS.get(mode, mode)} | {values} |")
        lines.append("")
    return "\n".join(lines)


def plot_results(summary: dict[str, Any], folder: Path) -> list[Path]:
    """fig5_offsets.png (mIoU vs offset / interval per mode) and table3.png (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in ((axes[0], "per_offset", "keyframe offset (frames since keyframe)"),
                            (axes[1], "per_interval", "keyframe interval")):
        for mode, values in summary[key].items():
            xs = [int(k) for k in values]
            ax.plot(xs, [100 * v for v in values.values()], marker="o",
                    label=MODE_LABELS.get(mode, mode))
        ax.set(xlabel=xlabel, ylabel="mIoU (%)")
        ax.set_xticks([int(k) for k in next(iter(summary[key].values()))])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("accuracy vs. keyframe offset")
    axes[1].set_title("accuracy vs. keyframe interval")
    fig.tight_layout()
    paths.append(folder / "fig5_offsets.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    intervals = summary["per_interval"]
    last = max(int(k) for k in next(iter(intervals.values())))
    bars = []
    for mode in EVAL_MODES:
        if mode not in intervals:
            continue
        if mode in SINGLE_FRAME_MODES:
            bars.append((MODE_LABELS[mode], intervals[mode]["1"]))
        else:
            bars.append((f"{mode.upper() if mode == 'dff' else 'Accel'} (interval {last})",
                         intervals[mode][str(last)]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([b[0] for b in bars], [100 * b[1] for b in bars],
           color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(bars)])
    for i, (_, value) in enumerate(bars):
        ax.text(i, 100 * value, f"{100 * value:.1f}", ha="center", va="bottom")
    ax.set(ylabel="mIoU (%)", title="N_R only, N_U only, DFF, Accel")
    ax.set_ylim(0, 1.15 * max(100 * b[1] for b in bars) + 1e-6)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    paths.append(folder / "table3.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


@dataclasses.dataclass
class EvalClips:
    """The clips an evaluation streams, the seconds between their frames, and their kind."""

    clips: list[Clip]
    step_s: float
    description: str


def load_eval_model(config: EvalConfig) -> LoadedModel:
    """The checkpoint `config.checkpoint` names, or random weights of `config.preset` for
    checkpoint "none"."""
    return load_model(config.checkpoint if resolve_checkpoint(config.checkpoint) else config.preset)


def make_clips(config: EvalConfig, frames: FrameSet) -> EvalClips:
    """Clips of `config.max_offset` + 1 frames: windows over the labelled frames of a sequence,
    or synthetic camera motion on each labelled frame."""
    length = config.max_offset + 1
    if config.clips == "motion":
        clips = list(motion_clips(frames.images, frames.labels, length, config.seed,
                                  frames.names))
        return EvalClips(clips, clips[0].frame_time_s if clips else 1 / 30,
                         "synthetic 30 fps camera motion (zoom, pan, roll) on each labelled frame")
    step_s = frame_step_seconds(frames)
    clips = list(sequence_clips(frames.images, frames.labels, frames.sequences, length, step_s,
                                frames.names))
    return EvalClips(clips, step_s, "windows of consecutive labelled frames")


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate the model `config` names on its clips; writes `<out>/eval.json`, `results.md`
    and the plots, prints the tables, and returns the summary."""
    torch.set_num_threads(max(1, config.threads))
    loaded = load_eval_model(config)
    model = loaded.model
    trained_at = model.config.input_size or loaded.extra.get("resolution") or (360, 480)
    size = (config.height or int(trained_at[0]), config.width or int(trained_at[1]))
    frames = load_frames(config.data, config.data_root, config.split, model.config.num_classes,
                         config.limit, size, config.seed, sequences=tuple(config.sequences))
    clips = make_clips(config, frames)
    pipeline = PipelineConfig(device=config.device, input_size=size,
                              flow_scale=config.flow_scale, backend=config.backend,
                              precision=config.precision)
    started = time.monotonic()
    meters = evaluate_clips(model, clips.clips, config.max_offset, tuple(config.modes), pipeline,
                            progress=True, total=len(clips.clips))
    summary = summarise(meters, model.config.class_names)
    split_name = config.split + (f" ({'+'.join(config.sequences)})" if config.sequences else "")
    summary.update({
        "checkpoint": str(loaded.path) if loaded.path else None,
        "data": config.data,
        "split": split_name,
        "clips": clips.description,
        "num_clips": len(clips.clips),
        "num_frames": len(frames),
        "offset_step_s": round(clips.step_s, 4),
        "input_size": list(size),
        "max_offset": config.max_offset,
        "flow": f"DIS (OpenCV, preset fast) at {config.flow_scale} x input size",
        "protocol": "the streaming pipeline with its keyframe on clip frame 0; interval k pools "
                    "one confusion matrix over offsets 0..k-1; single-frame modes count every "
                    "frame once; logits upsampled to the label size; void ignored",
        "seconds": round(time.monotonic() - started, 1),
        "checkpoint_extra": {k: loaded.extra[k] for k in ("train_data", "validation", "val_miou")
                             if k in loaded.extra},
    })
    write_results(summary, config.out)
    return summary


def write_results(summary: dict[str, Any], out: Path) -> list[Path]:
    """Write eval.json, results.md and the plots into `out`; print the tables and the claim
    check. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(summary)
    (out / "results.md").write_text(table)
    written = [out / "eval.json", out / "results.md", *plot_results(summary, out)]
    print(table)
    for mode, verdicts in summary["claims"].items():
        print(f"{mode}: " + ", ".join(f"interval {k}: {'yes' if v else 'no'}"
                                      for k, v in verdicts.items()))
    print("wrote " + ", ".join(str(path) for path in written))
    return written

def frame_step_seconds(frames: FrameSet) -> float:
    """Median time between consecutive labelled frames of one sequence, from CamVid's video
    frame numbers (30 fps); 1/30 s for data without them (the synthetic generator)."""
    from ..data.camvid import parse_frame_name

    steps = []
    for index in range(1, len(frames)):
        if frames.sequences[index] != frames.sequences[index - 1]:
            continue
        try:
            _, before = parse_frame_name(frames.names[index - 1])
            _, after = parse_frame_name(frames.names[index])
        except (ValueError, IndexError):
            return 1 / CAMVID_FPS
        steps.append(after - before)
    return float(np.median(steps)) / CAMVID_FPS if steps else 1 / CAMVID_FPS


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else v for v in values]


def _pct(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"
