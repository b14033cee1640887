"""The node's ROS parameters, decided without ROS.

`PARAMETERS` lists every parameter (name, default, type, description, allowed values, whether
it may change at run time). Pipeline parameters map 1:1 onto `PipelineConfig` fields; the rest
are node options (`NodeOptions`). Allowed names and numeric ranges come from accel_ros.config
(`CHOICES`, `RANGES`), so the dataclass checks, the descriptors node.py declares and the YAML
file cannot disagree. `parse_parameters` validates a full set; `plan_parameter_update` accepts
live-safe changes and rejects the others with a (shortened) reason.
"""

from __future__ import annotations

import array
import copy
import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    BACKENDS,
    CHOICES,
    DEFAULT_PRESET,
    MODES,
    RANGES,
    PipelineConfig,
    Range,
    load_yaml,
)
from .streams import stream_names
from .throttled_log import MESSAGE_LIMIT, shorten

# Parameters every rclpy node declares itself; a `ros2 param dump` of the node contains them.
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_BUILTIN_PREFIXES = ("qos_overrides.",)
# Source-tree location; an installed node prefers share/accel_ros/config/accel.yaml.
SOURCE_PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "accel.yaml"
# Quoted values in error messages are cut to this many characters.
_QUOTE_LIMIT = 60


@dataclass
class NodeOptions:
    """Node-only parameters (everything that is not a PipelineConfig field). Names take
    their values from config.CHOICES, numbers from config.RANGES."""

    preset: str = DEFAULT_PRESET
    # "default" = the checkpoint shipped in the package, "none" = random weights, or a path.
    checkpoint: str = "default"
    image_topic: str = "image"
    # Several cameras: one stream per topic (image_topic is then unused); empty = one stream.
    image_topics: list[str] = field(default_factory=list)
    input_transport: str = "raw"
    # Frames declaring more pixels are refused before decoding (see ros/input_guard.py).
    max_input_pixels: int = 4096 * 4096
    # Output images and stats: reliable keep-last with this depth, or best_effort. Fast DDS
    # repairs a sample lost in transport at the writer's next heartbeat (every 3 s) unless
    # large writes piggy-back one sooner (images do, stats do not); a stats sample lost in the
    # burst of 4-5 topics x N streams per batch is gone once `depth` newer ones were
    # published. Depth 10 lost 11-13 of 250-360 stats messages per stream in 45 s with three
    # cameras at 7-12 Hz (test_node_ros); 100 covers 3.3 s at 30 Hz and lost none. Memory is
    # held only for unacknowledged samples (volatile writers drop acknowledged ones).
    output_qos: str = "reliable"
    output_qos_depth: int = 100
    palette: str = "camvid_cityscapes"
    overlay_alpha: float = 0.5
    publish_color: bool = True
    publish_overlay: bool = True
    publish_scores: bool = False
    diagnostics_period: float = 1.0
    # A stream without an arriving frame for this long is reported stopped (STALE); 0 = never.
    stream_timeout: float = 3.0
    # The cameras' frame rate (Hz) when known; 0 = judged from the stamps of what arrives.
    # Fewer frames reaching the node than this is reported in /diagnostics (ros/input_rate.py).
    expected_rate: float = 0.0
    stats_window: int = 100
    log_throttle: float = 5.0
    # Decode sensor_msgs/Image with cv_bridge when it imports; the numpy bridge otherwise.
    use_cv_bridge: bool = True

    def __post_init__(self) -> None:
        for name in _NODE_CHOICES:
            CHOICES[name].check(getattr(self, name))
        for name in _NODE_RANGES:
            RANGES[name].check(name, getattr(self, name))
        if not self.image_topic.strip():
            raise ValueError("image_topic must not be empty")
        stream_names(self.image_topics)  # empty, invalid or duplicate stream names

    @property
    def random_weights(self) -> bool:
        return self.checkpoint.strip().lower() in ("", "none")


