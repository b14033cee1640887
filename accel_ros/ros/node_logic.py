"""Everything the segmentation node decides, without ROS, so it is testable without rclpy.

- Parameters: `PARAMETERS` lists every ROS parameter (name, default, type, description, whether
  it may change at run time). Pipeline parameters map 1:1 onto `PipelineConfig` fields; the
  rest are node options (`NodeOptions`). `parse_parameters` validates a full set,
  `plan_parameter_update` accepts live-safe changes and rejects the others with a reason.
- `StampGapMonitor`: the time-gap rule, judged on the arrival of every frame (dropped ones
  included), so drops never look like gaps.
- `FrameSlot`: newest-frame hand-off between the subscription callback and the worker thread,
  counting the frames that were overwritten before the worker got to them.
- `StreamStatistics`: per-stage latency mean/p50/p99, fps and keyframe ratio over a window.
- `FrameProcessor`: one message in, segmentation outputs (or None for a bad frame) out.
- `diagnostic_report`: the /diagnostics status built from all of the above.
- Several cameras (`image_topics`): `plan_streams` names the streams and their topics,
  `StreamSlots` lets one worker wait for whichever stream has a frame and take the newest frame
  of every ready stream, `BatchProcessor` segments them in one batch while keeping each
  stream's bad frames, failures and counters to that stream.
"""

from __future__ import annotations

import array
import copy
import dataclasses
import difflib
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_PRESET, PRESETS, PipelineConfig, load_yaml
from ..io.bridge import ImageConversionError, message_to_rgb8
from ..io.messages import stamp_to_seconds
from ..palette import PALETTES, colorize, overlay

NODE_NAME = "accel_segmentation"
TRANSPORTS = ("raw", "compressed")
OUTPUT_QOS = ("reliable", "best_effort")
# Parameters every rclpy node declares itself; a `ros2 param dump` of the node contains them.
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_BUILTIN_PREFIXES = ("qos_overrides.",)
# Source-tree location; an installed node prefers share/accel_ros/config/accel.yaml.
SOURCE_PARAMS_FILE = Path(__file__).resolve().parents[1] / "config" / "accel.yaml"


