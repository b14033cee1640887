"""Running the demo: settings, the modes over one clip, scores, and the files written."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_PRESET, MODES, PipelineConfig
from ..io.video import VideoWriter, write_image_rgb
from ..metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from ..palette import class_names as palette_class_names
from ..palette import render_labels
from ..report import RunSummary
from . import ages, render

# The pipeline's modes, the reference (its network on every frame) first: the others are
# scored against it.
DEMO_MODES = MODES.ordered(("reference", "dff", "deeplab", "accel"))
ACCEL_VIDEO = "demo_accel.mp4"
COMPARISON_VIDEO = "demo_comparison.mp4"
COMPARISON_IMAGE = "demo_comparison.png"
AGE_PLOT = "demo_ages.png"
SUMMARY_JSON = "demo_summary.json"

DOMAIN_GAP = (
    "Frames: a procedural synthetic street. Model: trained on real CamVid video. Their look "
    "differs (the domain gap), so every mode scores low against the generator's labels (mIoU); "
    "'ref' is the share of pixels a mode labels as the reference network does on every frame, "
    "which is what Accel's cheap frames try to keep."
)


@dataclass(frozen=True)
class DemoConfig:
    """What `run_demo` renders and runs. `checkpoint`: "default" (shipped; random weights with
    a warning when it is missing), "none" (random weights of `preset`) or a path."""

    out_dir: Path = Path("demo_out")
    frames: int = 60
    # 4:3, the shipped model's aspect ratio (360x480): the clip reaches the network undistorted
    # and without letterbox bars. A 1:2 clip (256x512) letterboxed (resize_mode pad) fills a
    # third of the network input with bars: the reference's mIoU on it fell from 27.6% to 20.6%.
    height: int = 288
    width: int = 384
    checkpoint: str | None = "default"
    preset: str = DEFAULT_PRESET
    keyframe_interval: int = 5
    device: str = "auto"
    flow: str = "dis"
    backend: str = PipelineConfig.backend
    seed: int = 0
    alpha: float = 0.5
    # The camera's rate: frame i is stamped i / fps s, and the age-aware fusion reads keyframe
    # ages from the stamps. 2 fps with a keyframe every 5 frames gives ages 0.5 to 2 s, where
    # warping fails and Accel exists to help (the ages of the checkpoint's real-frame figures);
    # at 30 fps the same interval only reaches 0.13 s.
    fps: float = 2.0
    quiet: bool = False

    def pipeline(self, mode: str) -> PipelineConfig:
        """The segmenter settings of one mode (raises ValueError for bad values)."""
        return PipelineConfig(mode=mode, keyframe_interval=self.keyframe_interval,
                              device=self.device, flow_method=self.flow, backend=self.backend)

    def scene(self) -> Any:
        """The synthetic scene's SceneConfig (raises ValueError for bad values)."""
        from ..data.synthetic import scene_config

        return scene_config(height=self.height, width=self.width, seed=self.seed,
                            fps=self.fps)

    def validate(self) -> None:
        """Raise ValueError for any bad setting, before anything is loaded, rendered or
        written."""
        from ..stream import resolve_device

        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        self.scene()
        for mode in DEMO_MODES:
            self.pipeline(mode)
        resolve_device(self.device)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"output {self.out_dir} exists and is not a directory")


def demo_checkpoint(name: str | None) -> str | None:
    """The checkpoint the demo loads, given the --checkpoint value.

    The shipped checkpoint ("default") can be missing, e.g. in a source checkout before it
    has been trained: then warn and return None (random weights), so the demo still runs end
    to end, with meaningless labels. Any other value is passed through unchanged, so an
    explicit path that does not exist still fails loudly.
    """
    from .. import model

    if name is not None and str(name) == "default" and not model.DEFAULT_CHECKPOINT.is_file():
        print(
            f"warning: shipped checkpoint {model.DEFAULT_CHECKPOINT} is missing: the demo runs "
            "with RANDOM weights, so its labels and mIoU are meaningless (train one with "
            "`accel-ros train`, or pass --checkpoint PATH)",
            file=sys.stderr,
        )
        return None
    return name


def load_demo_model(config: DemoConfig) -> Any:
    """`model.load_model` of the checkpoint, or of the preset (random weights) without one."""
    from ..model import load_model

    name = demo_checkpoint(config.checkpoint)
    without = name is None or str(name).strip().lower() in ("", "none")
    return load_model(config.preset if without else name)


def mode_title(mode: str, model_config: Any) -> str:
    """Panel title in the paper's naming: Reference, DFF, DeepLab-18 (update net alone),
    Accel-18; for EfficientNet-Lite update nets DeepLab-Lite0, Accel-Lite0."""
    name = model_config.update_backbone or ""
    depth = name.removeprefix("resnet").replace("efficientnet_lite", "Lite")
    return {"dff": "DFF", "deeplab": f"DeepLab-{depth}", "accel": f"Accel-{depth}",
            "reference": "Reference"}[mode]


