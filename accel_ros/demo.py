"""`accel-ros demo`: the self-contained showcase.

Renders a short synthetic driving clip (accel_ros.data.synthetic, CamVid label ids), runs it
through the streaming segmenter in DFF, DeepLab (update branch only) and Accel modes with one
shared model, scores each mode against the generator's ground truth (mIoU), and writes:

- ``demo_accel.mp4``: Accel overlays;
- ``demo_comparison.mp4`` and ``demo_comparison.png``: a 2x3 grid, input | ground truth |
  legend over DFF | DeepLab | Accel, every panel labelled;
- ``demo_summary.json``: per-mode frames, keyframes, fps and mIoU.

Needs no data set and no network; falls back to random weights (with a warning) when the
shipped checkpoint is not installed, so it always runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .config import DEFAULT_PRESET, FLOW_METHODS, PRESETS, PipelineConfig
from .io.video import VideoWriter, write_image_rgb
from .metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from .palette import CAMVID_CLASSES, colorize, get_palette, overlay
from .report import RunSummary

DEMO_MODES = ("dff", "deeplab", "accel")
ACCEL_VIDEO = "demo_accel.mp4"
COMPARISON_VIDEO = "demo_comparison.mp4"
COMPARISON_IMAGE = "demo_comparison.png"
SUMMARY_JSON = "demo_summary.json"


def demo_checkpoint(name: str | None) -> str | None:
    """The checkpoint the demo loads, given the --checkpoint value.

    The shipped checkpoint ("default") can be missing, e.g. in a source checkout before it
    has been trained: then warn and return None (random weights), so the demo still runs end
    to end, with meaningless labels. Any other value is passed through unchanged, so an
    explicit path that does not exist still fails loudly.
    """
    from .model import DEFAULT_CHECKPOINT

    if name is not None and str(name) == "default" and not DEFAULT_CHECKPOINT.is_file():
        print(
            f"warning: shipped checkpoint {DEFAULT_CHECKPOINT} is missing: the demo runs with "
            "RANDOM weights, so its labels and mIoU are meaningless (train one with "
            "`accel-ros train`, or pass --checkpoint PATH)",
            file=sys.stderr,
        )
        return None
    return name


def mode_title(mode: str, model_config: Any) -> str:
    """Panel title in the paper's naming: DFF, DeepLab-18 (update net alone), Accel-18; for
    EfficientNet-Lite update nets DeepLab-Lite0, Accel-Lite0."""
    name = model_config.update_backbone or ""
    depth = name.removeprefix("resnet").replace("efficientnet_lite", "Lite")
    return {"dff": "DFF", "deeplab": f"DeepLab-{depth}", "accel": f"Accel-{depth}",
            "reference": "Reference"}[mode]


# ---------------------------------------------------------------------------------------------
# Running the modes


@dataclass
class ModeRun:
    """One mode over the clip. `labels`: per frame (H, W) uint8; `confusion`: (K, K)."""

    mode: str
    title: str
    labels: list[np.ndarray] = field(default_factory=list)
    keyframe_ages: list[int] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)
    confusion: np.ndarray | None = None

    @property
    def miou(self) -> float:
        """Clip mIoU (void excluded); NaN before any frame was scored."""
        return mean_iou(self.confusion) if self.confusion is not None else float("nan")


def run_mode(
    model: Any,
    mode: str,
    clip: list[Any],
    *,
    keyframe_interval: int,
    device: str,
    flow: str,
    fps: float,
    quiet: bool,
) -> ModeRun:
    """Stream `clip` (SyntheticFrames) through a fresh segmenter in `mode` sharing `model`."""
    from .model import AccelSegmenter

    pipeline = PipelineConfig(mode=mode, keyframe_interval=keyframe_interval, device=device,
                              flow_method=flow)
    segmenter = AccelSegmenter(model, pipeline)
    num_classes = segmenter.model_config.num_classes
    run = ModeRun(mode, mode_title(mode, segmenter.model_config),
                  summary=RunSummary(name=mode_title(mode, segmenter.model_config)))
    run.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    run.summary.start()
    for frame in tqdm(clip, desc=f"demo {mode}", unit="frame", disable=quiet, file=sys.stderr):
        result = segmenter.process(frame.image, stamp=frame.index / fps)
        run.labels.append(result.labels)
        run.keyframe_ages.append(result.keyframe_age)
        run.summary.add(result)
        run.confusion += confusion_matrix(result.labels, frame.labels, num_classes)
    run.summary.stop()
    run.summary.extra["mIoU"] = f"{100.0 * run.miou:.1f}%"
    return run


# ---------------------------------------------------------------------------------------------
# Rendering


def _font_scale(height: int) -> float:
    return max(0.3, min(0.8, height / 400.0))


def _banner_height(height: int) -> int:
    return round(26 * _font_scale(height)) + 4


def label_panel(image: np.ndarray, title: str, subtitle: str = "") -> np.ndarray:
    """Copy of an (H, W, 3) uint8 RGB panel with a dark title banner across the top."""
    panel = np.ascontiguousarray(image).copy()
    scale = _font_scale(panel.shape[0])
    banner = _banner_height(panel.shape[0])
    panel[:banner] = (panel[:banner].astype(np.float32) * 0.35).astype(np.uint8)
    text = f"{title}  {subtitle}" if subtitle else title
    cv2.putText(panel, text, (4, banner - 5), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def legend_panel(height: int, width: int, names: tuple[str, ...], palette: str) -> np.ndarray:
    """(H, W, 3) uint8 panel of colour swatches with class names, in two columns, below a
    free strip at the top for `label_panel`'s title banner."""
    panel = np.full((height, width, 3), 32, dtype=np.uint8)
    colors = get_palette(palette)
    columns = 2
    rows = -(-len(names) // columns)
    top = _banner_height(height) + 2
    row_h = max(1, (height - top - 2) // max(rows, 1))
    scale = min(_font_scale(height), row_h / 30.0)
    swatch = max(2, round(row_h * 0.7))
    for i, name in enumerate(names):
        col, row = divmod(i, rows)
        x0 = 4 + col * (width // columns)
        y0 = top + row * row_h
        color = tuple(int(c) for c in colors[i % len(colors)])
        cv2.rectangle(panel, (x0, y0 + 1), (x0 + swatch, y0 + 1 + swatch), color, -1)
        cv2.putText(panel, name, (x0 + swatch + 4, y0 + swatch), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (235, 235, 235), 1, cv2.LINE_AA)
    return panel


def comparison_frame(
    index: int,
    image: np.ndarray,
    truth: np.ndarray,
    runs: list[ModeRun],
    *,
    palette: str,
    alpha: float,
    legend: np.ndarray,
) -> np.ndarray:
    """(2H, 3W, 3) uint8 grid: input | ground truth | legend over up to three modes."""
    top = [
        label_panel(image, "Input", f"frame {index}"),
        label_panel(overlay(image, colorize(truth, palette), alpha), "Ground truth"),
        legend,
    ]
    bottom = []
    for run in runs[:3]:
        age = run.keyframe_ages[index]
        state = "keyframe" if age == 0 and run.mode != "deeplab" else (
            f"+{age}" if run.mode != "deeplab" else "")
        subtitle = f"{state}  mIoU {100 * run.miou:.1f}".strip()
        color = colorize(run.labels[index], palette)
        bottom.append(label_panel(overlay(image, color, alpha), run.title, subtitle))
    while len(bottom) < 3:
        bottom.append(np.zeros_like(image))
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def showcase_index(ages: list[int]) -> int:
    """Frame for the still image: farthest from its keyframe (where warping drifts most and
    Accel's update branch matters), nearest the clip's middle among those."""
    peak = max(ages)
    middle = len(ages) / 2
    return min((i for i, age in enumerate(ages) if age == peak), key=lambda i: abs(i - middle))


# ---------------------------------------------------------------------------------------------
# The demo


@dataclass
class DemoResult:
    """What `run_demo` produced: runs per mode and the files written."""

    runs: list[ModeRun]
    files: dict[str, Path]
    wall_seconds: float
    checkpoint: str | None


def run_demo(
    out_dir: str | Path,
    *,
    frames: int = 60,
    height: int = 256,
    width: int = 512,
    checkpoint: str | None = "default",
    preset: str = DEFAULT_PRESET,
    keyframe_interval: int = 5,
    device: str = "auto",
    flow: str = "dis",
    seed: int = 0,
    alpha: float = 0.5,
    fps: float = 30.0,
    quiet: bool = False,
) -> DemoResult:
    """Render the clip, run every demo mode, write videos/PNG/JSON into `out_dir`."""
    from .data.synthetic import SyntheticDrivingScene, scene_config
    from .model import build_model, resolve_checkpoint

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # None = random weights; otherwise the resolved file, so the summary names what ran.
    path = resolve_checkpoint(demo_checkpoint(checkpoint))
    checkpoint = str(path) if path is not None else None
    model = build_model(preset, checkpoint)
    config = model.config

    scene = SyntheticDrivingScene(
        scene_config(height=height, width=width, seed=seed, fps=fps), num_frames=frames
    )
    clip = list(tqdm(scene, total=frames, desc="demo clip", unit="frame", disable=quiet,
                     file=sys.stderr))

    modes = [m for m in DEMO_MODES if m == "dff" or config.update_backbone is not None]
    runs = [
        run_mode(model, mode, clip, keyframe_interval=keyframe_interval, device=device,
                 flow=flow, fps=fps, quiet=quiet)
        for mode in modes
    ]

    palette = config.palette
    names = config.class_names or (CAMVID_CLASSES if config.num_classes == 11 else
                                   tuple(f"class {i}" for i in range(config.num_classes)))
    legend = label_panel(legend_panel(height, width, tuple(names), palette), "Classes")
    accel = next((r for r in runs if r.mode == "accel"), runs[-1])
    files = {
        "accel_video": out_dir / ACCEL_VIDEO,
        "comparison_video": out_dir / COMPARISON_VIDEO,
        "comparison_image": out_dir / COMPARISON_IMAGE,
        "summary": out_dir / SUMMARY_JSON,
    }
    still = showcase_index(accel.keyframe_ages)
    with VideoWriter(files["accel_video"], fps) as accel_video, \
            VideoWriter(files["comparison_video"], fps) as grid_video:
        for t, frame in enumerate(tqdm(clip, desc="demo videos", unit="frame", disable=quiet,
                                       file=sys.stderr)):
            color = colorize(accel.labels[t], palette)
            age = accel.keyframe_ages[t]
            accel_video.write(label_panel(overlay(frame.image, color, alpha), accel.title,
                                          "keyframe" if age == 0 else f"+{age}"))
            grid = comparison_frame(t, frame.image, frame.labels, runs, palette=palette,
                                    alpha=alpha, legend=legend)
            grid_video.write(grid)
            if t == still:
                write_image_rgb(files["comparison_image"], grid)

    wall = time.perf_counter() - started
    summary = {
        "frames": frames,
        "height": height,
        "width": width,
        "checkpoint": checkpoint,
        "model": config.to_dict(),
        "keyframe_interval": keyframe_interval,
        "wall_seconds": wall,
        "modes": {
            run.mode: {
                "title": run.title,
                "frames": run.summary.frames,
                "keyframes": run.summary.keyframes,
                "fps": run.summary.fps,
                "mean_ms": float(np.mean([t["total"] for t in run.summary.timings])),
                "miou": _json_number(run.miou),
                "pixel_accuracy": _json_number(pixel_accuracy(run.confusion)),
                "iou_per_class": [_json_number(v) for v in iou_per_class(run.confusion)],
            }
            for run in runs
        },
        "showcase_frame": still,
    }
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return DemoResult(runs=runs, files=files, wall_seconds=wall, checkpoint=checkpoint)


def _json_number(value: float) -> float | None:
    """NaN (metric undefined) -> null, so the summary stays strict JSON."""
    return None if np.isnan(value) else float(value)


def format_demo(result: DemoResult) -> str:
    """Per-mode summaries, an mIoU table and the files written."""
    lines = []
    for run in result.runs:
        lines.append(run.summary.format())
        lines.append("")
    lines.append(f"  {'mode':<14} {'mIoU':>7} {'fps':>7} {'keyframes':>10}")
    for run in result.runs:
        lines.append(f"  {run.title:<14} {100 * run.miou:6.1f}% {run.summary.fps:7.2f} "
                     f"{run.summary.keyframes:10d}")
    weights = result.checkpoint or "random weights (no checkpoint)"
    lines.append(f"  weights: {weights}; mIoU against the synthetic clip's ground truth")
    lines.append(f"  total wall time {result.wall_seconds:.1f} s")
    for key, path in result.files.items():
        lines.append(f"  {key}: {path}")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="segment a synthetic driving clip in DFF, DeepLab and Accel modes",
        description="Render a synthetic driving clip, segment it with DFF, DeepLab (update "
        "branch) and Accel, print per-mode speed and mIoU, and write overlay and side-by-side "
        "comparison videos plus a PNG.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"),
                        help="output directory (default: ./demo_out)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--checkpoint", default="default",
                        help="'default' (shipped; random weights with a warning if missing), "
                        "'none' or a path")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                        help="architecture when no checkpoint is loaded")
    parser.add_argument("--keyframe-interval", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--flow", default="dis", choices=FLOW_METHODS)
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    parser.add_argument("--overlay-alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from .replay.runner import set_threads

    set_threads(args.threads)
    result = run_demo(
        args.out, frames=args.frames, height=args.height, width=args.width,
        checkpoint=args.checkpoint, preset=args.preset,
        keyframe_interval=args.keyframe_interval, device=args.device, flow=args.flow,
        seed=args.seed, alpha=args.overlay_alpha, quiet=args.quiet,
    )
    print(format_demo(result))
    return 0