_NODE_CHOICES = ("preset", "input_transport", "output_qos", "palette")
_NODE_RANGES = ("max_input_pixels", "output_qos_depth", "overlay_alpha", "diagnostics_period",
                "stream_timeout", "expected_rate", "stats_window", "log_throttle")


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter. `kind` is the ROS type: bool, int, float, str, int_array or
    str_array; `choices` and `range` are its allowed values (from config.CHOICES/RANGES)."""

    name: str
    default: Any
    kind: str
    description: str
    # Target object: "pipeline" (PipelineConfig field) or "node" (NodeOptions field).
    target: str
    live: bool = False
    choices: tuple[str, ...] = ()
    range: Range | None = None

    def constraints(self) -> str:
        """The allowed values in words (ParameterDescriptor.additional_constraints)."""
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.name == "input_size":
            return f"[height, width], each in {RANGES['input_side']}, or [0, 0]"
        if self.range is not None:
            return f"in {self.range}"
        return ""


# name: (description, live). Allowed values are not repeated here: see ParamSpec.constraints.
_DESCRIPTIONS: dict[str, tuple[str, bool]] = {
    "mode": ("; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()), False),
    "keyframe_interval": ("run the reference network every N frames", True),
    "adaptive_flow_threshold": (
        "extra keyframe when mean accumulated flow since the keyframe exceeds this many input "
        "pixels; 0 disables", True),
    "adaptive_confidence_drop": (
        "extra keyframe when mean confidence falls this much below the keyframe's; 0 disables",
        True),
    "flow_method": ("optical flow estimator", False),
    "flow_scale": ("flow runs on frames downscaled by this factor", False),
    "out_of_frame": ("what warping samples outside the frame: border (replicate) or zeros",
                     True),
    "device": ("auto, cpu or cuda:N", False),
    "precision": ("inference precision", False),
    "channels_last": ("run convolutions in channels-last memory format", False),
    "input_size": ("[height, width] the network runs at (labels are resized back); [0, 0] = "
                   "the size the checkpoint was trained at, or the camera's when it has none",
                   False),
    "resize_mode": ("how a frame of another aspect ratio than input_size meets it: pad "
                    "(letterbox, every pixel labelled), stretch (squeezed) or crop (centred; "
                    "pixels outside get label 255)", False),
    "max_time_gap": (
        "a gap between the header stamps of consecutive arriving frames longer than this (s) "
        "and than twice the stream's median frame period resets the keyframe cache", True),
    "return_probabilities": ("keep per-class probabilities (forced on while publish_scores "
                             "is true)", True),
    "overlap_flow": ("compute CPU optical flow in a worker thread while the update branch runs",
                     False),
    "torch_compile": ("torch.compile the network calls when the segmenter is built", False),
    "cuda_graphs": ("replay the network calls as CUDA graphs (CUDA devices only)", False),
    "stagger_keyframes": (
        "with several streams, offset stream i's keyframes by about i * keyframe_interval / N "
        "frames so reference-network runs are spread over the batches", True),
    "backend": ("runtime of the networks: " + "; ".join(
        f"{name}: {backend.help}" for name, backend in BACKENDS.items()), False),
    "preset": ("model preset; a checkpoint's own config wins", False),
    "checkpoint": ("'default' = shipped weights, 'none' = random weights (testing only), or a "
                   ".pt path", False),
    "image_topic": ("input image topic (or remap 'image')", False),
    "image_topics": (
        "several cameras: one stream per topic (relative, remappable), outputs under "
        "~/<stream>/ where <stream> is the topic without its last component "
        "('front/image' -> front); empty = one stream on image_topic", False),
    "input_transport": ("raw: sensor_msgs/Image on image_topic; compressed: "
                        "sensor_msgs/CompressedImage (PNG or JPEG) on <image_topic>/compressed "
                        "(after remapping)", False),
    "max_input_pixels": ("frames declaring more pixels (height x width, read from the header "
                         "of a compressed frame before decoding) are refused and counted as "
                         "bad frames", True),
    "output_qos": ("reliability of the output topics", False),
    "output_qos_depth": ("keep-last depth of the output topics (reliable outputs: deep enough "
                         "for about 3 s of frames, so samples lost in transport are repaired; "
                         "~/stats and ~/camera_info keep ten times this)", False),
    "palette": ("colours of ~/color and ~/overlay", True),
    "overlay_alpha": ("label opacity in ~/overlay", True),
    "publish_color": ("publish ~/color (rgb8 colourised labels)", True),
    "publish_overlay": ("publish ~/overlay (labels alpha-blended on the input)", True),
    "publish_scores": ("publish ~/scores (32FC1 per-pixel max probability)", True),
    "diagnostics_period": ("seconds between /diagnostics messages", False),
    "stream_timeout": ("seconds without an arriving frame after which a stream is reported "
                       "stopped (STALE) in /diagnostics; 0 = never", True),
    "expected_rate": ("the cameras' frame rate in Hz, when known (0: judged from the stamps of "
                      "the frames that arrive); /diagnostics warns when fewer reach the node",
                      True),
    "stats_window": ("frames in the latency / fps / keyframe-ratio window", False),
    "log_throttle": ("seconds between repeated warnings of one kind", True),
    "use_cv_bridge": ("decode images with cv_bridge when importable (else the numpy bridge)",
                      False),
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


def _choices(name: str) -> tuple[str, ...]:
    """The allowed values of parameter `name`: its registry's keys, or () for a free value."""
    registry = CHOICES.get(name)
    return registry.choices if registry is not None else ()


