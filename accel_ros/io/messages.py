"""The node's custom message, without ROS: definition text, rosbags registration and the
per-frame field values built from a SegmentationResult.

ament_python packages cannot generate rosidl interfaces, so the message is defined and built by
the companion ament_cmake package ``accel_ros_msgs`` (accel_ros_msgs/msg/SegmentationStats.msg,
built by `colcon build`). Everything here works without it: rosbags registers the same type name
from `STATS_MSG_TEXT` to write stats into bags, and the node falls back to publishing
`stats_to_json` on a std_msgs/String when accel_ros_msgs is not installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STATS_TYPE_NAME = "accel_ros_msgs/msg/SegmentationStats"
STAGES = ("feature", "flow", "warp", "task", "update", "fusion", "output", "total")

# Byte-for-byte copy of accel_ros_msgs/msg/SegmentationStats.msg (a test keeps them equal).
STATS_MSG_TEXT = """\
# Per-frame statistics of the accel_ros segmentation node, published on ~/stats.

# Same stamp and frame_id as the input image the labels were computed from.
std_msgs/Header header

# Frames processed since the node started (or since the last reset of the counters).
uint64 frame_index
bool is_keyframe
# Frames since the last keyframe; 0 on a keyframe.
uint32 keyframe_age
# Pipeline mode: accel, dff, deeplab or reference.
string mode

# Stage latencies of this frame in milliseconds; 0 for a stage not run on this frame.
float32 feature_ms
float32 flow_ms
float32 warp_ms
float32 task_ms
float32 update_ms
float32 fusion_ms
# Upsampling to the input size, argmax and softmax confidence.
float32 output_ms
# Segmenter time for this frame (all stages plus overhead).
float32 total_ms
# Time from the input header stamp to publishing the labels: transport, queueing, conversion
# and inference. Meaningless (NaN) when the input stamp is zero.
float32 end_to_end_ms

# Mean over pixels of the maximum softmax probability.
float32 confidence
# Input frames dropped so far because inference was slower than the camera.
uint64 dropped_frames
# Why the keyframe cache was reset on this frame; empty when it was not.
string reset_reason
"""


def register_stats_type(typestore: Any) -> type:
    """Register accel_ros_msgs/msg/SegmentationStats in a rosbags typestore; returns its class.

    Idempotent: registering twice is a no-op. The typestore must already know
    std_msgs/msg/Header (every ROS 2 store does).
    """
    from rosbags.typesys import get_types_from_msg

    if STATS_TYPE_NAME not in typestore.types:
        typestore.register(get_types_from_msg(STATS_MSG_TEXT, STATS_TYPE_NAME))
    return typestore.types[STATS_TYPE_NAME]


def stamp_to_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time-like (``sec``, ``nanosec``) -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec) with 0 <= nanosec < 1e9."""
    total_ns = round(float(seconds) * 1e9)
    return total_ns // 1_000_000_000, total_ns % 1_000_000_000


def stats_fields(
    result: Any,
    *,
    mode: str,
    stamp: float | None,
    now: float,
    dropped_frames: int = 0,
    reset_reason: str | None = None,
) -> dict[str, Any]:
    """SegmentationStats fields (all but ``header``) for one SegmentationResult.

    `stamp` is the input header stamp and `now` the publish time, both in seconds on the same
    clock; a missing or zero stamp, or one in the future (a clock offset between machines),
    gives a NaN end-to-end latency rather than a huge or negative number.
    `reset_reason` overrides the result's own (e.g. the node reset on a resolution change).
    """
    timings = dict(result.timings)
    fields: dict[str, Any] = {
        "frame_index": int(result.frame_index),
        "is_keyframe": bool(result.is_keyframe),
        "keyframe_age": int(result.keyframe_age),
        "mode": str(mode),
    }
    for stage in STAGES:
        fields[f"{stage}_ms"] = float(timings.get(stage, 0.0))
    fields["end_to_end_ms"] = (now - stamp) * 1000.0 if stamp and now >= stamp else math.nan
    fields["confidence"] = float(result.confidence)
    fields["dropped_frames"] = int(dropped_frames)
    fields["reset_reason"] = reset_reason or result.reset_reason or ""
    return fields


def stats_to_json(fields: dict[str, Any], stamp: tuple[int, int] | None, frame_id: str) -> str:
    """The std_msgs/String fallback payload: the same fields plus the header, as JSON.

    `stamp` is the input header's (sec, nanosec), copied exactly so the stats can be matched
    to the image they describe. NaN is written as null so that strict JSON parsers accept it.
    """
    sec, nanosec = stamp or (0, 0)
    header = {"stamp": {"sec": int(sec), "nanosec": int(nanosec)}, "frame_id": frame_id}
    payload: dict[str, Any] = {"header": header}
    for key, value in fields.items():
        payload[key] = None if isinstance(value, float) and math.isnan(value) else value
    return json.dumps(payload, sort_keys=False)


