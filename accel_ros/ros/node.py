"""ROS 2 node `accel_segmentation`: Accel video segmentation of one or several camera streams.

The only module that imports rclpy and ROS message packages. It is deliberately thin: what to
do with parameters (ros/parameters.py), arriving frames (ros/slots.py), input checks
(ros/input_guard.py), batches and outputs (ros/processing.py) and health (ros/diagnostics.py)
is decided in plain Python, tested without ROS; this file wires those decisions to
subscriptions, publishers and timers.

Topics (relative names, remappable):
  in   image (sensor_msgs/Image), or <image after remapping>/compressed
       (sensor_msgs/CompressedImage) when input_transport is "compressed"; sensor-data QoS
       (best effort, depth 5).
  out  ~/labels  sensor_msgs/Image mono8 class ids, same header as the input
       ~/color   sensor_msgs/Image rgb8 colourised labels          (publish_color)
       ~/overlay sensor_msgs/Image rgb8 labels blended on the input (publish_overlay)
       ~/scores  sensor_msgs/Image 32FC1 per-pixel max probability (publish_scores)
       ~/stats   accel_ros_msgs/SegmentationStats, or std_msgs/String JSON (see below)
       ~/camera_info sensor_msgs/CameraInfo: the newest one received on the camera_info beside
                 the image topic (image_transport's convention), with each labels header
       ~/label_info accel_ros_msgs/LabelInfo (or std_msgs/String JSON): class map, palette,
                 model identity; transient-local, at start-up, with the first frame's
                 header (one camera) and on a palette change
       /diagnostics diagnostic_msgs/DiagnosticArray, every diagnostics_period seconds
  Outputs are reliable keep-last `output_qos_depth` (100; ~/stats and ~/camera_info ten
  times that) unless output_qos is best_effort.
  Input frames declaring more than `max_input_pixels` are refused before decoding.

Several cameras (`image_topics: [front/image, rear/image]`): one stream per topic, each
relative and remappable (compressed transport appends /compressed to each); the outputs of
stream <s> (the topic without its last component: front, rear) are ~/<s>/labels, ~/<s>/color,
~/<s>/overlay, ~/<s>/scores, ~/<s>/stats and ~/<s>/camera_info, and /diagnostics carries one
status per stream ("<node name>: <s> segmentation"). One model serves all streams, with a
keyframe cache each; ~/label_info describes it once for all.

The steps (read parameters, prepare the segmenter, create the streams' topics, start and stop
the worker, free the model) live in `SegmentationNodeSteps`, shared by this node, which runs
them all at construction, and its managed variant (ros/lifecycle_node.py), which runs them on
lifecycle transitions.

Threading: a subscription callback judges the time gap to its stream's previous arrival (the
segmenter's rule, `AccelSegmenter.note_arrival`) and drops the message into that stream's
newest-frame slot; one worker thread waits until any stream has a frame, takes the newest frame
of every stream that has one, segments them as one batch and publishes each stream's outputs,
so callbacks never block, a silent camera never holds back the others, and frames that arrive
while the worker is busy replace each other (counted as dropped for their stream). SIGINT /
SIGTERM stop the worker (the batch in flight is finished and published) before the node and the
context are shut down.
"""

from __future__ import annotations

import array
import copy
import dataclasses
import gc
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from ..io.bridge import from_array, message_to_rgb8
from ..io.messages import (
    label_info_message,
    label_info_to_json,
    segmenter_label_info,
    stamp_to_seconds,
    stats_fields,
    stats_to_json,
)
from ..io.topics import (
    CAMERA_INFO,
    COLOR,
    LABEL_INFO,
    LABELS,
    NODE_OUTPUTS,
    OVERLAY,
    SCORES,
    STATS,
    output_topic,
    output_topics,
)
from .camera_info import CameraInfoRelay, camera_info_topic
from .diagnostics import DiagnosticReport, StreamStatistics, diagnostic_report
from .input_guard import silence_opencv
from .input_rate import InputRate
from .parameters import (
    PARAMETER_SPECS,
    PARAMETERS,
    SOURCE_PARAMS_FILE,
    NodeSettings,
    ParamSpec,
    apply_live_pipeline,
    change_summary,
    default_parameters,
    parse_parameters,
    plan_parameter_update,
    unknown_parameters,
)
from .processing import BatchProcessor, FrameOutputs, StreamOutcome
from .slots import ReadyFrame, StreamSlots
from .streams import NODE_PREFIX, StreamPlan, log_prefix, plan_streams
from .throttled_log import Throttle, ThrottledLog, shorten

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # rclpy before Humble

    class ExternalShutdownException(Exception):  # noqa: N818 - mirrors rclpy's name
        pass


