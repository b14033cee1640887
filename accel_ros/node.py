"""ROS 2 node `accel_segmentation`: Accel video segmentation of a camera stream.

The only module that imports rclpy and ROS message packages. It is deliberately thin: what to
do with parameters, frames, statistics and errors is decided in `accel_ros.node_logic` (tested
without ROS); this file wires those decisions to subscriptions, publishers and timers.

Topics (relative names, remappable):
  in   image (sensor_msgs/Image), or image/compressed (sensor_msgs/CompressedImage) when
       input_transport is "compressed"; sensor-data QoS, depth 1.
  out  ~/labels  sensor_msgs/Image mono8 class ids, same header as the input
       ~/color   sensor_msgs/Image rgb8 colourised labels          (publish_color)
       ~/overlay sensor_msgs/Image rgb8 labels blended on the input (publish_overlay)
       ~/scores  sensor_msgs/Image 32FC1 per-pixel max probability (publish_scores)
       ~/stats   accel_ros_msgs/SegmentationStats, or std_msgs/String JSON (see below)
       /diagnostics diagnostic_msgs/DiagnosticArray, every diagnostics_period seconds

Threading: the subscription callback only drops the message into a newest-frame slot; one
worker thread converts, segments and publishes, so callbacks never block and frames that
arrive while the worker is busy replace each other (counted as dropped).
"""

from __future__ import annotations

import array
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from .bridge import from_array, message_to_rgb8
from .messages import stamp_to_seconds, stats_fields, stats_to_json
from .node_logic import (
    NODE_NAME,
    PARAMETERS,
    SOURCE_PARAMS_FILE,
    DiagnosticReport,
    FrameOutputs,
    FrameProcessor,
    FrameSlot,
    NodeSettings,
    StreamStatistics,
    Throttle,
    apply_live_pipeline,
    default_parameters,
    diagnostic_report,
    parse_parameters,
    plan_parameter_update,
)

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # rclpy before Humble

    class ExternalShutdownException(Exception):  # noqa: N818 - mirrors rclpy's name
        pass


# ament_python cannot generate rosidl messages, so msg/SegmentationStats.msg only becomes a
# Python class when a companion ament_cmake package (accel_ros_msgs) builds it. Without it,
# ~/stats carries the same fields as JSON in a std_msgs/String.
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
}
_LEVELS = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
           DiagnosticStatus.STALE)


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
    # Sensor-data QoS (best effort, volatile) with depth 1: only the newest frame matters.
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.BEST_EFFORT,
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