# -- class metadata: accel_ros_msgs/msg/LabelInfo ----------------------------------------------
LABEL_INFO_TYPE_NAME = "accel_ros_msgs/msg/LabelInfo"
CLASS_INFO_TYPE_NAME = "accel_ros_msgs/msg/ClassInfo"
# Byte-for-byte copies of accel_ros_msgs/msg/ClassInfo.msg and LabelInfo.msg (a test keeps them
# equal).
CLASS_INFO_MSG_TEXT = """\
# One class of a label image: the fields of vision_msgs/VisionClass.
uint16 class_id
string class_name
"""
LABEL_INFO_MSG_TEXT = """\
# Class metadata of the accel_ros segmentation node's label images. Published on ~/label_info
# with transient-local durability, so a subscriber that joins late still receives it, and
# recorded in the output bags of `accel-ros segment`. class_map and threshold are the fields of
# vision_msgs/LabelInfo, so a bridge to it copies them.
std_msgs/Header header
# Class id -> name, in id order.
ClassInfo[] class_map
# Confidence below which a pixel would be unlabelled; 0: every pixel gets its arg-max class.
float32 threshold
# Label value of pixels no class was predicted for (outside the crop with resize_mode crop).
uint8 ignore_id
# Colours of ~/color and ~/overlay: the palette's name and RGB triplets in class-id order.
string palette
uint8[] colors
# The model: sha256 of its checkpoint file ("random:<sha256 of its config>" for random
# weights), and the network input size frames are resized to under resize_mode (labels come
# back at each input's own size).
string model_hash
uint32 input_height
uint32 input_width
string resize_mode
"""


def register_label_info_type(typestore: Any) -> type:
    """Register accel_ros_msgs/msg/LabelInfo (and its ClassInfo) in a rosbags typestore;
    returns the LabelInfo class. Idempotent, like `register_stats_type`."""
    from rosbags.typesys import get_types_from_msg

    for name, text in ((CLASS_INFO_TYPE_NAME, CLASS_INFO_MSG_TEXT),
                       (LABEL_INFO_TYPE_NAME, LABEL_INFO_MSG_TEXT)):
        if name not in typestore.types:
            typestore.register(get_types_from_msg(text, name))
    return typestore.types[LABEL_INFO_TYPE_NAME]


def label_info_fields(
    class_names: Sequence[str],
    colors: Any,
    *,
    palette: str,
    model_hash: str,
    input_size: tuple[int, int] | None,
    resize_mode: str,
    ignore_id: int = 255,
) -> dict[str, Any]:
    """LabelInfo fields (all but ``header``), with ``class_map`` as (class_id, class_name)
    pairs for the caller to wrap in its ClassInfo type. `colors` is the palette, (K, 3) uint8;
    `input_size` None (the frames' own size) is written as 0 x 0."""
    height, width = input_size or (0, 0)
    return {
        "class_map": [(index, str(name)) for index, name in enumerate(class_names)],
        "threshold": 0.0,
        "ignore_id": int(ignore_id),
        "palette": str(palette),
        "colors": [int(v) for v in np.asarray(colors, dtype=np.uint8).reshape(-1)],
        "model_hash": str(model_hash),
        "input_height": int(height),
        "input_width": int(width),
        "resize_mode": str(resize_mode),
    }


def segmenter_label_info(segmenter: Any, palette: str) -> dict[str, Any]:
    """`label_info_fields` of what an AccelSegmenter runs, drawn in `palette`."""
    from ..palette import class_names, get_palette

    config = segmenter.model_config
    return label_info_fields(
        class_names(config.num_classes, config.class_names), get_palette(palette),
        palette=palette, model_hash=getattr(segmenter, "model_hash", ""),
        input_size=getattr(segmenter, "input_size", None),
        resize_mode=segmenter.pipeline_config.resize_mode,
    )


def label_info_message(
    label_info_type: Callable[..., Any],
    class_info_type: Callable[..., Any],
    fields: dict[str, Any],
    header: Any,
    colors: Callable[[list[int]], Any],
) -> Any:
    """A LabelInfo message from `label_info_fields`: the node's (rclpy's accel_ros_msgs
    classes) and a bag's (a rosbags typestore's) alike; `colors` makes their uint8[] array.

    `header` is that of the camera frame the class metadata goes with (its first one, in a
    bag), so that frame_id names the camera as every other output of it does. Only a message
    that goes with no single camera frame carries an empty frame_id: a multi-camera node's one
    ~/label_info, and any node's before its first frame."""
    values = dict(fields)
    values["class_map"] = [class_info_type(class_id=index, class_name=name)
                           for index, name in fields["class_map"]]
    values["colors"] = colors(fields["colors"])
    return label_info_type(header=header, **values)


def label_info_to_json(fields: dict[str, Any], frame_id: str,
                       stamp: tuple[int, int] | None = None) -> str:
    """The std_msgs/String fallback payload of LabelInfo, as JSON; `stamp` (sec, nanosec) as
    the message's header would carry it."""
    sec, nanosec = stamp or (0, 0)
    header = {"stamp": {"sec": int(sec), "nanosec": int(nanosec)}, "frame_id": frame_id}
    payload = {"header": header, **fields,
               "class_map": [{"class_id": i, "class_name": n} for i, n in fields["class_map"]]}
    return json.dumps(payload)
