"""The streaming engine: runs the Accel networks over the frames of one or more cameras.

`AccelSegmenter` keeps a keyframe cache per stream and decides, frame by frame, whether the
reference network runs or the cached features are warped (`segmenter`); `batching` is the one
policy for several cameras' frames at once; `fastpath` holds torch.compile, CUDA graphs and the
flow worker; `framing` pads frames to the networks' grid; `labels` turns scores into labels at
the frame's size; `ages` says which stamps time keyframe ages (and warns once per stream when
they cannot); `backend_info` says what runs the networks. The networks themselves are
`accel_ros.model`.
"""

from .ages import NOMINAL_FRAME_TIME_S, UnstampedFrameWarning
from .backend_info import BackendInfo
from .segmenter import (
    DEFAULT_STREAM,
    STAGES,
    AccelSegmenter,
    SegmentationResult,
    StreamFrame,
    build_segmenter,
    resolve_device,
)

__all__ = [
    "DEFAULT_STREAM",
    "NOMINAL_FRAME_TIME_S",
    "STAGES",
    "AccelSegmenter",
    "BackendInfo",
    "SegmentationResult",
    "StreamFrame",
    "UnstampedFrameWarning",
    "build_segmenter",
    "resolve_device",
]
