"""Accel model: pure torch, no ROS imports (importable and runnable without ROS)."""

from .accel import AccelNet, SegmentationBranch
from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, resolve_checkpoint, save_checkpoint
from .flow import (
    DISFlow,
    FarnebackFlow,
    FlowEstimator,
    FlowNetLite,
    LearnedFlow,
    ZeroFlow,
    build_flow_estimator,
)
from .pipeline import (
    STAGES,
    AccelSegmenter,
    SegmentationResult,
    build_model,
    build_segmenter,
    resolve_device,
)
from .warp import resize_flow, warp

__all__ = [
    "DEFAULT_CHECKPOINT",
    "STAGES",
    "AccelNet",
    "AccelSegmenter",
    "DISFlow",
    "FarnebackFlow",
    "FlowEstimator",
    "FlowNetLite",
    "LearnedFlow",
    "SegmentationBranch",
    "SegmentationResult",
    "ZeroFlow",
    "build_flow_estimator",
    "build_model",
    "build_segmenter",
    "load_checkpoint",
    "resize_flow",
    "resolve_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "warp",
]