# ---------------------------------------------------------------------------------------------
# Running the modes


@dataclass
class ModeRun:
    """One mode over the clip. `labels`: per frame (H, W) uint8; `confusion`: (K, K) against
    the generator's labels; `agreement_confusion`: (K, K) against the reference's labels;
    `offset_confusion`: {keyframe offset: (K, K)} against the generator's labels
    (ages.frame_offset); `frame_time_s`: seconds between frames (their stamps); `backend`:
    what ran the networks (stream.BackendInfo)."""

    mode: str
    title: str
    labels: list[np.ndarray] = field(default_factory=list)
    keyframe_ages: list[int] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)
    confusion: np.ndarray | None = None
    agreement_confusion: np.ndarray | None = None
    offset_confusion: dict[int, np.ndarray] = field(default_factory=dict)
    frame_time_s: float = 0.0
    backend: Any = None

    @property
    def miou(self) -> float:
        """Clip mIoU (void excluded); NaN before any frame was scored."""
        return mean_iou(self.confusion) if self.confusion is not None else float("nan")

    @property
    def agreement(self) -> float:
        """Share of pixels labelled as the reference labels them; NaN before scoring."""
        if self.agreement_confusion is None:
            return float("nan")
        return pixel_accuracy(self.agreement_confusion)

    @property
    def agreement_miou(self) -> float:
        """mIoU with the reference's labels taken as the truth; NaN before scoring."""
        if self.agreement_confusion is None:
            return float("nan")
        return mean_iou(self.agreement_confusion)

    @property
    def ms_per_frame(self) -> float:
        """Mean segmenter time per frame, milliseconds."""
        totals = [t["total"] for t in self.summary.timings]
        return float(np.mean(totals)) if totals else float("nan")


def run_mode(model: Any, config: DemoConfig, mode: str, clip: list[Any]) -> ModeRun:
    """Stream `clip` (SyntheticFrames) through a fresh segmenter in `mode` sharing `model`."""
    from ..stream import AccelSegmenter

    segmenter = AccelSegmenter(model, config.pipeline(mode))
    num_classes = segmenter.model_config.num_classes
    title = mode_title(mode, segmenter.model_config)
    run = ModeRun(mode, title, summary=RunSummary(name=title), frame_time_s=1.0 / config.fps)
    run.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    run.summary.start()
    for frame in tqdm(clip, desc=f"demo {mode}", unit="frame", disable=config.quiet,
                      file=sys.stderr):
        result = segmenter.process(frame.image, stamp=frame.index / config.fps)
        run.labels.append(result.labels)
        run.keyframe_ages.append(result.keyframe_age)
        run.summary.add(result)
        confusion = confusion_matrix(result.labels, frame.labels, num_classes)
        run.confusion += confusion
        offset = ages.frame_offset(mode, result.keyframe_age, frame.index,
                                   config.keyframe_interval)
        run.offset_confusion[offset] = run.offset_confusion.get(offset, 0) + confusion
    run.summary.stop()
    run.summary.extra["mIoU"] = f"{100.0 * run.miou:.1f}%"
    run.backend = segmenter.backend_info()
    return run


def warm_up(model: Any, config: DemoConfig, clip: list[Any]) -> None:
    """Run two frames through every branch once, untimed: the first calls pay for kernel
    selection and memory pools (several hundred ms on a CPU), which would otherwise be
    billed to whichever mode runs first."""
    from ..stream import AccelSegmenter

    segmenter = AccelSegmenter(model, config.pipeline("accel" if model.config.update_backbone
                                                      else "dff"))
    for frame in clip[:2]:
        segmenter.process(frame.image, stamp=frame.index / config.fps)


def score_agreement(runs: list[ModeRun]) -> None:
    """Fill each run's `agreement_confusion` against the reference run's labels."""
    reference = next(run for run in runs if run.mode == "reference")
    num_classes = reference.confusion.shape[0]
    for run in runs:
        run.agreement_confusion = sum(
            (confusion_matrix(mine, theirs, num_classes)
             for mine, theirs in zip(run.labels, reference.labels, strict=True)),
            np.zeros((num_classes, num_classes), dtype=np.int64),
        )


# ---------------------------------------------------------------------------------------------
# The demo


@dataclass
class DemoResult:
    """What `run_demo` produced: runs per mode and the files written."""

    runs: list[ModeRun]
    files: dict[str, Path]
    wall_seconds: float
    checkpoint: str | None
    real_scores: str | None = None
    threads: int | None = None
    by_age: ages.AgeTable | None = None
    real_by_age: ages.RealAges | None = None
    verdict: list[str] = field(default_factory=list)


