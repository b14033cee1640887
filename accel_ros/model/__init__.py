"""The Accel networks and their checkpoints: pure torch, no ROS imports. Running them over a
stream of frames is `accel_ros.stream`'s job."""

from .accel import AccelNet, SegmentationBranch
from .checkpoint import (
    DEFAULT_CHECKPOINT,
    LoadedModel,
    average_checkpoints,
    build_model,
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
from .warp import feature_size, flow_to_features, resize_flow, warp

__all__ = [
    "DEFAULT_CHECKPOINT",
    "AccelNet",
    "DISFlow",
    "FarnebackFlow",
    "FlowEstimator",
    "LoadedModel",
    "SegmentationBranch",
    "TorchFlow",
    "ZeroFlow",
    "average_checkpoints",
    "build_flow",
    "build_flow_estimator",
    "build_model",
    "feature_size",
    "flow_to_features",
    "load_checkpoint",
    "load_model",
    "load_model_or_preset",
    "resize_flow",
    "resolve_checkpoint",
    "save_checkpoint",
    "warp",
]
