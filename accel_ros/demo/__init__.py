"""`accel-ros demo`: the self-contained showcase.

Renders a short synthetic driving clip (accel_ros.data.synthetic, CamVid label ids) as a
camera at `DemoConfig.fps` sends it (frame i stamped i / fps s: the age-aware fusion reads
keyframe ages from the stamps), runs it through the streaming segmenter as the reference (its
network on every frame), DFF, DeepLab (update branch only) and Accel with one shared model,
scores each mode against the generator's labels (mIoU, also per keyframe age: ages.py) and
against the reference (agreement), and writes:

- ``demo_accel.mp4``: Accel overlays;
- ``demo_comparison.mp4`` and ``demo_comparison.png``: a 2x3 grid, input | generator's labels |
  reference over DFF | DeepLab | Accel, every panel titled with its scores and ms/frame,
  above a legend and a caption on the domain gap (synthetic frames, a model trained on real
  CamVid);
- ``demo_ages.png``: mIoU by keyframe age, this clip's modes beside the checkpoint's record
  on real held-out video;
- ``demo_summary.json``: class names, backend, per-mode frames, keyframes, speed, mIoU and
  agreement, mIoU by keyframe age and the verdict on Accel against DFF.

Needs no data set and no network; falls back to random weights (with a warning) when the
shipped checkpoint is not installed, so it always runs.
"""

from .render import (
    age_label,
    caption_panel,
    comparison_frame,
    label_panel,
    legend_strip,
    showcase_index,
)
from .run import (
    ACCEL_VIDEO,
    AGE_PLOT,
    COMPARISON_IMAGE,
    COMPARISON_VIDEO,
    DEMO_MODES,
    SUMMARY_JSON,
    DemoConfig,
    DemoResult,
    ModeRun,
    demo_checkpoint,
    format_demo,
    mode_title,
    run_demo,
)

__all__ = [
    "ACCEL_VIDEO",
    "AGE_PLOT",
    "COMPARISON_IMAGE",
    "COMPARISON_VIDEO",
    "DEMO_MODES",
    "SUMMARY_JSON",
    "DemoConfig",
    "DemoResult",
    "ModeRun",
    "age_label",
    "caption_panel",
    "comparison_frame",
    "demo_checkpoint",
    "format_demo",
    "label_panel",
    "legend_strip",
    "mode_title",
    "run_demo",
    "showcase_index",
]