def run_demo(config: DemoConfig) -> DemoResult:
    """Check the settings, load the model, render the clip, run every demo mode, and write
    videos, PNG and JSON into `config.out_dir` (created only once all that has worked)."""
    config.validate()
    started = time.perf_counter()
    loaded = load_demo_model(config)
    clip = render_clip(config)
    model = loaded.model
    warm_up(model, config, clip)
    modes = [m for m in DEMO_MODES
             if m in ("reference", "dff") or model.config.update_backbone is not None]
    runs = [run_mode(model, config, mode, clip) for mode in modes]
    score_agreement(runs)
    checkpoint = str(loaded.path) if loaded.path is not None else None
    result = DemoResult(runs=runs, files={}, wall_seconds=0.0, checkpoint=checkpoint,
                        real_scores=real_video_scores(loaded.extra, model.config),
                        by_age=ages.age_table(runs, config.keyframe_interval, config.fps),
                        real_by_age=ages.real_ages(loaded.extra))
    result.verdict = ages.verdict(result.by_age, result.real_by_age)
    result.files = write_outputs(config, model.config, clip, result, weights_label(loaded))
    result.wall_seconds = time.perf_counter() - started
    write_summary(result.files["summary"], config, model.config, result)
    return result


def render_clip(config: DemoConfig) -> list[Any]:
    """The synthetic clip, SyntheticFrames with image, labels and flow."""
    from ..data.synthetic import SyntheticDrivingScene

    scene = SyntheticDrivingScene(config.scene(), num_frames=config.frames)
    return list(tqdm(scene, total=config.frames, desc="demo clip", unit="frame",
                     disable=config.quiet, file=sys.stderr))


def class_names(model_config: Any) -> tuple[str, ...]:
    """The model's class names (its own, else the data set's by class count)."""
    return palette_class_names(model_config.num_classes, tuple(model_config.class_names))


def footer(config: DemoConfig, model_config: Any, weights: str,
           result: DemoResult) -> np.ndarray:
    """The grid's bottom strip: class legend, the domain-gap caption, what the clip shows of
    Accel against DFF by keyframe age, what the checkpoint scored on real video, and the
    weights used."""
    width = 3 * config.width
    legend = render.legend_strip(width, config.height, class_names(model_config),
                                 model_config.palette)
    lines = [(DOMAIN_GAP, render.TEXT)]
    lines += [(line, render.TEXT) for line in result.verdict]
    if result.real_scores and len(result.verdict) < 2:  # the verdict quotes real video itself
        lines.append((result.real_scores, render.TEXT))
    lines.append((f"Weights: {weights}; camera {config.fps:g} fps; keyframe every "
                  f"{config.keyframe_interval} frames; +s: keyframe age; ms: segmenter time "
                  "per frame on this machine.", render.DIM))
    caption = render.caption_panel(width, config.height, lines)
    return np.concatenate([legend, caption], 0)


def real_video_scores(extra: dict[str, Any], model_config: Any) -> str | None:
    """One line of what the checkpoint scored on held-out real video, or None when it recorded
    nothing: the numbers the synthetic clip cannot show. A checkpoint trained on every
    labelled frame has no held-out video of its own; its `heldout_estimate` (the same recipe
    trained without one street) stands in for it."""
    estimate = extra.get("heldout_estimate")
    if isinstance(estimate, dict):
        extra = estimate
    scores = extra.get("val_miou")
    if not isinstance(scores, dict) or "reference" not in scores:
        return None
    names = {"reference": "Reference", "update": mode_title("deeplab", model_config),
             "fusion": mode_title("accel", model_config)}
    parts = [f"{names[key]} {100 * float(scores[key]):.1f}%" for key in names if key in scores]
    where = extra.get("validation") or "held-out real video"
    return f"On real video ({where}), mIoU: {', '.join(parts)}."


def weights_label(loaded: Any) -> str:
    """How the picture names the weights: the shipped checkpoint, a file, or random."""
    from ..model import DEFAULT_CHECKPOINT

    if loaded.path is None:
        return "RANDOM (no checkpoint: labels are meaningless)"
    if loaded.path == DEFAULT_CHECKPOINT:
        return "the shipped CamVid checkpoint"
    return loaded.path.name