# ament_python cannot generate rosidl messages: SegmentationStats and LabelInfo come from the
# companion ament_cmake package accel_ros_msgs (built by `colcon build`). Without it, ~/stats
# and ~/label_info carry the same fields as JSON in a std_msgs/String.
try:
    from accel_ros_msgs.msg import SegmentationStats
except ImportError:
    SegmentationStats = None
try:  # apart: an accel_ros_msgs built before LabelInfo existed still has SegmentationStats
    from accel_ros_msgs.msg import ClassInfo, LabelInfo
except ImportError:
    ClassInfo = LabelInfo = None

_PARAMETER_TYPES = {
    "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE,
    "str": ParameterType.PARAMETER_STRING,
    "int_array": ParameterType.PARAMETER_INTEGER_ARRAY,
    "str_array": ParameterType.PARAMETER_STRING_ARRAY,
}
NODE_NAME = "accel_segmentation"
_LEVELS = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
           DiagnosticStatus.STALE)
# What a bad parameter value, a missing checkpoint or an unavailable device raise at start-up:
# reported in one line, without a traceback.
_STARTUP_ERRORS = (ValueError, OSError, RuntimeError)
# Longest wait for the frame in flight when the node stops (a keyframe on a slow CPU).
_WORKER_STOP_TIMEOUT = 30.0


class StartupError(Exception):
    """The node cannot start with these parameters (the message says which and why)."""


def find_params_file() -> Path | None:
    """The installed share/accel_ros/config/accel.yaml, else the source tree's, else None."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("accel_ros")) / "config" / "accel.yaml"
        if installed.is_file():
            return installed
    except Exception:  # package not installed with ament (e.g. run from a source checkout)
        pass
    return SOURCE_PARAMS_FILE if SOURCE_PARAMS_FILE.is_file() else None


def make_converter(use_cv_bridge: bool, logger: Any) -> Callable[[Any], np.ndarray]:
    """Message -> (H, W, 3) uint8 RGB. cv_bridge when requested and importable; any cv_bridge
    failure falls back to the numpy bridge, which also produces the clear error messages."""
    if not use_cv_bridge:
        return message_to_rgb8
    try:
        from cv_bridge import CvBridge

        cv_bridge = CvBridge()
    except Exception as error:  # missing, or built against another numpy
        logger.info(f"cv_bridge unavailable ({error}); using the numpy image bridge")
        return message_to_rgb8

    def convert(msg: Any) -> np.ndarray:
        if isinstance(msg, Image) and msg.height > 0 and msg.width > 0:
            try:
                rgb = cv_bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
                if rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8:
                    return np.ascontiguousarray(rgb)
            except Exception:  # unsupported by cv_bridge: let the numpy bridge decide
                pass
        return message_to_rgb8(msg)

    return convert


# Small outputs (stats, camera_info: a few hundred bytes) keep this many times
# output_qos_depth. A small sample lost in transport is repaired only at the writer's next
# heartbeat (every 3 s; large images piggy-back one sooner), and on a busy CPU the repair can
# take longer than 100 newer samples: 1 stats message in 700 was lost at 15 Hz with every core
# kept busy. Their history costs at most a few hundred KB, held only while a reader lags.
SMALL_OUTPUT_DEPTH_FACTOR = 10


def _output_qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=DurabilityPolicy.VOLATILE,
    )


def _image_message(fields: dict[str, Any], header: Any) -> Image:
    msg = Image()
    msg.header = header
    msg.height, msg.width = fields["height"], fields["width"]
    msg.encoding, msg.is_bigendian, msg.step = (
        fields["encoding"], fields["is_bigendian"], fields["step"]
    )
    # array.array from bytes is a memcpy; a bytes/list assignment is checked per element.
    msg.data = array.array("B", fields["data"].tobytes())
    return msg


def _latched_qos() -> QoSProfile:
    # ~/label_info: reliable, transient-local, depth 1, so a subscriber that joins late (with
    # transient-local durability) still receives the newest one, as with vision_msgs/LabelInfo.
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def _label_info_message(msg_type: type, fields: dict[str, Any], header: Any) -> Any:
    """LabelInfo (or its std_msgs/String JSON fallback) from `segmenter_label_info` fields,
    with `header` (see io.messages.label_info_message)."""
    if msg_type is String:
        stamp = (header.stamp.sec, header.stamp.nanosec)
        return String(data=label_info_to_json(fields, header.frame_id, stamp))
    return label_info_message(msg_type, ClassInfo, fields, header,
                              colors=lambda values: array.array("B", values))


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of one parameter: type, description, allowed values (from
    accel_ros.config via the spec), read-only unless it may change live."""
    # dynamic_typing: rclpy would reject `overlay_alpha: 1` (an int for a double) with a
    # traceback; parse_parameters / plan_parameter_update check types and say why. It also
    # lets image_topics default to []: rclpy cannot type an empty list (it stores a byte
    # array), rcl reads `[]` from a file or `-p` as unset (None, which parse_parameters takes
    # as []), and `[a/image, b/image]` arrives as a string array; the descriptor still
    # describes it as one. Ranges are enforced by rclpy before the node's callback sees a
    # change. Restart-only parameters are read-only: set them at start-up, not at run time.
    descriptor = ParameterDescriptor(
        name=spec.name,
        type=_PARAMETER_TYPES[spec.kind],
        description=spec.description + (" (live)" if spec.live else " (restart)"),
        additional_constraints=spec.constraints(),
        read_only=not spec.live,
        dynamic_typing=True,
    )
    if spec.range is not None and spec.kind == "int":
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.range.low), to_value=int(spec.range.high), step=1)]
    elif spec.range is not None and spec.kind == "float":
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.range.low), to_value=float(spec.range.high), step=0.0)]
    return descriptor


