"""Accel model: pure torch, no ROS imports (importable and runnable without ROS)."""

from .accel import AccelNet, SegmentationBranch
from .checkpoint import (
    DEFAULT_CHECKPOINT,
    LoadedModel,
    average_checkpoints,
    load_checkpoint,
    load_model,
    load_model_or_preset,
    resolve_checkpoint,
    save_checkpoint,
)
from .flow import (
    DISFlow,
    FarnebackFlow,
    FlowEstimator,
    TorchFlow,
    ZeroFlow,
    build_flow,
    build_flow_estimator,
)
from .pipeline import (
    DEFAULT_STREAM,
    STAGES,
    AccelSegmenter,
    SegmentationResult,
    StreamFrame,
    build_model,
    build_segmenter,
    resolve_device,
)
from .warp import feature_size, flow_to_features, resize_flow, warp

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_STREAM",
    "STAGES",
    "AccelNet",
    "AccelSegmenter",
    "DISFlow",
    "FarnebackFlow",
    "FlowEstimator",
    "LoadedModel",
    "SegmentationBranch",
    "SegmentationResult",
    "StreamFrame",
    "TorchFlow",
    "ZeroFlow",
    "average_checkpoints",
    "build_flow",
    "build_flow_estimator",
    "build_model",
    "build_segmenter",
    "feature_size",
    "flow_to_features",
    "load_checkpoint",
    "load_model",
    "load_model_or_preset",
    "resize_flow",
    "resolve_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "warp",
]