def _build_specs() -> tuple[ParamSpec, ...]:
    specs = []
    for target, defaults in (
        ("pipeline", PipelineConfig().to_dict()),
        ("node", dataclasses.asdict(NodeOptions())),
    ):
        for name, value in defaults.items():
            # A field added to a config later still becomes a (restart-only) parameter.
            description, live = _DESCRIPTIONS.get(name, (f"{target} {name}", False))
            value = _ros_value(name, value)
            specs.append(ParamSpec(name, value, _ros_kind(value, name), description, target,
                                   live, _choices(name), RANGES.get(name)))
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
            f"parameter {spec.name!r} must be of type {spec.kind}, got "
            f"{shorten(repr(value), _QUOTE_LIMIT)} ({type(value).__name__})"
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
    wrong types and invalid values raise ValueError naming the parameter (at most
    `MESSAGE_LIMIT` characters: a value may be huge)."""
    unknown = sorted(set(values) - set(PARAMETER_SPECS))
    if unknown:
        raise ValueError(shorten(f"unknown parameters {unknown}"))
    merged = {spec.name: spec.default for spec in PARAMETERS}
    merged.update({k: _coerce(PARAMETER_SPECS[k], v) for k, v in values.items()})
    pipeline = {k: v for k, v in merged.items() if PARAMETER_SPECS[k].target == "pipeline"}
    node = {k: v for k, v in merged.items() if PARAMETER_SPECS[k].target == "node"}
    if pipeline["input_size"] in ([0, 0], []):
        pipeline["input_size"] = None
    try:
        return NodeSettings(PipelineConfig.from_dict(pipeline), NodeOptions(**node))
    except (TypeError, ValueError) as error:
        raise ValueError(shorten(f"invalid parameters: {error}")) from error


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
    Reasons are at most `MESSAGE_LIMIT` characters.
    """
    values = current.parameter_values()
    changed = []
    for name, value in changes.items():
        spec = PARAMETER_SPECS.get(name)
        if spec is None:
            return _refused(f"unknown parameter {name!r}")
        try:
            value = _coerce(spec, value)
        except ValueError as error:
            return _refused(str(error))
        if value == values[name]:
            continue
        if not spec.live:
            return _refused(
                f"parameter {name!r} cannot change while the node runs (the model and "
                "pipeline are built once); restart the node with the new value"
            )
        values[name] = value
        changed.append(name)
    try:
        settings = parse_parameters(values)
    except ValueError as error:
        return _refused(str(error))
    return UpdatePlan(True, "", settings, tuple(changed))


def _refused(reason: str) -> UpdatePlan:
    return UpdatePlan(False, shorten(reason, MESSAGE_LIMIT))


def change_summary(changes: Mapping[str, Any], names: Iterable[str]) -> str:
    """"name=value, ..." of the changed parameters, each value shortened."""
    return ", ".join(f"{n}={shorten(repr(changes[n]), _QUOTE_LIMIT)}" for n in names)


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