def write_outputs(config: DemoConfig, model_config: Any, clip: list[Any],
                  result: DemoResult, weights: str) -> dict[str, Path]:
    """Write the Accel overlay video, the comparison video and its still, and the plot by
    keyframe age; {key: path} of every file, the summary's included (written by the
    caller)."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "accel_video": out_dir / ACCEL_VIDEO,
        "comparison_video": out_dir / COMPARISON_VIDEO,
        "comparison_image": out_dir / COMPARISON_IMAGE,
        "age_plot": out_dir / AGE_PLOT,
        "summary": out_dir / SUMMARY_JSON,
    }
    runs = result.runs
    ages.plot_ages(result.by_age, result.real_by_age, files["age_plot"])
    palette = model_config.palette
    accel = next((r for r in runs if r.mode == "accel"), runs[-1])
    strip = footer(config, model_config, weights, result)
    still = showcase_index(accel)
    with VideoWriter(files["accel_video"], config.fps) as accel_video, \
            VideoWriter(files["comparison_video"], config.fps) as grid_video:
        for t, frame in enumerate(tqdm(clip, desc="demo videos", unit="frame",
                                       disable=config.quiet, file=sys.stderr)):
            accel_video.write(render.label_panel(
                render_labels(accel.labels[t], palette, frame.image, config.alpha)[1],
                accel.title, render.age_label(accel, t, "keyframe")))
            grid = render.comparison_frame(t, frame.image, frame.labels, runs, palette=palette,
                                           alpha=config.alpha, footer=strip)
            grid_video.write(grid)
            if t == still:
                write_image_rgb(files["comparison_image"], grid)
    return files


def showcase_index(run: ModeRun) -> int:
    """The still's frame: see render.showcase_index."""
    return render.showcase_index(run.keyframe_ages)


def write_summary(path: Path, config: DemoConfig, model_config: Any,
                  result: DemoResult) -> None:
    """demo_summary.json: settings, model and its class names, what ran the networks, per
    mode its speed and scores, the scores by keyframe age and what they show."""
    runs = result.runs
    accel = next((r for r in runs if r.mode == "accel"), runs[-1])
    settings = {k: v for k, v in asdict(config).items() if k not in ("out_dir", "quiet")}
    real = result.real_by_age
    summary = {
        **{k: settings[k] for k in ("frames", "height", "width")},
        "checkpoint": result.checkpoint,
        "model": model_config.to_dict(),
        "class_names": list(class_names(model_config)),
        "backend": accel.backend.to_dict() if accel.backend is not None else None,
        "camera_fps": config.fps,
        "keyframe_interval": config.keyframe_interval,
        "settings": settings,
        "wall_seconds": result.wall_seconds,
        "modes": {run.mode: mode_summary(run) for run in runs},
        "by_keyframe_age": result.by_age.to_dict() if result.by_age is not None else None,
        "real_video_by_keyframe_age": asdict(real) if real is not None else None,
        "verdict": result.verdict,
        "showcase_frame": showcase_index(accel),
        "domain_gap": DOMAIN_GAP,
        "real_video": result.real_scores,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def mode_summary(run: ModeRun) -> dict[str, Any]:
    """One mode's entry of demo_summary.json."""
    return {
        "title": run.title,
        "frames": run.summary.frames,
        "keyframes": run.summary.keyframes,
        "fps": run.summary.fps,
        "mean_ms": run.ms_per_frame,
        "miou": _json_number(run.miou),
        "pixel_accuracy": _json_number(pixel_accuracy(run.confusion)),
        "iou_per_class": [_json_number(v) for v in iou_per_class(run.confusion)],
        "agreement_with_reference": _json_number(run.agreement),
        "miou_against_reference": _json_number(run.agreement_miou),
        "backend": run.backend.to_dict() if run.backend is not None else None,
    }


def _json_number(value: float) -> float | None:
    """NaN (metric undefined) -> null, so the summary stays strict JSON."""
    return None if np.isnan(value) else float(value)


def format_demo(result: DemoResult) -> str:
    """Per-mode summaries, a table of speed and scores, and the files written."""
    lines = []
    for run in result.runs:
        lines += [run.summary.format(), ""]
    lines.append(f"  {'mode':<14} {'ms/frame':>9} {'mIoU':>7} {'agrees with ref':>16} "
                 f"{'keyframes':>10}")
    for run in result.runs:
        agrees = ("(is the reference)" if run.mode == "reference"
                  else f"{100 * run.agreement:5.1f}% px")
        lines.append(f"  {run.title:<14} {run.ms_per_frame:9.1f} {100 * run.miou:6.1f}% "
                     f"{agrees:>16} {run.summary.keyframes:10d}")
    weights = result.checkpoint or "random weights (no checkpoint)"
    lines.append(f"  weights: {weights}; mIoU against the synthetic clip's labels "
                 "(a model trained on real CamVid: expect a domain gap)")
    if result.real_scores:
        lines.append(f"  {result.real_scores}")
    if result.by_age is not None:
        lines += ["", *ages.format_age_table(result.by_age, result.real_by_age)]
    lines += [f"  {line}" for line in result.verdict]
    backend = next((run.backend for run in result.runs if run.backend is not None), None)
    if backend is not None:
        lines.append(f"  {backend.describe()}")
    lines.append(f"  total wall time {result.wall_seconds:.1f} s")
    lines += [f"  {key}: {path}" for key, path in result.files.items()]
    return "\n".join(lines)