@dataclasses.dataclass
class _Stream:
    """One input stream: its plan, input rate, statistics, newest camera_info and ROS
    endpoints. Its newest-frame slot lives in the node's StreamSlots, its error counters in the
    BatchProcessor, its keyframe cache and time-gap rule in the segmenter (all keyed by
    `plan.name`)."""

    plan: StreamPlan
    stats: StreamStatistics
    camera_info: CameraInfoRelay = dataclasses.field(default_factory=CameraInfoRelay)
    rate: InputRate = dataclasses.field(default_factory=InputRate)
    noted_unstamped: bool = False  # "frames carry no stamp" said once
    publishers: dict[str, Any] = dataclasses.field(default_factory=dict)
    subscription: Any = None
    info_subscription: Any = None


class SegmentationNodeSteps:
    """The node's steps, shared by `AccelSegmentationNode` (all at construction) and
    `AccelSegmentationLifecycleNode` (ros/lifecycle_node.py; on transitions). Mixed into an
    rclpy Node (or LifecycleNode), whose methods it calls.

    - `_read_parameters`: validate the start-up values, declare every parameter.
    - `_configure`: keep the settings, prepare the segmenter (built and its backend prepared,
      or injected).
    - `_create_streams`: slots, statistics, the batch processor, every stream's topics,
      /diagnostics and ~/label_info (published at once).
    - `_start_worker` / `_stop_streams`: the diagnostics timer and the worker thread; stopping
      also destroys what `_create_streams` created, so a stopped node publishes nothing.
    - `_release_segmenter`: drop the model (and CUDA's cached memory).
    """

    # What exists only between configuration and clean-up, or activation and deactivation.
    segmenter: Any = None
    _processor: BatchProcessor | None = None
    _worker: threading.Thread | None = None
    _diagnostics_timer: Any = None
    _label_info_pub: Any = None
    _label_info_fields: dict[str, Any] | None = None
    _label_info_frame_id = ""  # of the newest ~/label_info: the camera's once a frame came

    # --- configuration ---------------------------------------------------------------------

    def _read_parameters(self) -> NodeSettings:
        """Validate the start-up values (params file, command line) with the node's own
        checks, then declare every parameter with its descriptor."""
        overrides = getattr(self, "_parameter_overrides", {})
        try:
            defaults = default_parameters(find_params_file())
            settings = parse_parameters({**defaults, **{
                name: parameter.value for name, parameter in overrides.items()
                if name in PARAMETER_SPECS}})
        except _STARTUP_ERRORS as error:  # bad config: fail at start-up, naming the parameter
            raise StartupError(str(error)) from error
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, defaults[spec.name], parameter_descriptor(spec))
        unknown = unknown_parameters(overrides)
        if unknown:  # rclpy ignores overrides nobody declares: a typo would go unnoticed
            self.get_logger().warning(
                "ignoring unknown parameters (command line or params file): "
                + shorten(", ".join(unknown))
            )
        return settings

    def _configure(self, settings: NodeSettings, segmenter: Any) -> None:
        """Keep `settings`, make the throttled logs and prepare the segmenter."""
        self.settings = settings
        self._throttle = Throttle(settings.options.log_throttle)
        # Rejected parameter changes and camera_info warnings, one kind each.
        self._log_throttled = ThrottledLog(self.get_logger(),
                                           Throttle(settings.options.log_throttle))
        self.segmenter = self._prepare_segmenter(segmenter)

    def _prepare_segmenter(self, segmenter: Any) -> Any:
        """The injected segmenter, or one built from the parameters; either way with a
        keyframe cache per stream, empty, and the live pipeline parameters applied."""
        options = self.settings.options
        if segmenter is None:
            segmenter = self._build_segmenter()
        from ..stream.segmenter import DEFAULT_STREAM  # torch is loaded: the segmenter exists

        self._plans = plan_streams(options, DEFAULT_STREAM)
        self._multi_stream = bool(options.image_topics)
        # An injected segmenter may hold other streams' keyframes: every stream starts empty.
        segmenter.configure_streams([plan.name for plan in self._plans])
        segmenter.reset(stream=None)
        apply_live_pipeline(segmenter.pipeline_config, self.settings)
        self._log_model(segmenter)
        return segmenter

    def _build_segmenter(self) -> Any:
        options = self.settings.options
        if options.random_weights:
            self.get_logger().warning(
                "checkpoint is 'none': the model has RANDOM WEIGHTS and its labels are "
                "meaningless. Use checkpoint:=default or a trained .pt file."
            )
        from ..stream import build_segmenter  # torch import deferred until parameters pass

        try:
            # Builds the backend's networks too (an exported graph is exported and loaded now).
            return build_segmenter(model=options.preset,
                                   pipeline=dataclasses.replace(self.settings.pipeline),
                                   checkpoint=options.checkpoint)
        except _STARTUP_ERRORS as error:  # missing checkpoint, no CUDA, ...
            raise StartupError(f"cannot build the segmenter: {error}") from error

    def _log_model(self, segmenter: Any) -> None:
        options, pipeline = self.settings.options, self.settings.pipeline
        names = [plan.name for plan in self._plans]
        # A checkpoint carries its own architecture: the preset only matters without one.
        source = (f"preset {options.preset} (random weights)" if options.random_weights
                  else f"checkpoint {options.checkpoint}")
        # Which runtime really runs the networks (backend auto's choice and why), and how
        # (graphs exported or from the cache).
        info = segmenter.backend_info() if hasattr(segmenter, "backend_info") else None
        runtime = info.describe() if info else f"backend {pipeline.backend} {pipeline.precision}"
        self.get_logger().info(
            f"model from {source}, mode {pipeline.mode}, keyframe interval "
            f"{pipeline.keyframe_interval}"
            + (f", {len(names)} streams: {', '.join(names)}" if self._multi_stream else "")
            + f"; {runtime}"
        )
        if self._multi_stream and options.image_topic != PARAMETER_SPECS["image_topic"].default:
            self.get_logger().warning(
                f"image_topics is set: image_topic {options.image_topic!r} is unused")

    def _release_segmenter(self) -> None:
        """Drop the model: the node's reference, its flow thread and CUDA's cached blocks."""
        segmenter, self.segmenter = self.segmenter, None
        if segmenter is None:
            return
        segmenter.close()
        on_cuda = getattr(segmenter.device, "type", "") == "cuda"
        del segmenter
        gc.collect()  # the model's tensors go now, not at the next collection
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    # --- streams: topics, worker --------------------------------------------------------------

    def _create_streams(self) -> None:
        """Slots, statistics, the batch processor, every stream's topics, /diagnostics and
        ~/label_info (published at once)."""
        options, log = self.settings.options, self.get_logger()
        names = [plan.name for plan in self._plans]
        # Every stream starts over: no keyframe, no stamp (the time-gap rule's) seen yet.
        self.segmenter.configure_streams(names)
        self._slots = StreamSlots(names, options.stats_window)
        self._streams = {
            plan.name: _Stream(plan, StreamStatistics(options.stats_window))
            for plan in self._plans
        }
        self._stats_lock = threading.Lock()
        self._label_info_lock = threading.Lock()  # the worker and parameter changes publish it
        silence_opencv()  # bad compressed frames are reported through the ROS log only
        self._processor = BatchProcessor(
            self.segmenter, names, options,
            converter=make_converter(options.use_cv_bridge, log),
            logger=log, label_streams=self._multi_stream,
        )
        self._stats_type: type | None = None
        try:
            for stream in self._streams.values():
                self._create_endpoints(stream)
            self._create_label_info_publisher()
        except Exception as error:  # e.g. a topic name rclpy refuses
            raise StartupError(f"cannot create the topics: {error}") from error
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_label_info()

    def _start(self) -> None:
        """Parameter callback, diagnostics timer and the worker thread."""
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._start_worker()

    def _start_worker(self) -> None:
        """The diagnostics timer and the worker thread."""
        self._diagnostics_timer = self.create_timer(
            self.settings.options.diagnostics_period, self._publish_diagnostics
        )
        self._worker = threading.Thread(target=self._work, name="accel_worker", daemon=True)
        self._worker.start()

    def _stop_streams(self) -> None:
        """Undo `_create_streams` and `_start_worker`: the worker finishes its frame, then the
        timer, subscriptions and publishers go. The segmenter stays."""
        if not self.stop_worker():
            self.get_logger().warning("the frame in flight did not finish; stopping anyway")
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        # getattr: activation may have failed half-way through `_create_streams`.
        for stream in getattr(self, "_streams", {}).values():
            for subscription in (stream.subscription, stream.info_subscription):
                if subscription is not None:
                    self.destroy_subscription(subscription)
            for publisher in stream.publishers.values():
                self.destroy_publisher(publisher)
        for publisher in (getattr(self, "_diagnostics_pub", None), self._label_info_pub):
            if publisher is not None:
                self.destroy_publisher(publisher)
        self._streams, self._processor, self._diagnostics_pub = {}, None, None
        self._label_info_pub = self._label_info_fields = None
        self._label_info_frame_id = ""

    def _create_endpoints(self, stream: _Stream) -> None:
        """The stream's output publishers and its input subscriptions (image, camera_info)."""
        options, log = self.settings.options, self.get_logger()
        topics = output_topics(stream.plan.outputs, NODE_OUTPUTS)
        output_qos = _output_qos(options.output_qos, options.output_qos_depth)
        small_qos = _output_qos(options.output_qos,
                                options.output_qos_depth * SMALL_OUTPUT_DEPTH_FACTOR)
        for name in (LABELS, COLOR, OVERLAY, SCORES):
            stream.publishers[name] = self.create_publisher(Image, topics[name], output_qos)
        stream.publishers[CAMERA_INFO] = self.create_publisher(
            CameraInfo, topics[CAMERA_INFO], small_qos)
        if self._stats_type is None and SegmentationStats is not None:
            try:
                stream.publishers[STATS] = self.create_publisher(
                    SegmentationStats, topics[STATS], small_qos
                )
                self._stats_type = SegmentationStats
            except Exception as error:  # Python module found, its type support libraries not
                log.warning(f"accel_ros_msgs is importable but unusable ({error})")
        if self._stats_type is None:
            self._stats_type = String
            log.info(
                "accel_ros_msgs is not installed (colcon build it and source "
                "install/setup.bash): publishing ~/stats as std_msgs/String JSON with the "
                "fields of accel_ros_msgs/msg/SegmentationStats.msg (and ~/label_info with "
                "those of LabelInfo.msg)"
            )
        if STATS not in stream.publishers:
            stream.publishers[STATS] = self.create_publisher(
                self._stats_type, topics[STATS], small_qos
            )
        self._subscribe(stream)

    def _subscribe(self, stream: _Stream) -> None:
        """The stream's image subscription, and its camera_info's beside the image topic
        (image_transport's convention, after remapping: `-r image:=/cam/image_raw` takes
        /cam/camera_info)."""
        options, name = self.settings.options, stream.plan.name
        base = self.resolve_topic_name(stream.plan.topic)
        if options.input_transport == "compressed":
            # Remap first, then append: `-r image:=/cam` subscribes to /cam/compressed.
            topic, msg_type = f"{base}/compressed", CompressedImage
        else:
            topic, msg_type = stream.plan.topic, Image
        # rclpy's sensor-data profile as it is (best effort, volatile, keep last 5): the
        # newest-frame slot does the dropping, and counts it, rather than the DDS history; best
        # effort also matches drivers publishing images or camera_info reliable.
        stream.subscription = self.create_subscription(
            msg_type, topic, lambda msg: self._on_image(name, msg), qos_profile_sensor_data
        )
        stream.info_subscription = self.create_subscription(
            CameraInfo, camera_info_topic(base),
            lambda info: self._on_camera_info(stream, info), qos_profile_sensor_data
        )
        where = (f"subscribed to {stream.subscription.topic_name} ({msg_type.__name__}) and "
                 f"{stream.info_subscription.topic_name} (CameraInfo)")
        if self._multi_stream:
            where = (f"{self._log_prefix(name)}{where}, outputs {stream.plan.outputs}"
                     f"{{{','.join(NODE_OUTPUTS)}}}")
        self.get_logger().info(where)

    # One ~/label_info for the node: the model it describes serves every stream.
    _label_info_topic = output_topic(NODE_PREFIX, LABEL_INFO)

    def _create_label_info_publisher(self) -> None:
        """~/label_info: accel_ros_msgs/LabelInfo, or JSON when ~/stats is JSON too or the
        built accel_ros_msgs predates LabelInfo."""
        self._label_info_type = String
        if self._stats_type is not String and LabelInfo is not None:
            try:
                self._label_info_pub = self.create_publisher(LabelInfo, self._label_info_topic,
                                                             _latched_qos())
                self._label_info_type = LabelInfo
                return
            except Exception as error:  # type support libraries missing
                self.get_logger().warning(f"accel_ros_msgs LabelInfo is unusable ({error})")
        elif self._stats_type is not String:
            self.get_logger().info("accel_ros_msgs has no LabelInfo (rebuild it): publishing "
                                   "~/label_info as std_msgs/String JSON")
        self._label_info_pub = self.create_publisher(String, self._label_info_topic,
                                                     _latched_qos())

    def _publish_label_info(self, frame_header: Any = None) -> None:
        """Publish the class metadata unless the newest one published says the same: at
        start-up (stamped now, no frame_id: no frame came yet), with a one-camera node's first
        frame header (frame_id then names the camera; io.messages.label_info_message), and on
        a live change that alters it (`palette`), keeping the frame_id."""
        if self._label_info_pub is None or self.segmenter is None:
            return
        with self._label_info_lock:
            if self._label_info_pub is None:  # the streams stopped meanwhile
                return
            fields = segmenter_label_info(self.segmenter, self.settings.options.palette)
            frame_id = (self._label_info_frame_id if frame_header is None
                        else frame_header.frame_id)
            if (fields, frame_id) == (self._label_info_fields, self._label_info_frame_id):
                return
            stamp = (self.get_clock().now().to_msg() if frame_header is None
                     else frame_header.stamp)
            self._label_info_pub.publish(_label_info_message(
                self._label_info_type, fields, Header(stamp=stamp, frame_id=frame_id)))
            self._label_info_fields, self._label_info_frame_id = fields, frame_id

    # --- parameters -------------------------------------------------------------------------

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        # Parameters rclpy declares itself (use_sim_time, ...) are rclpy's business.
        changes = {p.name: p.value for p in parameters if p.name in PARAMETER_SPECS}
        plan = plan_parameter_update(self.settings, changes)
        if not plan.successful or plan.settings is None:
            # Throttled: a burst of bad requests must not flood the log (the reason, already
            # shortened, goes back to every caller).
            self._log_throttled.warning("rejected", f"rejected parameter change: {plan.reason}")
            return SetParametersResult(successful=False, reason=plan.reason)
        self._apply_settings(plan.settings)
        if plan.changed:
            self.get_logger().info(
                f"parameters changed live: {change_summary(changes, plan.changed)}")
        return SetParametersResult(successful=True)

    def _apply_settings(self, settings: NodeSettings) -> None:
        """Accepted live settings to whatever exists now (a managed node may have no
        segmenter or no streams yet)."""
        self.settings = settings
        if self.segmenter is not None:
            apply_live_pipeline(self.segmenter.pipeline_config, settings)
        if self._processor is not None:
            self._processor.options = settings.options  # every stream's
        self._throttle.period = settings.options.log_throttle
        self._log_throttled.throttle.period = settings.options.log_throttle
        self._publish_label_info()

    # --- frames -------------------------------------------------------------------------

    def _on_image(self, stream: str, msg: Image | CompressedImage) -> None:
        # Gaps and the input rate are judged here, on every arrival, so that dropped frames
        # never look like gaps or losses.
        stamp, state = stamp_to_seconds(msg.header.stamp), self._streams[stream]
        if not state.rate.observe(stamp) and not state.noted_unstamped:
            state.noted_unstamped = True
            self.get_logger().info(
                f"{self._log_prefix(stream)}frames carry no stamp (0): their end-to-end "
                "latency is unknown (NaN in ~/stats), and neither time gaps nor lost frames "
                "can be judged")
        reset = self.segmenter.note_arrival(stamp or None, stream)  # 0: unstamped
        self._slots.put(stream, msg, reset)  # never blocks; an unprocessed older frame drops

    def _work(self) -> None:
        while not self._slots.closed:
            ready = self._slots.take_ready(timeout=0.2)
            if not ready:
                continue
            try:
                self._handle(ready)
            except Exception as error:  # keep the worker alive whatever happens
                if self._throttle.allow("worker") and self.context.ok():
                    self.get_logger().error(f"frame failed: {type(error).__name__}: {error}")

    def _handle(self, ready: list[ReadyFrame]) -> None:
        """One batch: the newest frame of every ready stream, segmented together, then each
        stream's outputs published with its own input header."""
        for outcome in self._processor.process(ready):
            if outcome.outputs is None:
                continue
            try:
                self._publish(self._streams[outcome.stream], outcome)
            except Exception as error:  # one stream's failure must not cost the others
                if self._throttle.allow(f"publish {outcome.stream}") and self.context.ok():
                    self.get_logger().error(
                        f"{self._log_prefix(outcome.stream)}frame failed: "
                        f"{type(error).__name__}: {error}"
                    )

    def _publish(self, stream: _Stream, outcome: StreamOutcome) -> None:
        outputs, header = outcome.outputs, outcome.msg.header
        assert outputs is not None
        if not self._multi_stream and header.frame_id != self._label_info_frame_id:
            self._publish_label_info(header)  # now it can name the camera
        self._publish_images(stream, outputs, header)
        self._publish_camera_info(stream, outputs.labels.shape, header)
        now = self.get_clock().now().nanoseconds * 1e-9
        fields = stats_fields(
            outputs.result,
            mode=self.segmenter.pipeline_config.mode,
            stamp=outputs.stamp,
            now=now,
            dropped_frames=self._slots.slots[stream.plan.name].dropped,
        )
        end_to_end = None if np.isnan(fields["end_to_end_ms"]) else fields["end_to_end_ms"]
        with self._stats_lock:
            stream.stats.record(
                outputs.result.timings, outputs.result.is_keyframe, time.monotonic(), end_to_end
            )
        if self._stats_type is not String:
            stream.publishers[STATS].publish(self._stats_type(header=header, **fields))
        else:
            stamp_pair = (header.stamp.sec, header.stamp.nanosec)
            text = stats_to_json(fields, stamp_pair, header.frame_id)
            stream.publishers[STATS].publish(String(data=text))

    def _publish_images(self, stream: _Stream, outputs: FrameOutputs, header: Any) -> None:
        publishers = stream.publishers
        publishers[LABELS].publish(_image_message(from_array(outputs.labels, "mono8"), header))
        if outputs.color is not None:
            publishers[COLOR].publish(_image_message(from_array(outputs.color, "rgb8"), header))
        if outputs.overlay is not None:
            publishers[OVERLAY].publish(
                _image_message(from_array(outputs.overlay, "rgb8"), header)
            )
        if outputs.scores is not None:
            publishers[SCORES].publish(
                _image_message(from_array(outputs.scores, "32FC1"), header)
            )

    def _on_camera_info(self, stream: _Stream, info: Any) -> None:
        refused = stream.camera_info.update(info)
        if refused is not None:
            topic = stream.info_subscription.topic_name
            self._log_throttled.warning(f"camera_info refused {stream.plan.name}",
                                        f"{self._log_prefix(stream.plan.name)}{refused} ({topic})")

    def _publish_camera_info(self, stream: _Stream, size: tuple[int, int], header: Any) -> None:
        """The stream's newest camera_info with the labels' header (labels have the input's
        geometry, so the calibration passes on unchanged), unless it is stale."""
        decision = stream.camera_info.for_labels(size, self.settings.options.stream_timeout)
        prefix = self._log_prefix(stream.plan.name)
        if decision.stale is not None:
            self._log_throttled.warning(f"camera_info stale {stream.plan.name}",
                                        prefix + decision.stale)
        if decision.missing:
            self.get_logger().info(
                f"{prefix}no camera_info on {stream.info_subscription.topic_name} yet: "
                f"{output_topic(stream.plan.outputs, CAMERA_INFO)} follows the labels once one "
                "arrives")
        if decision.mismatch is not None:
            self._log_throttled.warning(f"camera_info {stream.plan.name}",
                                        prefix + decision.mismatch)
        if decision.info is not None:
            info = copy.copy(decision.info)  # shallow: only the header is replaced
            info.header = header
            stream.publishers[CAMERA_INFO].publish(info)

    def _log_prefix(self, stream: str) -> str:
        """What a log line about `stream` starts with: its name when the node has several."""
        return log_prefix(stream if self._multi_stream else None)

    # --- diagnostics ------------------------------------------------------------------------

    @property
    def stream_names(self) -> tuple[str, ...]:
        """The segmenter streams this node serves, in `image_topics` order."""
        return tuple(self._streams)

    def _diagnostic_report(self, stream: _Stream) -> DiagnosticReport:
        name = stream.plan.name
        with self._stats_lock:
            return diagnostic_report(
                stream.stats,
                self._slots.slots[name],
                self._processor.errors(name),
                str(self.segmenter.device),
                self.settings.options,
                self.segmenter.pipeline_config.keyframe_interval,
                now=time.monotonic(),
                stream=name if self._multi_stream else None,
                topic=stream.subscription.topic_name if self._multi_stream else None,
                rates=stream.rate.rates(self.settings.options.expected_rate),
            )

    def _publish_diagnostics(self) -> None:
        # Counts of warnings held back by a burst that has stopped are due now.
        self._log_throttled.flush()
        if self._processor is not None:
            self._processor.flush_log()
        statuses = []
        for stream in self._streams.values():
            report = self._diagnostic_report(stream)
            statuses.append(DiagnosticStatus(
                level=_LEVELS[report.level],
                name=f"{self.get_name()}: {stream.plan.status}",
                message=report.message,
                hardware_id=str(self.segmenter.device),
                values=[KeyValue(key=key, value=value) for key, value in report.values],
            ))
        array_msg = DiagnosticArray(status=statuses)
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array_msg)

    def diagnostics_json(self, stream: str | None = None) -> str:
        """The current diagnostic values of `stream` (default: the first) as JSON (handy in
        tests and for debugging)."""
        report = self._diagnostic_report(self._streams[stream or next(iter(self._streams))])
        return json.dumps({"level": report.level, "message": report.message,
                           "values": dict(report.values)})

    def stop_worker(self, timeout: float = _WORKER_STOP_TIMEOUT) -> bool:
        """Stop taking frames and wait for the frame in flight (it is still published).
        Returns False if the worker did not finish within `timeout` seconds."""
        if self._worker is None:  # a managed node that was never activated
            return True
        self._slots.close()
        if self._worker.is_alive():
            self._worker.join(timeout=timeout)
        return not self._worker.is_alive()