# One token of a ROS name: what `~/<stream>/labels` may contain between slashes.
_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def stream_name(topic: str) -> str:
    """The stream a camera topic feeds, which names its outputs (`~/<stream>/labels`).

    A leading "/" or "~/" is dropped, then the last component when there is more than one:
    "front/image" -> "front", "/cams/left/image_raw" -> "cams/left", "rear" -> "rear".
    """
    name = topic.strip()
    for prefix in ("~/", "/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    parts = name.split("/")
    return "/".join(parts[:-1] if len(parts) > 1 else parts)


def stream_names(topics: Sequence[str]) -> tuple[str, ...]:
    """Stream names of `image_topics`, in order. Raises ValueError naming the topic for an
    empty entry, a name that cannot be part of a ROS topic, or two topics giving one stream
    (their outputs would be mixed on one set of topics)."""
    names: dict[str, str] = {}
    for topic in topics:
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError(f"image_topics: empty topic name in {list(topics)}")
        name = stream_name(topic)
        tokens = name.split("/")
        if not all(_NAME_TOKEN.fullmatch(t) and "__" not in t for t in tokens):
            raise ValueError(
                f"image_topics: {topic!r} gives the stream name {name!r}, which is not a valid "
                "ROS name (letters, digits and _; no component may start with a digit)"
            )
        if name in names:
            raise ValueError(
                f"image_topics: {names[name]!r} and {topic!r} both give the stream name "
                f"{name!r} (the topic without its last component); rename or remap one"
            )
        names[name] = topic
    return tuple(names)


@dataclass
class NodeOptions:
    """Node-only parameters (everything that is not a PipelineConfig field)."""

    preset: str = DEFAULT_PRESET
    # "default" = the checkpoint shipped in the package, "none" = random weights, or a path.
    checkpoint: str = "default"
    image_topic: str = "image"
    # Several cameras: one stream per topic (image_topic is then unused); empty = one stream.
    image_topics: list[str] = field(default_factory=list)
    input_transport: str = "raw"
    # Output images and stats: reliable keep-last with this depth (a depth of 1 lost 10-25% of
    # 360x480 images to a subscriber at 2 Hz), or best_effort.
    output_qos: str = "reliable"
    output_qos_depth: int = 10
    palette: str = "camvid_cityscapes"
    overlay_alpha: float = 0.5
    publish_color: bool = True
    publish_overlay: bool = True
    publish_scores: bool = False
    diagnostics_period: float = 1.0
    # A stream without an arriving frame for this long is reported stopped (STALE); 0 = never.
    stream_timeout: float = 3.0
    stats_window: int = 100
    log_throttle: float = 5.0
    # Decode sensor_msgs/Image with cv_bridge when it imports; the numpy bridge otherwise.
    use_cv_bridge: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {sorted(PRESETS)}")
        if self.input_transport not in TRANSPORTS:
            raise ValueError(
                f"input_transport {self.input_transport!r} is not one of {TRANSPORTS}"
            )
        if self.output_qos not in OUTPUT_QOS:
            raise ValueError(f"output_qos {self.output_qos!r} is not one of {OUTPUT_QOS}")
        if self.output_qos_depth < 1:
            raise ValueError(f"output_qos_depth must be >= 1, got {self.output_qos_depth}")
        if not self.image_topic.strip():
            raise ValueError("image_topic must not be empty")
        stream_names(self.image_topics)  # empty, invalid or duplicate stream names
        if self.palette not in PALETTES:
            raise ValueError(f"palette {self.palette!r} is not one of {sorted(PALETTES)}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.diagnostics_period <= 0:
            raise ValueError(f"diagnostics_period must be > 0, got {self.diagnostics_period}")
        if not self.stream_timeout >= 0:
            raise ValueError(f"stream_timeout must be >= 0, got {self.stream_timeout}")
        if self.stats_window < 2:
            raise ValueError(f"stats_window must be >= 2 frames, got {self.stats_window}")
        if self.log_throttle < 0:
            raise ValueError(f"log_throttle must be >= 0, got {self.log_throttle}")

    @property
    def random_weights(self) -> bool:
        return self.checkpoint.strip().lower() in ("", "none")


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter. `kind` is the ROS type: bool, int, float, str, int_array or
    str_array."""

    name: str
    default: Any
    kind: str
    description: str
    # Target object: "pipeline" (PipelineConfig field) or "node" (NodeOptions field).
    target: str
    live: bool = False
    choices: tuple[str, ...] = ()


_DESCRIPTIONS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    # name: (description, live, choices)
    "mode": (
        "accel: warped reference + update branch; dff: warp only; deeplab: update branch "
        "every frame; reference: reference branch every frame",
        False,
        ("accel", "dff", "deeplab", "reference"),
    ),
    "keyframe_interval": ("run the reference network every N frames", True, ()),
    "adaptive_flow_threshold": (
        "extra keyframe when mean accumulated flow since the keyframe exceeds this many input "
        "pixels; 0 disables",
        True,
        (),
    ),
    "adaptive_confidence_drop": (
        "extra keyframe when mean confidence falls this much below the keyframe's; 0 disables",
        True,
        (),
    ),
    "flow_method": ("optical flow estimator", False, ("dis", "farneback", "flownet", "zero")),
    "flow_scale": ("flow runs on frames downscaled by this factor, in (0, 1]", False, ()),
    "out_of_frame": (
        "what warping samples outside the frame: border (replicate) or zeros",
        True,
        ("border", "zeros"),
    ),
    "device": ("auto, cpu or cuda:N", False, ()),
    "precision": ("inference precision", False, ("fp32", "fp16", "bf16")),
    "channels_last": ("run convolutions in channels-last memory format", False, ()),
    "input_size": (
        "[height, width] the network runs at (labels are resized back); [0, 0] = camera size",
        False,
        (),
    ),
    "max_time_gap": (
        "a gap between the header stamps of consecutive arriving frames longer than this (s) "
        "and than twice the stream's median frame period resets the keyframe cache",
        True,
        (),
    ),
    "return_probabilities": (
        "keep per-class probabilities (forced on while publish_scores is true)",
        True,
        (),
    ),
    "overlap_flow": (
        "compute CPU optical flow in a worker thread while the update branch runs",
        False,
        (),
    ),
    "torch_compile": ("torch.compile the network calls when the segmenter is built", False, ()),
    "cuda_graphs": ("replay the network calls as CUDA graphs (CUDA devices only)", False, ()),
    "stagger_keyframes": (
        "with several streams, offset stream i's keyframes by about i * keyframe_interval / N "
        "frames so reference-network runs are spread over the batches",
        True,
        (),
    ),
    "preset": ("model preset; a checkpoint's own config wins", False, tuple(PRESETS)),
    "checkpoint": (
        "'default' = shipped weights, 'none' = random weights (testing only), or a .pt path",
        False,
        (),
    ),
    "image_topic": ("input image topic (or remap 'image')", False, ()),
    "image_topics": (
        "several cameras: one stream per topic (relative, remappable), outputs under "
        "~/<stream>/ where <stream> is the topic without its last component "
        "('front/image' -> front); empty = one stream on image_topic",
        False,
        (),
    ),
    "input_transport": (
        "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/CompressedImage on "
        "<image_topic>/compressed (after remapping)",
        False,
        TRANSPORTS,
    ),
    "output_qos": ("reliability of the output topics", False, OUTPUT_QOS),
    "output_qos_depth": ("keep-last depth of the output topics", False, ()),
    "palette": ("colours of ~/color and ~/overlay", True, tuple(PALETTES)),
    "overlay_alpha": ("label opacity in ~/overlay, in [0, 1]", True, ()),
    "publish_color": ("publish ~/color (rgb8 colourised labels)", True, ()),
    "publish_overlay": ("publish ~/overlay (labels alpha-blended on the input)", True, ()),
    "publish_scores": ("publish ~/scores (32FC1 per-pixel max probability)", True, ()),
    "diagnostics_period": ("seconds between /diagnostics messages", False, ()),
    "stream_timeout": (
        "seconds without an arriving frame after which a stream is reported stopped (STALE) "
        "in /diagnostics; 0 = never",
        True,
        (),
    ),
    "stats_window": ("frames in the latency / fps / keyframe-ratio window", False, ()),
    "log_throttle": ("seconds between repeated warnings of one kind", True, ()),
    "use_cv_bridge": (
        "decode images with cv_bridge when importable (else the numpy bridge)",
        False,
        (),
    ),
}


# Array parameters by name: an empty default says nothing about the element type.
_ARRAY_KINDS = {"input_size": "int_array", "image_topics": "str_array"}


def _ros_kind(value: Any, name: str) -> str:
    if name in _ARRAY_KINDS:
        return _ARRAY_KINDS[name]
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):
            return kind
    raise TypeError(f"no ROS parameter type for {name}={value!r}")


def _ros_value(name: str, value: Any) -> Any:
    """Config value -> ROS parameter value (None input_size is [0, 0])."""
    if name == "input_size":
        return [0, 0] if value is None else [int(v) for v in value]
    if name == "image_topics":
        return list(value)
    return value


def _build_specs() -> tuple[ParamSpec, ...]:
    specs = []
    for target, defaults in (
        ("pipeline", PipelineConfig().to_dict()),
        ("node", dataclasses.asdict(NodeOptions())),
    ):
        for name, value in defaults.items():
            # A field added to a config later still becomes a (restart-only) parameter.
            description, live, choices = _DESCRIPTIONS.get(name, (f"{target} {name}", False, ()))
            value = _ros_value(name, value)
            specs.append(
                ParamSpec(name, value, _ros_kind(value, name), description, target, live, choices)
            )
    return tuple(specs)


PARAMETERS: tuple[ParamSpec, ...] = _build_specs()
PARAMETER_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


def is_ros_builtin(name: str) -> bool:
    """True for the parameters rclpy declares on every node (use_sim_time, ...)."""
    return name in ROS_BUILTIN_PARAMETERS or name.startswith(ROS_BUILTIN_PREFIXES)


def unknown_parameters(names: Iterable[str]) -> list[str]:
    """The names that are neither this node's parameters nor rclpy's own, each with a
    suggestion when one is close ("keyframe_intervall (did you mean keyframe_interval?)")."""
    report = []
    for name in sorted(set(names)):
        if name in PARAMETER_SPECS or is_ros_builtin(name):
            continue
        close = difflib.get_close_matches(name, list(PARAMETER_SPECS), n=1)
        report.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return report


def default_parameters(params_file: str | Path | None = None) -> dict[str, Any]:
    """ROS parameter defaults: the code defaults, overridden by `params_file` when given.

    Raises ValueError for unknown names in the file (a typo would otherwise be ignored);
    rclpy's own parameters (use_sim_time, ...) are allowed there and left out of the result.
    """
    # Copies: an array default must not be shared with (and mutated through) the result.
    values = {spec.name: copy.copy(spec.default) for spec in PARAMETERS}
    if params_file is not None:
        loaded = load_yaml(params_file)
        unknown = unknown_parameters(loaded)
        if unknown:
            raise ValueError(f"{params_file}: unknown parameters {unknown}")
        values.update({k: v for k, v in loaded.items() if k in values})
    return values


@dataclass
class NodeSettings:
    """A validated parameter set: pipeline config plus node options."""

    pipeline: PipelineConfig
    options: NodeOptions

    def parameter_values(self) -> dict[str, Any]:
        """Back to ROS parameter values (the inverse of `parse_parameters`)."""
        values = {k: _ros_value(k, v) for k, v in self.pipeline.to_dict().items()}
        values.update(dataclasses.asdict(self.options))
        return values


def _coerce(spec: ParamSpec, value: Any) -> Any:
    """Check one ROS value against its declared type; ints are accepted for floats."""
    if spec.kind == "str_array" and value is None:
        # rcl reads `[]` (a params file, `-p name:=[]`) as a value of no type: an empty list.
        value = []
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        # rclpy hands integer arrays over as array.array('q').
        "int_array": isinstance(value, (list, tuple, array.array))
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "str_array": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }[spec.kind]
    if not ok:
        raise ValueError(
            f"parameter {spec.name!r} must be of type {spec.kind}, got {value!r} "
            f"({type(value).__name__})"
        )
    if spec.kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"parameter {spec.name!r} must be finite, got {value}")
    if spec.kind == "int_array":
        value = [int(v) for v in value]
    if spec.kind == "str_array":
        value = list(value)
    return value


def parse_parameters(values: Mapping[str, Any]) -> NodeSettings:
    """Validate a complete parameter set. Missing names take their defaults; unknown names,
    wrong types and invalid values raise ValueError naming the parameter."""
    unknown = sorted(set(values) - set(PARAMETER_SPECS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}")
    merged = {spec.name: spec.default for spec in PARAMETERS}
    merged.update({k: _coerce(PARAMETER_SPECS[k], v) for k, v in values.items()})
    pipeline = {k: v for k, v in merged.items() if PARAMETER_SPECS[k].target == "pipeline"}
    node = {k: v for k, v in merged.items() if PARAMETER_SPECS[k].target == "node"}
    if pipeline["input_size"] in ([0, 0], []):
        pipeline["input_size"] = None
    try:
        return NodeSettings(PipelineConfig.from_dict(pipeline), NodeOptions(**node))
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid parameters: {error}") from error


@dataclass
class UpdatePlan:
    """Outcome of a run-time parameter change request."""

    successful: bool
    reason: str = ""
    settings: NodeSettings | None = None
    changed: tuple[str, ...] = ()


def plan_parameter_update(current: NodeSettings, changes: Mapping[str, Any]) -> UpdatePlan:
    """Accept `changes` if all are live-safe and valid; never mutates `current`.

    A change to a parameter that needs a restart (device, model, flow method...) is rejected
    with a reason, unless the value is unchanged (ROS re-sets parameters it was not asked to).
    """
    values = current.parameter_values()
    changed = []
    for name, value in changes.items():
        spec = PARAMETER_SPECS.get(name)
        if spec is None:
            return UpdatePlan(False, f"unknown parameter {name!r}")
        try:
            value = _coerce(spec, value)
        except ValueError as error:
            return UpdatePlan(False, str(error))
        if value == values[name]:
            continue
        if not spec.live:
            return UpdatePlan(
                False,
                f"parameter {name!r} cannot change while the node runs (the model and "
                "pipeline are built once); restart the node with the new value",
            )
        values[name] = value
        changed.append(name)
    try:
        settings = parse_parameters(values)
    except ValueError as error:
        return UpdatePlan(False, str(error))
    return UpdatePlan(True, "", settings, tuple(changed))


def apply_live_pipeline(target: PipelineConfig, settings: NodeSettings) -> None:
    """Copy the live-safe pipeline fields of `settings` into the segmenter's own config object
    (the segmenter reads them on every frame, so no rebuild is needed)."""
    for spec in PARAMETERS:
        if spec.target == "pipeline" and spec.live:
            setattr(target, spec.name, getattr(settings.pipeline, spec.name))
    # ~/scores needs probabilities, so publishing scores switches them on.
    target.return_probabilities = (
        settings.pipeline.return_probabilities or settings.options.publish_scores
    )


class StampGapMonitor:
    """The time-gap rule of the node, judged on the arrival of every frame.

    A stream is discontinuous (bag loop, camera restart, paused simulation) when the header
    stamp of a frame is older than the previous *arriving* frame's, or newer by more than
    `max_time_gap` and by more than `period_factor` times the median of the recent frame
    periods. Judging arrivals, not processed frames, means frames dropped by the newest-frame
    policy never widen a gap; the period term keeps a 1 Hz camera from resetting on jitter.
    """

    def __init__(self, history: int = 15, period_factor: float = 2.0) -> None:
        self.period_factor = float(period_factor)
        self._periods: deque[float] = deque(maxlen=history)
        self.last_stamp: float | None = None

    def observe(self, stamp: float | None, max_time_gap: float) -> str | None:
        """Record one arrival (`stamp` in seconds; None or 0 = unstamped, ignored). Returns why
        the keyframe cache must be reset before this frame, or None."""
        if not stamp:
            return None
        previous, self.last_stamp = self.last_stamp, stamp
        if previous is None:
            return None
        gap = stamp - previous
        if gap < 0:
            self._periods.clear()
            return f"time went backwards by {-gap:.3f} s"
        typical = float(np.median(self._periods)) if self._periods else 0.0
        if gap > max_time_gap and gap > self.period_factor * typical:
            return f"time gap of {gap:.3f} s > max_time_gap {max_time_gap:g} s"
        if gap > 0:
            self._periods.append(gap)
        return None


class FrameSlot:
    """Newest-frame mailbox between a subscription callback and one worker thread.

    `put` never blocks: an item that the worker has not taken yet is replaced, and counted as
    dropped, so the worker always processes the newest frame when inference is slower than
    the camera. A reset requested with a frame survives that frame being dropped: the worker
    gets it with the next frame it takes. `recent_drop_ratio` covers the last `window`
    arrivals only, so a burst of drops does not mark the node unhealthy forever.

    Slots of several streams share one `condition` (see `StreamSlots`), so that one worker
    can wait for whichever stream has a frame first. `last_arrival` is the `clock` time of the
    latest `put` (None before the first), which tells a stopped camera from a slow one.
    """

    def __init__(
        self,
        window: int = 100,
        condition: threading.Condition | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._condition = condition or threading.Condition()
        self._clock = clock
        self.last_arrival: float | None = None
        self._item: Any = None
        self._full = False
        self._closed = False
        self._reset: str | None = None
        self._recent: deque[bool] = deque(maxlen=max(int(window), 1))  # True = dropped
        self.received = 0
        self.dropped = 0

    def put(self, item: Any, reset_reason: str | None = None) -> bool:
        """Store `item` (and a reset to apply before it); returns True if it replaced (dropped)
        an unprocessed one."""
        with self._condition:
            replaced = self._full
            if replaced and self._recent:
                self._recent[-1] = True
            self._recent.append(False)
            self._item, self._full = item, True
            self._reset = self._reset or reset_reason
            self.received += 1
            self.dropped += int(replaced)
            self.last_arrival = self._clock()
            self._condition.notify_all()  # a shared condition may have other waiters
            return replaced

    def take_entry(self, timeout: float | None = None) -> tuple[Any, str | None] | None:
        """(newest item, pending reset reason or None), waiting up to `timeout` s; None on
        timeout or after close()."""
        with self._condition:
            if not self._full and not self._closed:
                self._condition.wait(timeout)
            return self._pop() if self._full else None

    @property
    def ready(self) -> bool:
        """A frame is waiting (read under the condition by `StreamSlots`)."""
        return self._full

    def _pop(self) -> tuple[Any, str | None]:
        # Caller holds the condition.
        entry = (self._item, self._reset)
        self._item, self._full, self._reset = None, False, None
        return entry

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, waiting up to `timeout` s; None on timeout or after close()."""
        entry = self.take_entry(timeout)
        return None if entry is None else entry[0]

    def recent_drop_ratio(self) -> float:
        """Fraction of the last `window` arrivals that were dropped (0 when none arrived)."""
        with self._condition:
            return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def close(self) -> None:
        """Wake a waiting `take` so the worker thread can exit."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class ReadyFrame:
    """The newest frame of one stream, as the worker takes it: the message and the keyframe
    cache reset judged on arrival (by `StampGapMonitor`), if any."""

    stream: str
    msg: Any
    reset_reason: str | None = None


class StreamSlots:
    """One newest-frame `FrameSlot` per stream, all on one condition.

    The worker waits until *any* stream has a frame and then takes the newest frame of every
    stream that has one, never waiting for the others: a slow or silent camera cannot hold
    back the rest. Frames of a stream that arrive while the worker is busy replace each other
    in that stream's slot only (counted as dropped for that stream).
    """

    def __init__(
        self, names: Sequence[str], window: int = 100, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not names:
            raise ValueError("StreamSlots needs at least one stream")
        self._condition = threading.Condition()
        self._closed = False
        self.slots: dict[str, FrameSlot] = {
            name: FrameSlot(window, self._condition, clock) for name in names
        }

    def put(self, stream: str, item: Any, reset_reason: str | None = None) -> bool:
        """`FrameSlot.put` on the stream's slot: never blocks; True if it dropped a frame."""
        return self.slots[stream].put(item, reset_reason)

    def take_ready(self, timeout: float | None = None) -> list[ReadyFrame]:
        """The newest frame of every stream that has one, in stream order, waiting up to
        `timeout` s for the first; [] on timeout or after close()."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or any(slot.ready for slot in self.slots.values()),
                timeout,
            )
            return [
                ReadyFrame(name, *slot._pop())
                for name, slot in self.slots.items()
                if slot.ready
            ]

    def close(self) -> None:
        """Wake a waiting `take_ready` so the worker thread can exit."""
        with self._condition:
            self._closed = True
            for slot in self.slots.values():
                slot._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def _percentiles(values: deque[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p99": math.nan}
    return {
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
    }


class StreamStatistics:
    """Sliding-window statistics of processed frames. Times are passed in (seconds, any
    monotonic clock), so the numbers are reproducible in tests."""

    def __init__(self, window: int = 100) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 frames, got {window}")
        self.window = int(window)
        self._latency: dict[str, deque[float]] = {}
        self._keyframes: deque[bool] = deque(maxlen=self.window)
        self._done_at: deque[float] = deque(maxlen=self.window)
        self.processed = 0

    def record(
        self,
        timings: Mapping[str, float],
        is_keyframe: bool,
        now: float,
        end_to_end_ms: float | None = None,
    ) -> None:
        """Add one processed frame: its stage timings (ms), whether it was a keyframe, the time
        it finished, and its header-to-publish latency (ms) when known."""
        stages = dict(timings)
        if end_to_end_ms is not None:
            stages["end_to_end"] = end_to_end_ms
        for name, value in stages.items():
            series = self._latency.setdefault(name, deque(maxlen=self.window))
            series.append(float(value))
        self._keyframes.append(bool(is_keyframe))
        self._done_at.append(float(now))
        self.processed += 1

    def latency(self) -> dict[str, dict[str, float]]:
        """{stage: {"mean", "p50", "p99"}} in ms over the window; NaN when no data."""
        return {name: _percentiles(series) for name, series in self._latency.items()}

    def fps(self) -> float:
        """Processed frames per second over the window (0 with fewer than 2 frames)."""
        if len(self._done_at) < 2:
            return 0.0
        span = self._done_at[-1] - self._done_at[0]
        return (len(self._done_at) - 1) / span if span > 0 else 0.0

    def keyframe_ratio(self) -> float:
        """Fraction of keyframes in the window (0 when empty)."""
        return sum(self._keyframes) / len(self._keyframes) if self._keyframes else 0.0


class Throttle:
    """Lets a message of one kind through at most once per `period` seconds."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = float(period)
        self._clock = clock
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        return True


@dataclass
class FrameOutputs:
    """What the node publishes for one frame. Arrays are at the input image's size."""

    rgb: np.ndarray  # (H, W, 3) uint8 input as RGB
    result: Any  # SegmentationResult
    labels: np.ndarray  # (H, W) uint8 class ids
    color: np.ndarray | None = None  # (H, W, 3) uint8 colourised labels
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 labels blended on the input
    scores: np.ndarray | None = None  # (H, W) float32 max class probability
    stamp: float | None = None


@dataclass
class ErrorCounters:
    """Cumulative failure counts plus the outcome of the last `window` frames, which is what
    the diagnostics level is judged on (so it recovers once frames are good again)."""

    conversion: int = 0  # unreadable images (encoding, size, data)
    inference: int = 0  # the segmenter raised
    last: str = ""
    by_kind: dict[str, int] = field(default_factory=dict)
    resets: int = 0  # keyframe cache resets (time gaps, resolution changes): not errors
    last_reset: str = ""
    window: int = 100
    recent: deque[bool] = field(default_factory=deque)  # True = the frame failed

    def outcome(self, failed: bool) -> None:
        self.recent.append(bool(failed))
        while len(self.recent) > max(self.window, 1):
            self.recent.popleft()

    @property
    def recent_failures(self) -> int:
        return sum(self.recent)


class FrameProcessor:
    """Converts one Image/CompressedImage-like message and runs the segmenter on it.

    Bad input never raises: unreadable frames and segmenter failures are counted, logged
    (throttled per kind) and give None; the next frame is processed normally. A resolution
    change (judged by the segmenter) or a time gap (judged on arrival by `StampGapMonitor`
    and passed in as `reset_reason`) resets the keyframe cache; resets are logged at info
    level and counted, they are not errors.

    The steps (`convert`, `refused`, `failed`, `finish`) are also what `BatchProcessor` uses
    per stream: one FrameProcessor per stream keeps that stream's counters and throttled
    warnings; `stream` (when given) prefixes its log messages.
    """

    def __init__(
        self,
        segmenter: Any,
        options: NodeOptions | None = None,
        converter: Callable[[Any], np.ndarray] = message_to_rgb8,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        stream: str | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.options = options or NodeOptions()
        self.converter = converter
        self.logger = logger or logging.getLogger(__name__)
        self.throttle = Throttle(self.options.log_throttle, clock)
        self.errors = ErrorCounters(window=self.options.stats_window)
        self.stream = stream
        self._prefix = f"stream {stream}: " if stream else ""

    def _warn(self, kind: str, message: str) -> None:
        message = self._prefix + message
        self.errors.last = message
        self.errors.by_kind[kind] = self.errors.by_kind.get(kind, 0) + 1
        self.throttle.period = self.options.log_throttle
        if self.throttle.allow(kind):
            skipped = self.throttle.suppressed.pop(kind, 0)
            suffix = f" ({skipped} similar messages suppressed)" if skipped else ""
            self.logger.warning(message + suffix)

    def _info(self, kind: str, message: str) -> None:
        self.throttle.period = self.options.log_throttle
        if self.throttle.allow(kind):
            skipped = self.throttle.suppressed.pop(kind, 0)
            suffix = f" ({skipped} similar messages suppressed)" if skipped else ""
            self.logger.info(self._prefix + message + suffix)

    def process(
        self, msg: Any, stamp: float | None = None, reset_reason: str | None = None
    ) -> FrameOutputs | None:
        """Segment one message. `stamp` is its header time in seconds (None or 0 = unknown);
        `reset_reason` asks for a keyframe-cache reset before this frame (a time gap seen on
        arrival). Returns None for a frame that was skipped."""
        if reset_reason:
            self.segmenter.reset(reset_reason)  # also when this frame turns out unreadable
        outputs = self._process(msg, stamp or None)
        self.errors.outcome(outputs is None)
        return outputs

    def _process(self, msg: Any, stamp: float | None) -> FrameOutputs | None:
        rgb = self.convert(msg)
        if rgb is None:
            return None
        try:
            # No stamp: the segmenter's own gap rule compares *processed* frames, which the
            # node must not use (drops would look like gaps); StampGapMonitor decides instead.
            result = self.segmenter.process(rgb, stamp=None)
        except ValueError as error:
            self.refused(error)
            return None
        except Exception as error:  # a node must survive anything, e.g. CUDA OOM
            self.failed(error)
            self.segmenter.reset()  # the cache may be half-updated
            return None
        return self.finish(rgb, result, stamp)

    def convert(self, msg: Any) -> np.ndarray | None:
        """Message -> (H, W, 3) uint8 RGB, or None (counted and logged) when unreadable."""
        try:
            return self.converter(msg)
        except ValueError as error:  # ImageConversionError is a ValueError
            self.errors.conversion += 1
            self._warn("conversion", f"skipping frame: {error}")
            return None

    def refused(self, error: Exception) -> None:
        """Count a frame the segmenter refused as malformed (its cache is unchanged)."""
        self.errors.conversion += 1
        self._warn("input", f"skipping frame the segmenter refused: {error}")

    def failed(self, error: Exception) -> None:
        """Count a segmenter failure; the caller resets the stream (its cache may be
        half-updated)."""
        self.errors.inference += 1
        self._warn("inference", f"segmentation failed ({type(error).__name__}: {error})")

    def finish(self, rgb: np.ndarray, result: Any, stamp: float | None) -> FrameOutputs | None:
        """Note a reset the segmenter made, then render; None (counted) if rendering fails."""
        if result.reset_reason:
            self.errors.resets += 1
            self.errors.last_reset = result.reset_reason
            self._info("reset", f"keyframe cache reset: {result.reset_reason}")
        try:
            return self.render(rgb, result, stamp)
        except ValueError as error:
            self.errors.inference += 1
            self._warn("render", f"could not render the result: {error}")
            return None

    def render(self, rgb: np.ndarray, result: Any, stamp: float | None = None) -> FrameOutputs:
        """Colourise / blend / score one result according to the current options."""
        options = self.options
        labels = np.asarray(result.labels, dtype=np.uint8)
        if labels.shape != rgb.shape[:2]:
            raise ImageConversionError(
                f"labels {labels.shape} do not match the input image {rgb.shape[:2]}"
            )
        color = blended = scores = None
        if options.publish_color or options.publish_overlay:
            color = colorize(labels, options.palette)
            if options.publish_overlay:
                blended = overlay(rgb, color, options.overlay_alpha)
        if options.publish_scores and result.probabilities is not None:
            scores = np.asarray(result.probabilities, dtype=np.float32).max(axis=0)
        return FrameOutputs(
            rgb=rgb,
            result=result,
            labels=labels,
            color=color if options.publish_color else None,
            overlay=blended,
            scores=scores,
            stamp=stamp,
        )


@dataclass
class StreamOutcome:
    """One stream's frame after a batch: its message (whose header the outputs carry) and the
    outputs, or None when the frame was skipped (counted in that stream's errors)."""

    stream: str
    msg: Any
    outputs: FrameOutputs | None


@dataclass
class _Pending:
    stream: str
    msg: Any
    rgb: np.ndarray  # (H, W, 3) uint8
    stamp: float | None


class BatchProcessor:
    """The newest frames of several streams in, one segmenter batch, per-stream outputs out.

    Each stream has its own `FrameProcessor` (counters, throttled warnings, `errors`), and the
    segmenter keeps a keyframe cache per stream. A frame that cannot be read or that the
    segmenter would refuse (`check_frame`) is skipped for its own stream before the batch, so
    it never costs the other streams their frame; the rest go through one
    `segmenter.process_batch`. If the batch fails for another reason (e.g. out of memory),
    every stream of the batch counts an inference error and has its cache reset; the next
    frames are processed normally.
    """

    def __init__(
        self,
        segmenter: Any,
        streams: Sequence[str],
        options: NodeOptions | None = None,
        converter: Callable[[Any], np.ndarray] = message_to_rgb8,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        label_streams: bool = True,
    ) -> None:
        """`label_streams`: prefix log messages with the stream (off for a one-camera node,
        whose messages stay as they always were)."""
        self.segmenter = segmenter
        self.processors: dict[str, FrameProcessor] = {
            name: FrameProcessor(segmenter, options, converter, logger, clock,
                                 stream=name if label_streams else None)
            for name in streams
        }
        self._options = options or NodeOptions()

    @property
    def options(self) -> NodeOptions:
        return self._options

    @options.setter
    def options(self, options: NodeOptions) -> None:
        # Live parameters (palette, overlay, publishing switches) reach every stream.
        self._options = options
        for processor in self.processors.values():
            processor.options = options

    def errors(self, stream: str) -> ErrorCounters:
        """The stream's failure and reset counters."""
        return self.processors[stream].errors

    def process(self, frames: Sequence[ReadyFrame]) -> list[StreamOutcome]:
        """Segment the newest frame of each ready stream (at most one per stream) in one
        batch. Returns one outcome per frame, in the order given."""
        streams = [frame.stream for frame in frames]
        if len(set(streams)) != len(streams):
            raise ValueError(f"at most one frame per stream in a batch, got {streams}")
        pending: list[_Pending] = []
        for frame in frames:
            processor = self.processors[frame.stream]
            if frame.reset_reason:  # judged on arrival; applies even if this frame is bad
                self.segmenter.reset(frame.reset_reason, stream=frame.stream)
            rgb = processor.convert(frame.msg)
            if rgb is None:
                continue
            try:
                self.segmenter.check_frame(rgb)
            except ValueError as error:
                processor.refused(error)
                continue
            stamp = _header_seconds(frame.msg)
            pending.append(_Pending(frame.stream, frame.msg, rgb, stamp))
        outputs = self._segment(pending)
        done = {p.stream: out for p, out in zip(pending, outputs, strict=True)}
        outcomes = []
        for frame in frames:
            result = done.get(frame.stream)
            self.processors[frame.stream].errors.outcome(result is None)
            outcomes.append(StreamOutcome(frame.stream, frame.msg, result))
        return outcomes

    def _segment(self, pending: list[_Pending]) -> list[FrameOutputs | None]:
        """One segmenter call for all pending frames; per-stream outputs or None."""
        if not pending:
            return []
        from ..model.pipeline import StreamFrame  # torch is loaded: the segmenter exists

        try:
            # No stamps: the segmenter's own gap rule compares *processed* frames, which the
            # node must not use (drops would look like gaps); StampGapMonitor decides instead.
            results = self.segmenter.process_batch(
                [StreamFrame(p.stream, p.rgb, None) for p in pending]
            )
            streams = [getattr(r, "stream", p.stream)
                       for r, p in zip(results, pending, strict=False)]
            if len(results) != len(pending) or streams != [p.stream for p in pending]:
                raise RuntimeError(
                    f"the segmenter returned results for streams {streams} for frames of "
                    f"{[p.stream for p in pending]}"
                )
        except ValueError as error:  # frames were checked: a refusal here names its stream
            for p in pending:
                self.processors[p.stream].refused(error)
            return [None] * len(pending)
        except Exception as error:  # a node must survive anything, e.g. CUDA OOM
            for p in pending:
                self.processors[p.stream].failed(error)
                self.segmenter.reset(stream=p.stream)  # its cache may be half-updated
            return [None] * len(pending)
        return [
            self.processors[p.stream].finish(p.rgb, result, p.stamp)
            for p, result in zip(pending, results, strict=True)
        ]


def _header_seconds(msg: Any) -> float | None:
    """The message's header stamp in seconds; None when unstamped (0)."""
    return stamp_to_seconds(msg.header.stamp) or None


@dataclass(frozen=True)
class StreamPlan:
    """One input stream of the node and where its outputs go."""

    name: str  # the segmenter's stream (its keyframe cache)
    topic: str  # input topic as configured; relative names resolve in the node's namespace
    outputs: str  # prefix of the output topics: "~/" (one camera) or "~/<name>/"
    status: str  # diagnostics status name, after "<node name>: "


def plan_streams(options: NodeOptions, default_stream: str) -> tuple[StreamPlan, ...]:
    """The node's streams: one on `image_topic` with outputs `~/labels`, ... when
    `image_topics` is empty (the segmenter's `default_stream`), otherwise one per topic with
    outputs `~/<stream>/labels`, ... (names from `stream_names`)."""
    if not options.image_topics:
        return (StreamPlan(default_stream, options.image_topic, "~/", "segmentation"),)
    return tuple(
        StreamPlan(name, topic, f"~/{name}/", f"{name} segmentation")
        for name, topic in zip(stream_names(options.image_topics), options.image_topics,
                               strict=True)
    )


@dataclass
class DiagnosticReport:
    """Fields of a diagnostic_msgs/DiagnosticStatus. level: 0 OK, 1 WARN, 2 ERROR, 3 STALE."""

    level: int
    message: str
    values: list[tuple[str, str]]


OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def diagnostic_report(
    stats: StreamStatistics,
    slot: FrameSlot,
    errors: ErrorCounters,
    device: str,
    options: NodeOptions,
    keyframe_interval: int,
    *,
    now: float | None = None,
    stream: str | None = None,
    topic: str | None = None,
) -> DiagnosticReport:
    """Summarise the health of one stream. STALE before the first frame and, given `now` (the
    slot's clock), when no frame arrived for `stream_timeout` seconds (the camera stopped);
    WARN with random weights, failed frames or more than half of the input dropped among the
    recent frames (the last `stats_window`), ERROR when every recent frame failed. Counters
    are cumulative. `stream` and `topic` (several cameras) are added to the values."""
    latency = stats.latency()
    values: list[tuple[str, str]] = []
    if stream is not None:
        values += [("stream", stream), ("topic", topic or "")]
    for stage in sorted(latency):
        for key, number in latency[stage].items():
            values.append((f"{stage}_ms_{key}", _fmt(number)))
    drop_ratio = slot.dropped / slot.received if slot.received else 0.0
    values += [
        ("fps", _fmt(stats.fps())),
        ("frames_received", str(slot.received)),
        ("frames_processed", str(stats.processed)),
        ("frames_dropped", str(slot.dropped)),
        ("drop_ratio", _fmt(drop_ratio)),
        ("keyframe_ratio", _fmt(stats.keyframe_ratio())),
        ("keyframe_interval", str(keyframe_interval)),
        ("device", device),
        ("weights", "random" if options.random_weights else options.checkpoint),
        ("conversion_errors", str(errors.conversion)),
        ("inference_errors", str(errors.inference)),
        ("last_error", errors.last),
        ("resets", str(errors.resets)),
        ("last_reset", errors.last_reset),
    ]
    silent = math.nan
    if now is not None and slot.last_arrival is not None:
        silent = max(now - slot.last_arrival, 0.0)
        values.append(("seconds_since_input", _fmt(silent)))
    if options.stream_timeout > 0 and silent > options.stream_timeout:
        # Before the error rule: a stopped camera is the news, not its last bad frames.
        return DiagnosticReport(
            STALE, f"stopped receiving: no input frame for {silent:.1f} s", values
        )
    failed = errors.recent_failures
    if errors.recent and failed == len(errors.recent):
        return DiagnosticReport(
            ERROR, f"the last {failed} frames failed; last error: {errors.last}", values
        )
    if stats.processed == 0:
        return DiagnosticReport(STALE, "waiting for images", values)
    problems = []
    if options.random_weights:
        problems.append("random weights (checkpoint none)")
    if failed:
        problems.append(f"{failed} of the last {len(errors.recent)} frames failed")
    recent_drops = slot.recent_drop_ratio()
    if recent_drops > 0.5:
        problems.append(f"{100 * recent_drops:.0f}% of recent input frames dropped")
    summary = f"{stats.fps():.1f} fps, keyframe ratio {stats.keyframe_ratio():.2f}"
    if problems:
        return DiagnosticReport(WARN, f"{summary}; " + "; ".join(problems), values)
    return DiagnosticReport(OK, summary, values)
