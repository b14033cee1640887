"""ROS 2 node `accel_segmentation`: Accel video segmentation of one or several camera streams.

The only module that imports rclpy and ROS message packages. It is deliberately thin: what to
do with parameters, frames, statistics and errors is decided in `accel_ros.ros.node_logic` (tested
without ROS); this file wires those decisions to subscriptions, publishers and timers.

Topics (relative names, remappable):
  in   image (sensor_msgs/Image), or <image after remapping>/compressed
       (sensor_msgs/CompressedImage) when input_transport is "compressed"; sensor-data QoS
       (best effort, depth 5).
  out  ~/labels  sensor_msgs/Image mono8 class ids, same header as the input
       ~/color   sensor_msgs/Image rgb8 colourised labels          (publish_color)
       ~/overlay sensor_msgs/Image rgb8 labels blended on the input (publish_overlay)
       ~/scores  sensor_msgs/Image 32FC1 per-pixel max probability (publish_scores)
       ~/stats   accel_ros_msgs/SegmentationStats, or std_msgs/String JSON (see below)
       /diagnostics diagnostic_msgs/DiagnosticArray, every diagnostics_period seconds
  Outputs are reliable keep-last `output_qos_depth` (10) unless output_qos is best_effort.

Several cameras (`image_topics: [front/image, rear/image]`): one stream per topic, each
relative and remappable (compressed transport appends /compressed to each); the outputs of
stream <s> (the topic without its last component: front, rear) are ~/<s>/labels, ~/<s>/color,
~/<s>/overlay, ~/<s>/scores and ~/<s>/stats, and /diagnostics carries one status per stream
("<node name>: <s> segmentation"). One model serves all streams, with a keyframe cache each.

Threading: a subscription callback judges the time gap to its stream's previous arrival and
drops the message into that stream's newest-frame slot; one worker thread waits until any
stream has a frame, takes the newest frame of every stream that has one, segments them as one
batch and publishes each stream's outputs, so callbacks never block, a silent camera never
holds back the others, and frames that arrive while the worker is busy replace each other
(counted as dropped for their stream). SIGINT / SIGTERM stop the worker (the batch in flight is
finished and published) before the node and the context are shut down.
"""

from __future__ import annotations

import array
import dataclasses
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
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ..io.bridge import from_array, message_to_rgb8
from ..io.messages import stamp_to_seconds, stats_fields, stats_to_json
from .node_logic import (
    NODE_NAME,
    PARAMETER_SPECS,
    PARAMETERS,
    SOURCE_PARAMS_FILE,
    BatchProcessor,
    DiagnosticReport,
    FrameOutputs,
    NodeSettings,
    ReadyFrame,
    StampGapMonitor,
    StreamOutcome,
    StreamPlan,
    StreamSlots,
    StreamStatistics,
    Throttle,
    apply_live_pipeline,
    default_parameters,
    diagnostic_report,
    parse_parameters,
    plan_parameter_update,
    plan_streams,
    unknown_parameters,
)

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # rclpy before Humble

    class ExternalShutdownException(Exception):  # noqa: N818 - mirrors rclpy's name
        pass


# ament_python cannot generate rosidl messages: SegmentationStats comes from the companion
# ament_cmake package accel_ros_msgs (built by `colcon build`). Without it, ~/stats carries the
# same fields as JSON in a std_msgs/String.
try:
    from accel_ros_msgs.msg import SegmentationStats
except ImportError:
    SegmentationStats = None

_PARAMETER_TYPES = {
    "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE,
    "str": ParameterType.PARAMETER_STRING,
    "int_array": ParameterType.PARAMETER_INTEGER_ARRAY,
    "str_array": ParameterType.PARAMETER_STRING_ARRAY,
}
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


def _sensor_qos() -> QoSProfile:
    # rclpy's sensor-data QoS (best effort, volatile, depth 5): the newest-frame slot does the
    # dropping, and counts it, rather than the DDS history.
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=5,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


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


@dataclasses.dataclass
class _Stream:
    """One input stream: its plan, arrival-gap monitor, statistics and ROS endpoints. Its
    newest-frame slot lives in the node's StreamSlots, its error counters in the
    BatchProcessor (both keyed by `plan.name`)."""

    plan: StreamPlan
    gaps: StampGapMonitor
    stats: StreamStatistics
    publishers: dict[str, Any] = dataclasses.field(default_factory=dict)
    subscription: Any = None