class AccelSegmentationNode(SegmentationNodeSteps, Node):
    """Subscribes to cameras, publishes Accel segmentation, statistics and diagnostics.

    `segmenter` injects a ready AccelSegmenter (tests use a tiny random-init one); otherwise
    it is built once from the parameters. Other keyword arguments go to rclpy's Node
    (e.g. `parameter_overrides`, `namespace`, `context`).
    """

    def __init__(self, segmenter: Any = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._configure(self._read_parameters(), segmenter)
        self._create_streams()
        self._start()

    def destroy_node(self) -> None:
        self.stop_worker()
        super().destroy_node()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Run the node `make_node` creates until SIGINT / SIGTERM; the exit status. The entry
    point of a node process: it leaves both signals ignored.

    0 after SIGINT / SIGTERM (the worker is stopped before the node and the context, so
    nothing is published on a dead context); 1 when the node cannot start (bad parameter
    value, missing checkpoint, unavailable device), with a one-line reason.
    """
    # Our own signal handling: rclpy's would shut the context down under the worker thread.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    node = None
    status = 0
    executor = SingleThreadedExecutor()
    try:
        node = make_node()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except StartupError as error:
        get_logger(NODE_NAME).fatal(f"cannot start: {error}")
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # stopped from outside
    finally:
        if node is not None:
            if not node.stop_worker():
                node.get_logger().warning("the frame in flight did not finish; exiting anyway")
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
        # Stopped: further SIGINT / SIGTERM are ignored until the process is gone. Under
        # `ros2 launch` a Ctrl-C reaches the node twice (from the terminal, then forwarded by
        # launch), and Python's exit restores the default action of signals it handles: a
        # second SIGINT then would kill the process ("process has died [exit code -2]").
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    return status


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run accel_ros accel_segmentation_node` (see `run_node`)."""
    return run_node(AccelSegmentationNode, args)


if __name__ == "__main__":
    sys.exit(main())