class AccelSegmentationNode(Node):
    """Subscribes to a camera, publishes Accel segmentation, statistics and diagnostics.

    `segmenter` injects a ready AccelSegmenter (tests use a tiny random-init one); otherwise
    it is built once from the parameters. Other keyword arguments go to rclpy's Node
    (e.g. `parameter_overrides`, `namespace`, `context`).
    """

    def __init__(self, segmenter: Any = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_parameters()
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self.settings: NodeSettings = parse_parameters(values)  # bad config: fail at startup
        options = self.settings.options
        log = self.get_logger()

        if segmenter is None:
            if options.random_weights:
                log.warning(
                    "checkpoint is 'none': the model has RANDOM WEIGHTS and its labels are "
                    "meaningless. Use checkpoint:=default or a trained .pt file."
                )
            from .model import build_segmenter  # torch import deferred until parameters pass

            pipeline = dataclasses.replace(self.settings.pipeline)
            segmenter = build_segmenter(
                model=options.preset, pipeline=pipeline, checkpoint=options.checkpoint
            )
        self.segmenter = segmenter
        self.segmenter.reset()  # an injected segmenter may hold another stream's keyframe
        apply_live_pipeline(self.segmenter.pipeline_config, self.settings)
        log.info(
            f"model {options.preset} (checkpoint {options.checkpoint}) on "
            f"{self.segmenter.device}, mode {self.settings.pipeline.mode}, keyframe interval "
            f"{self.settings.pipeline.keyframe_interval}"
        )

        self._slot = FrameSlot()
        self._stats = StreamStatistics(options.stats_window)
        self._stats_lock = threading.Lock()
        self._throttle = Throttle(options.log_throttle)
        self._processor = FrameProcessor(
            self.segmenter,
            options,
            converter=make_converter(options.use_cv_bridge, log),
            logger=log,
        )

        image_qos = QoSProfile(depth=1)
        self._labels_pub = self.create_publisher(Image, "~/labels", image_qos)
        self._color_pub = self.create_publisher(Image, "~/color", image_qos)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", image_qos)
        self._scores_pub = self.create_publisher(Image, "~/scores", image_qos)
        if SegmentationStats is not None:
            self._stats_pub = self.create_publisher(SegmentationStats, "~/stats", 10)
        else:
            self._stats_pub = self.create_publisher(String, "~/stats", 10)
            log.info(
                "accel_ros_msgs is not built (ament_python packages cannot generate "
                "messages): publishing ~/stats as std_msgs/String JSON with the fields of "
                "msg/SegmentationStats.msg"
            )
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        if options.input_transport == "compressed":
            topic, msg_type = f"{options.image_topic}/compressed", CompressedImage
        else:
            topic, msg_type = options.image_topic, Image
        self._subscription = self.create_subscription(
            msg_type, topic, self._on_image, _sensor_qos()
        )
        log.info(f"subscribed to {self._subscription.topic_name} ({msg_type.__name__})")

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_timer = self.create_timer(
            options.diagnostics_period, self._publish_diagnostics
        )
        self._worker = threading.Thread(target=self._work, name="accel_worker", daemon=True)
        self._worker.start()

    # --- parameters -------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        defaults = default_parameters(find_params_file())
        for spec in PARAMETERS:
            constraints = f"one of {list(spec.choices)}" if spec.choices else ""
            descriptor = ParameterDescriptor(
                name=spec.name,
                type=_PARAMETER_TYPES[spec.kind],
                description=spec.description + (" (live)" if spec.live else " (restart)"),
                additional_constraints=constraints,
            )
            self.declare_parameter(spec.name, defaults[spec.name], descriptor)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        plan = plan_parameter_update(self.settings, changes)
        if not plan.successful or plan.settings is None:
            self.get_logger().warning(f"rejected parameter change: {plan.reason}")
            return SetParametersResult(successful=False, reason=plan.reason)
        self.settings = plan.settings
        apply_live_pipeline(self.segmenter.pipeline_config, plan.settings)
        self._processor.options = plan.settings.options
        self._throttle.period = plan.settings.options.log_throttle
        if plan.changed:
            summary = ", ".join(f"{n}={changes[n]!r}" for n in plan.changed)
            self.get_logger().info(f"parameters changed live: {summary}")
        return SetParametersResult(successful=True)

    # --- frames -------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._slot.put(msg)  # never blocks; an unprocessed older frame is dropped

    def _work(self) -> None:
        while not self._slot.closed:
            msg = self._slot.take(timeout=0.2)
            if msg is None:
                continue
            try:
                self._handle(msg)
            except Exception as error:  # keep the worker alive whatever happens
                if self._throttle.allow("worker"):
                    self.get_logger().error(f"frame failed: {type(error).__name__}: {error}")

    def _handle(self, msg: Image | CompressedImage) -> None:
        stamp = stamp_to_seconds(msg.header.stamp)
        outputs = self._processor.process(msg, stamp)
        if outputs is None:
            return
        self._publish_images(outputs, msg.header)
        now = self.get_clock().now().nanoseconds * 1e-9
        fields = stats_fields(
            outputs.result,
            mode=self.segmenter.pipeline_config.mode,
            stamp=outputs.stamp,
            now=now,
            dropped_frames=self._slot.dropped,
        )
        end_to_end = None if np.isnan(fields["end_to_end_ms"]) else fields["end_to_end_ms"]
        with self._stats_lock:
            self._stats.record(
                outputs.result.timings, outputs.result.is_keyframe, time.monotonic(), end_to_end
            )
        if SegmentationStats is not None:
            self._stats_pub.publish(SegmentationStats(header=msg.header, **fields))
        else:
            text = stats_to_json(fields, outputs.stamp, msg.header.frame_id)
            self._stats_pub.publish(String(data=text))

    def _publish_images(self, outputs: FrameOutputs, header: Any) -> None:
        self._labels_pub.publish(_image_message(from_array(outputs.labels, "mono8"), header))
        if outputs.color is not None:
            self._color_pub.publish(_image_message(from_array(outputs.color, "rgb8"), header))
        if outputs.overlay is not None:
            self._overlay_pub.publish(
                _image_message(from_array(outputs.overlay, "rgb8"), header)
            )
        if outputs.scores is not None:
            self._scores_pub.publish(_image_message(from_array(outputs.scores, "32FC1"), header))

    # --- diagnostics ------------------------------------------------------------------------

    def _diagnostic_report(self) -> DiagnosticReport:
        with self._stats_lock:
            return diagnostic_report(
                self._stats,
                self._slot,
                self._processor.errors,
                str(self.segmenter.device),
                self.settings.options,
                self.segmenter.pipeline_config.keyframe_interval,
            )

    def _publish_diagnostics(self) -> None:
        report = self._diagnostic_report()
        status = DiagnosticStatus(
            level=_LEVELS[report.level],
            name=f"{self.get_name()}: segmentation",
            message=report.message,
            hardware_id=str(self.segmenter.device),
            values=[KeyValue(key=key, value=value) for key, value in report.values],
        )
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array_msg)

    def diagnostics_json(self) -> str:
        """The current diagnostic values as JSON (handy in tests and for debugging)."""
        report = self._diagnostic_report()
        return json.dumps({"level": report.level, "message": report.message,
                           "values": dict(report.values)})

    def destroy_node(self) -> None:
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Entry point of `ros2 run accel_ros accel_segmentation_node`."""
    rclpy.init(args=args)
    node = None
    try:
        node = AccelSegmentationNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C, or `ros2 launch` stopping the node
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