class AccelSegmentationNode(Node):
    """Subscribes to a camera, publishes Accel segmentation, statistics and diagnostics.

    `segmenter` injects a ready AccelSegmenter (tests use a tiny random-init one); otherwise
    it is built once from the parameters. Other keyword arguments go to rclpy's Node
    (e.g. `parameter_overrides`, `namespace`, `context`).
    """

    def __init__(self, segmenter: Any = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        log = self.get_logger()
        try:
            self._declare_parameters()
            values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
            self.settings: NodeSettings = parse_parameters(values)
        except _STARTUP_ERRORS as error:  # bad config: fail at start-up, naming the parameter
            raise StartupError(str(error)) from error
        options = self.settings.options
        unknown = unknown_parameters(getattr(self, "_parameter_overrides", {}))
        if unknown:  # rclpy ignores overrides nobody declares: a typo would go unnoticed
            log.warning(
                f"ignoring unknown parameters (command line or params file): "
                f"{', '.join(unknown)}"
            )

        if segmenter is None:
            if options.random_weights:
                log.warning(
                    "checkpoint is 'none': the model has RANDOM WEIGHTS and its labels are "
                    "meaningless. Use checkpoint:=default or a trained .pt file."
                )
            from ..model import build_segmenter  # torch import deferred until parameters pass

            pipeline = dataclasses.replace(self.settings.pipeline)
            try:
                segmenter = build_segmenter(
                    model=options.preset, pipeline=pipeline, checkpoint=options.checkpoint
                )
            except _STARTUP_ERRORS as error:  # missing checkpoint, no CUDA, ...
                raise StartupError(f"cannot build the segmenter: {error}") from error
        self.segmenter = segmenter
        from ..model.pipeline import DEFAULT_STREAM  # torch is loaded: the segmenter exists

        plans = plan_streams(options, DEFAULT_STREAM)
        names = [plan.name for plan in plans]
        self._multi_stream = bool(options.image_topics)
        # One model, one keyframe cache per stream; an injected segmenter may hold other
        # streams' keyframes, so every stream starts empty.
        self.segmenter.configure_streams(names)
        self.segmenter.reset(stream=None)
        apply_live_pipeline(self.segmenter.pipeline_config, self.settings)
        # A checkpoint carries its own architecture: the preset only matters without one.
        source = (f"preset {options.preset} (random weights)" if options.random_weights
                  else f"checkpoint {options.checkpoint}")
        log.info(
            f"model from {source} on {self.segmenter.device}, mode "
            f"{self.settings.pipeline.mode}, keyframe interval "
            f"{self.settings.pipeline.keyframe_interval}"
            + (f", {len(plans)} streams: {', '.join(names)}" if self._multi_stream else "")
        )
        if self._multi_stream and options.image_topic != PARAMETER_SPECS["image_topic"].default:
            log.warning(f"image_topics is set: image_topic {options.image_topic!r} is unused")

        self._slots = StreamSlots(names, options.stats_window)
        self._streams = {
            plan.name: _Stream(plan, StampGapMonitor(), StreamStatistics(options.stats_window))
            for plan in plans
        }
        self._stats_lock = threading.Lock()
        self._throttle = Throttle(options.log_throttle)
        self._processor = BatchProcessor(
            self.segmenter,
            names,
            options,
            converter=make_converter(options.use_cv_bridge, log),
            logger=log,
            label_streams=self._multi_stream,
        )

        self._stats_type: type | None = None
        try:
            for stream in self._streams.values():
                self._create_endpoints(stream)
        except Exception as error:  # e.g. a topic name rclpy refuses
            raise StartupError(f"cannot create the topics: {error}") from error
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_timer = self.create_timer(
            options.diagnostics_period, self._publish_diagnostics
        )
        self._worker = threading.Thread(target=self._work, name="accel_worker", daemon=True)
        self._worker.start()

    def _create_endpoints(self, stream: _Stream) -> None:
        """The stream's output publishers and its input subscription."""
        options, log, prefix = self.settings.options, self.get_logger(), stream.plan.outputs
        output_qos = _output_qos(options.output_qos, options.output_qos_depth)
        for name in ("labels", "color", "overlay", "scores"):
            stream.publishers[name] = self.create_publisher(Image, prefix + name, output_qos)
        if self._stats_type is None and SegmentationStats is not None:
            try:
                stream.publishers["stats"] = self.create_publisher(
                    SegmentationStats, prefix + "stats", output_qos
                )
                self._stats_type = SegmentationStats
            except Exception as error:  # Python module found, its type support libraries not
                log.warning(f"accel_ros_msgs is importable but unusable ({error})")
        if self._stats_type is None:
            self._stats_type = String
            log.info(
                "accel_ros_msgs is not installed (colcon build it and source "
                "install/setup.bash): publishing ~/stats as std_msgs/String JSON with the "
                "fields of accel_ros_msgs/msg/SegmentationStats.msg"
            )
        if "stats" not in stream.publishers:
            stream.publishers["stats"] = self.create_publisher(
                self._stats_type, prefix + "stats", output_qos
            )

        if options.input_transport == "compressed":
            # Remap first, then append: `-r image:=/cam` subscribes to /cam/compressed.
            topic = f"{self.resolve_topic_name(stream.plan.topic)}/compressed"
            msg_type = CompressedImage
        else:
            topic, msg_type = stream.plan.topic, Image
        name = stream.plan.name
        stream.subscription = self.create_subscription(
            msg_type, topic, lambda msg: self._on_image(name, msg), _sensor_qos()
        )
        where = f"subscribed to {stream.subscription.topic_name} ({msg_type.__name__})"
        if self._multi_stream:
            where = f"stream {name}: {where}, outputs {prefix}{{labels,color,overlay,stats}}"
        log.info(where)

    # --- parameters -------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        defaults = default_parameters(find_params_file())
        for spec in PARAMETERS:
            constraints = f"one of {list(spec.choices)}" if spec.choices else ""
            # dynamic_typing: rclpy would reject `overlay_alpha: 1` (an int for a double) with
            # a traceback; parse_parameters / plan_parameter_update check types and say why.
            # It also lets image_topics default to []: rclpy cannot type an empty list (it
            # stores a byte array), rcl reads `[]` from a file or `-p` as unset (None, which
            # parse_parameters takes as []), and `[a/image, b/image]` arrives as a string
            # array; the descriptor still describes it as one.
            # Restart-only parameters are read-only: set them at start-up, not at run time.
            descriptor = ParameterDescriptor(
                name=spec.name,
                type=_PARAMETER_TYPES[spec.kind],
                description=spec.description + (" (live)" if spec.live else " (restart)"),
                additional_constraints=constraints,
                read_only=not spec.live,
                dynamic_typing=True,
            )
            self.declare_parameter(spec.name, defaults[spec.name], descriptor)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        # Parameters rclpy declares itself (use_sim_time, ...) are rclpy's business.
        changes = {p.name: p.value for p in parameters if p.name in PARAMETER_SPECS}
        plan = plan_parameter_update(self.settings, changes)
        if not plan.successful or plan.settings is None:
            self.get_logger().warning(f"rejected parameter change: {plan.reason}")
            return SetParametersResult(successful=False, reason=plan.reason)
        self.settings = plan.settings
        apply_live_pipeline(self.segmenter.pipeline_config, plan.settings)
        self._processor.options = plan.settings.options  # every stream's
        self._throttle.period = plan.settings.options.log_throttle
        if plan.changed:
            summary = ", ".join(f"{n}={changes[n]!r}" for n in plan.changed)
            self.get_logger().info(f"parameters changed live: {summary}")
        return SetParametersResult(successful=True)

    # --- frames -------------------------------------------------------------------------

    def _on_image(self, stream: str, msg: Image | CompressedImage) -> None:
        # Gaps are judged here, on every arrival, so that dropped frames never look like gaps.
        reset = self._streams[stream].gaps.observe(
            stamp_to_seconds(msg.header.stamp), self.segmenter.pipeline_config.max_time_gap
        )
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
                    prefix = f"stream {outcome.stream}: " if self._multi_stream else ""
                    self.get_logger().error(
                        f"{prefix}frame failed: {type(error).__name__}: {error}"
                    )

    def _publish(self, stream: _Stream, outcome: StreamOutcome) -> None:
        outputs, header = outcome.outputs, outcome.msg.header
        assert outputs is not None
        self._publish_images(stream, outputs, header)
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
            stream.publishers["stats"].publish(self._stats_type(header=header, **fields))
        else:
            stamp_pair = (header.stamp.sec, header.stamp.nanosec)
            text = stats_to_json(fields, stamp_pair, header.frame_id)
            stream.publishers["stats"].publish(String(data=text))

    def _publish_images(self, stream: _Stream, outputs: FrameOutputs, header: Any) -> None:
        publishers = stream.publishers
        publishers["labels"].publish(_image_message(from_array(outputs.labels, "mono8"), header))
        if outputs.color is not None:
            publishers["color"].publish(_image_message(from_array(outputs.color, "rgb8"), header))
        if outputs.overlay is not None:
            publishers["overlay"].publish(
                _image_message(from_array(outputs.overlay, "rgb8"), header)
            )
        if outputs.scores is not None:
            publishers["scores"].publish(
                _image_message(from_array(outputs.scores, "32FC1"), header)
            )

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
            )

    def _publish_diagnostics(self) -> None:
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
        self._slots.close()
        if self._worker.is_alive():
            self._worker.join(timeout=timeout)
        return not self._worker.is_alive()

    def destroy_node(self) -> None:
        self.stop_worker()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run accel_ros accel_segmentation_node`.

    Exit status 0 after SIGINT / SIGTERM (the worker is stopped before the node and the
    context, so nothing is published on a dead context); 1 when the node cannot start (bad
    parameter value, missing checkpoint, unavailable device), with a one-line reason.
    """
    # Our own signal handling: rclpy's would shut the context down under the worker thread.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    status = 0
    executor = SingleThreadedExecutor()
    try:
        node = AccelSegmentationNode()
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


if __name__ == "__main__":
    sys.exit(main())
