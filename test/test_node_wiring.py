"""The rclpy glue (accel_ros/node.py) against a stand-in for rclpy, and the launch file and
rviz config checked statically. These run everywhere, ROS installed or not; the real node over
real DDS is tested in test_node_ros.py.

The stand-in is a minimal copy of the parts of rclpy and the ROS message packages node.py
touches, so its wiring (parameters, worker thread, publishers, parameter callback,
diagnostics) is exercised on machines without ROS too.
"""

from __future__ import annotations

import array
import ast
import copy
import enum
import gc
import importlib
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import yaml
from recording_logger import RecordingLogger

from accel_ros.config import CHOICES, RANGES, ModelConfig, PipelineConfig
from accel_ros.io.bridge import from_rgb8, image_to_array
from accel_ros.io.messages import CLASS_INFO_MSG_TEXT, LABEL_INFO_MSG_TEXT, STATS_MSG_TEXT
from accel_ros.ros.parameters import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96


@pytest.fixture(scope="module")
def tiny_segmenter():
    import torch

    from accel_ros.stream import build_segmenter

    torch.manual_seed(0)
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=32)
    return build_segmenter(config, PipelineConfig(device="cpu", keyframe_interval=5))


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def wait_until(predicate, timeout: float = 60.0) -> bool:
    """Poll a condition set by the node's worker thread until a deadline (generous: the CPU
    may be busy; this is not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()

# --- stand-in rclpy --------------------------------------------------------------------------


def _message(name: str, constants: dict[str, Any] | None = None, /, **defaults: Any) -> type:
    """A message class like rclpy's: keyword constructor, per-instance copies of defaults."""

    def init(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{name} has no fields {sorted(unknown)}")
        for key, value in defaults.items():
            setattr(self, key, kwargs[key] if key in kwargs else copy.deepcopy(value))

    return type(name, (), {"__init__": init, **(constants or {})})




class _Publisher:
    def __init__(self, msg_type: type, topic: str) -> None:
        self.msg_type, self.topic, self.sent = msg_type, topic, []
        self.destroyed = False

    def publish(self, msg: Any) -> None:
        assert not self.destroyed, f"{self.topic}: publishing on a destroyed publisher"
        assert isinstance(msg, self.msg_type), f"{self.topic}: wrong message type"
        self.sent.append(msg)


def _stand_in_lifecycle(node_class: type) -> dict[str, Any]:
    """rclpy.lifecycle as far as the managed node uses it: the primary states, the
    transitions between them and their outcomes (FAILURE returns to the start state; ERROR,
    or a callback that raises, runs on_error, whose SUCCESS leads to unconfigured)."""

    class TransitionCallbackReturn(enum.Enum):
        SUCCESS = "success"
        FAILURE = "failure"
        ERROR = "error"

    class LifecycleState(NamedTuple):
        label: str
        state_id: int

    transitions = {"configure": ("unconfigured", "inactive"),
                   "activate": ("inactive", "active"),
                   "deactivate": ("active", "inactive"),
                   "cleanup": ("inactive", "unconfigured")}

    class LifecycleNode(node_class):
        def __init__(self, node_name: str, **kwargs: Any) -> None:
            super().__init__(node_name, **kwargs)
            self.state = "unconfigured"

        def change_state(self, transition: str) -> Any:
            """What the ~/change_state service does with a transition label."""
            if transition == "shutdown":
                allowed, goal = ("unconfigured", "inactive", "active"), "finalized"
            else:
                start, goal = transitions[transition]
                allowed = (start,)
            if self.state not in allowed:
                raise RuntimeError(f"no transition {transition} from {self.state}")
            previous = LifecycleState(self.state, 0)
            try:
                result = getattr(self, f"on_{transition}")(previous)
            except Exception:
                result = TransitionCallbackReturn.ERROR
            if result is TransitionCallbackReturn.SUCCESS:
                self.state = goal
            elif result is TransitionCallbackReturn.ERROR:
                recovered = self.on_error(previous) is TransitionCallbackReturn.SUCCESS
                self.state = "unconfigured" if recovered else "finalized"
            return result

    return {"LifecycleNode": LifecycleNode, "LifecycleState": LifecycleState,
            "TransitionCallbackReturn": TransitionCallbackReturn}


def _stand_in_modules(stats_class: type | None) -> dict[str, types.ModuleType]:
    """rclpy, rcl_interfaces, sensor_msgs, std_msgs, diagnostic_msgs: the parts node.py uses."""
    time_cls = _message("Time", sec=0, nanosec=0)
    header_cls = _message("Header", stamp=time_cls(), frame_id="")
    roi_cls = _message("RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                       do_rectify=False)

    class Parameter:
        def __init__(self, name: str, value: Any = None) -> None:
            self.name, self.value = name, value

    class Clock:
        def now(self) -> Any:
            ns = time.time_ns()
            return types.SimpleNamespace(
                nanoseconds=ns, to_msg=lambda: time_cls(sec=ns // 10**9, nanosec=ns % 10**9)
            )

    class Node:
        def __init__(self, node_name: str, **kwargs: Any) -> None:
            self._name = node_name
            # What rclpy keeps: {name: Parameter} from the command line, files and kwargs.
            self._parameter_overrides = {
                p.name: p for p in kwargs.get("parameter_overrides", [])}
            self.parameters: dict[str, Any] = {}
            self.descriptors: dict[str, Any] = {}
            self.publishers: dict[str, _Publisher] = {}
            self.subscriptions: list[Any] = []
            self.timers: list[Any] = []
            self.parameter_callbacks: list[Any] = []
            self.logger = RecordingLogger()
            self.destroyed = False
            self.context = types.SimpleNamespace(ok=lambda: True)
            self._namespace = kwargs.get("namespace", "")

        def resolve_topic_name(self, topic: str) -> str:
            return topic if topic.startswith("/") else f"{self._namespace}/{topic}"

        def get_fully_qualified_name(self) -> str:
            return f"{self._namespace}/{self._name}"

        def declare_parameter(self, name: str, value: Any, descriptor: Any) -> Parameter:
            assert name not in self.parameters, f"{name} declared twice"
            self.descriptors[name] = descriptor
            override = self._parameter_overrides.get(name)
            self.parameters[name] = value if override is None else override.value
            return Parameter(name, self.parameters[name])

        def get_parameter(self, name: str) -> Parameter:
            return Parameter(name, self.parameters[name])

        def set_parameters(self, parameters: list[Parameter]) -> list[Any]:
            results = []
            for parameter in parameters:
                result = self.parameter_callbacks[0]([parameter])
                if result.successful:
                    self.parameters[parameter.name] = parameter.value
                results.append(result)
            return results

        def add_on_set_parameters_callback(self, callback: Any) -> None:
            self.parameter_callbacks.append(callback)

        def create_publisher(self, msg_type: type, topic: str, qos: Any) -> _Publisher:
            self.publishers[topic] = _Publisher(msg_type, topic)
            self.publishers[topic].qos = qos
            return self.publishers[topic]

        def create_subscription(self, msg_type, topic, callback, qos) -> Any:
            subscription = types.SimpleNamespace(
                msg_type=msg_type, topic_name=topic, callback=callback, qos=qos
            )
            self.subscriptions.append(subscription)
            return subscription

        def create_timer(self, period: float, callback: Any) -> Any:
            timer = types.SimpleNamespace(period=period, callback=callback)
            self.timers.append(timer)
            return timer

        def destroy_publisher(self, publisher: _Publisher) -> None:
            assert self.publishers.pop(publisher.topic) is publisher
            publisher.destroyed = True

        def destroy_subscription(self, subscription: Any) -> None:
            self.subscriptions.remove(subscription)

        def destroy_timer(self, timer: Any) -> None:
            self.timers.remove(timer)

        def get_logger(self) -> RecordingLogger:
            return self.logger

        def get_clock(self) -> Clock:
            return Clock()

        def get_name(self) -> str:
            return self._name

        def destroy_node(self) -> None:
            self.destroyed = True

    lifecycle = _stand_in_lifecycle(Node)

    def module(name: str, **attributes: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        return mod

    enum = types.SimpleNamespace
    rclpy = module("rclpy", init=lambda args=None: None, spin=lambda node: None,
                   ok=lambda: False, shutdown=lambda: None)
    modules = {
        "rclpy": rclpy,
        "rclpy.node": module("rclpy.node", Node=Node),
        "rclpy.lifecycle": module("rclpy.lifecycle", **lifecycle),
        "rclpy.parameter": module("rclpy.parameter", Parameter=Parameter),
        "rclpy.executors": module("rclpy.executors",
                                  ExternalShutdownException=type("ESE", (Exception,), {}),
                                  SingleThreadedExecutor=object),
        "rclpy.logging": module("rclpy.logging", get_logger=lambda name: RecordingLogger()),
        "rclpy.signals": module("rclpy.signals", SignalHandlerOptions=enum(NO="no")),
        "rclpy.qos": module(
            "rclpy.qos",
            QoSProfile=lambda **kwargs: types.SimpleNamespace(**kwargs),
            HistoryPolicy=enum(KEEP_LAST="keep_last"),
            ReliabilityPolicy=enum(BEST_EFFORT="best_effort", RELIABLE="reliable"),
            DurabilityPolicy=enum(VOLATILE="volatile", TRANSIENT_LOCAL="transient_local"),
            qos_profile_sensor_data=types.SimpleNamespace(
                history="keep_last", depth=5, reliability="best_effort", durability="volatile"),
        ),
        "rcl_interfaces": module("rcl_interfaces"),
        "rcl_interfaces.msg": module(
            "rcl_interfaces.msg",
            ParameterDescriptor=_message("ParameterDescriptor", name="", type=0,
                                         description="", additional_constraints="",
                                         read_only=False, dynamic_typing=False,
                                         integer_range=[], floating_point_range=[]),
            IntegerRange=_message("IntegerRange", from_value=0, to_value=0, step=0),
            FloatingPointRange=_message("FloatingPointRange", from_value=0.0, to_value=0.0,
                                        step=0.0),
            ParameterType=enum(PARAMETER_BOOL=1, PARAMETER_INTEGER=2, PARAMETER_DOUBLE=3,
                               PARAMETER_STRING=4, PARAMETER_INTEGER_ARRAY=7,
                               PARAMETER_STRING_ARRAY=9),
            SetParametersResult=_message("SetParametersResult", successful=False, reason=""),
        ),
        "sensor_msgs": module("sensor_msgs"),
        "sensor_msgs.msg": module(
            "sensor_msgs.msg",
            Image=_message("Image", header=header_cls(), height=0, width=0, encoding="",
                           is_bigendian=0, step=0, data=array.array("B")),
            CompressedImage=_message("CompressedImage", header=header_cls(), format="",
                                     data=array.array("B")),
            CameraInfo=_message("CameraInfo", header=header_cls(), height=0, width=0,
                                distortion_model="", d=[], k=[0.0] * 9, binning_x=0,
                                binning_y=0, roi=roi_cls()),
        ),
        "std_msgs": module("std_msgs"),
        "std_msgs.msg": module("std_msgs.msg", String=_message("String", data=""),
                               Header=header_cls),
        "diagnostic_msgs": module("diagnostic_msgs"),
        "diagnostic_msgs.msg": module(
            "diagnostic_msgs.msg",
            DiagnosticArray=_message("DiagnosticArray", header=header_cls(), status=[]),
            DiagnosticStatus=_message(
                "DiagnosticStatus",
                {"OK": b"\x00", "WARN": b"\x01", "ERROR": b"\x02", "STALE": b"\x03"},
                level=b"\x00", name="", message="", hardware_id="", values=[],
            ),
            KeyValue=_message("KeyValue", key="", value=""),
        ),
        "builtin_interfaces.msg": module("builtin_interfaces.msg", Time=time_cls),
    }
    if stats_class is not None:
        modules["accel_ros_msgs"] = module("accel_ros_msgs")
        modules["accel_ros_msgs.msg"] = module(
            "accel_ros_msgs.msg", SegmentationStats=stats_class,
            LabelInfo=_msg_class("LabelInfo", LABEL_INFO_MSG_TEXT),
            ClassInfo=_msg_class("ClassInfo", CLASS_INFO_MSG_TEXT))
    return modules


def _msg_class(name: str, text: str) -> type:
    """A stand-in for a rosidl-generated class, with the fields of its .msg text."""
    fields = [line.split()[1] for line in text.splitlines()
              if line.strip() and not line.startswith("#")]
    return _message(name, **dict.fromkeys(fields))


def _stats_class() -> type:
    return _msg_class("SegmentationStats", STATS_MSG_TEXT)


@pytest.fixture(params=[False, True], ids=["stats-as-json", "stats-message"])
def node_module(request, monkeypatch):
    """accel_ros.ros.node imported against the stand-in (sys.modules is restored afterwards)."""
    stats_class = _stats_class() if request.param else None
    for name, mod in _stand_in_modules(stats_class).items():
        monkeypatch.setitem(sys.modules, name, mod)
    if stats_class is None:
        # The import fails: JSON fallback (even if test_node_ros imported the real package).
        monkeypatch.setitem(sys.modules, "accel_ros_msgs", None)
        monkeypatch.setitem(sys.modules, "accel_ros_msgs.msg", None)
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # numpy bridge, deterministically
    monkeypatch.delitem(sys.modules, "accel_ros.ros.node", raising=False)
    monkeypatch.delitem(sys.modules, "accel_ros.ros.lifecycle_node", raising=False)
    return importlib.import_module("accel_ros.ros.node")


@pytest.fixture
def lifecycle_module(node_module):
    """accel_ros.ros.lifecycle_node against the stand-in, over the same node module."""
    return importlib.import_module("accel_ros.ros.lifecycle_node")


def _stand_in_image(mod: Any, rgb: np.ndarray, encoding: str = "rgb8", sec: int = 100) -> Any:
    sensor, std = sys.modules["sensor_msgs.msg"], sys.modules["std_msgs.msg"]
    time_cls = sys.modules["builtin_interfaces.msg"].Time
    fields = from_rgb8(rgb, encoding)
    fields["data"] = array.array("B", fields["data"].tobytes())  # what rclpy delivers
    header = std.Header(stamp=time_cls(sec=sec, nanosec=0), frame_id="camera")
    return sensor.Image(header=header, **fields)


def image_subscriptions(node: Any) -> list[Any]:
    """The node's image subscriptions, in stream order (without those of camera_info)."""
    info = sys.modules["sensor_msgs.msg"].CameraInfo
    return [s for s in node.subscriptions if s.msg_type is not info]


def info_subscriptions(node: Any) -> dict[str, Any]:
    """The node's camera_info subscriptions by topic."""
    info = sys.modules["sensor_msgs.msg"].CameraInfo
    return {s.topic_name: s for s in node.subscriptions if s.msg_type is info}


def test_node_wiring_declares_parameters_and_topics(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("checkpoint", "none")]
    )
    try:
        assert set(node.parameters) == {spec.name for spec in PARAMETERS}
        assert node.parameters["input_size"] == [0, 0]
        descriptor = node.descriptors["keyframe_interval"]
        assert descriptor.type == 2 and "(live)" in descriptor.description
        assert not descriptor.read_only and node.descriptors["device"].read_only
        assert node.publishers["~/labels"].qos.depth == 100
        assert node.publishers["~/labels"].qos.reliability == "reliable"
        assert "one of ['dis'" in node.descriptors["flow_method"].additional_constraints
        (subscription,) = image_subscriptions(node)
        assert subscription.topic_name == "image" and subscription.qos.depth == 5
        assert subscription.qos.reliability == "best_effort"
        assert subscription.qos is sys.modules["rclpy.qos"].qos_profile_sensor_data  # rclpy's
        assert {"~/labels", "~/color", "~/overlay", "~/scores", "~/stats", "/diagnostics"} <= set(
            node.publishers
        )
        assert node.timers[0].period == 1.0
        # The warning about random weights is for models the node builds, not injected ones.
        assert not any("RANDOM WEIGHTS" in m for _, m in node.logger.records)
    finally:
        node.destroy_node()
    assert node.destroyed and not node._worker.is_alive()


def test_node_wiring_segments_frames_and_survives_bad_ones(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("checkpoint", "none"), param("publish_scores", True)],
    )
    labels_pub, stats_pub = node.publishers["~/labels"], node.publishers["~/stats"]
    callback = image_subscriptions(node)[0].callback
    try:
        callback(_stand_in_image(node_module, frame(0), "bgr8", sec=100))
        assert wait_until(lambda: len(labels_pub.sent) == 1)
        bad = _stand_in_image(node_module, frame(1), sec=101)
        bad.encoding = "rgb9"
        callback(bad)
        assert wait_until(lambda: node._processor.errors("default").conversion == 1)
        callback(_stand_in_image(node_module, frame(2), "yuv422", sec=102))
        assert wait_until(lambda: len(labels_pub.sent) == 2 and len(stats_pub.sent) == 2)

        labels = labels_pub.sent[0]
        assert labels.encoding == "mono8" and (labels.height, labels.width) == (H, W)
        assert labels.header.frame_id == "camera" and labels.header.stamp.sec == 100
        assert isinstance(labels.data, array.array) and labels.data.typecode == "B"
        assert image_to_array(labels).max() < 11
        color = node.publishers["~/color"].sent[0]
        assert color.encoding == "rgb8" and color.step == 3 * W
        scores = image_to_array(node.publishers["~/scores"].sent[0])
        assert scores.dtype == np.float32 and scores.shape == (H, W) and scores.max() <= 1.0
        assert len(node.publishers["~/overlay"].sent) == 2

        stats = stats_pub.sent[1]
        if node_module.SegmentationStats is None:
            stats = json.loads(stats.data)
            assert stats["header"]["frame_id"] == "camera"
        else:
            stats = vars(stats)
        assert stats["is_keyframe"] is False and stats["keyframe_age"] == 1
        assert stats["total_ms"] > 0 and stats["mode"] == "accel"
        assert any("rgb9" in m for level, m in node.logger.records if level == "warning")

        node.timers[0].callback()  # the diagnostics timer
        (status,) = node.publishers["/diagnostics"].sent[0].status
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == b"\x01"  # WARN: random weights and one bad frame
        assert values["frames_processed"] == "2" and values["conversion_errors"] == "1"
        assert values["device"] == "cpu" and status.hardware_id == "cpu"
        assert int(values["frames_received"]) == 3
        assert json.loads(node.diagnostics_json())["values"]["frames_processed"] == "2"

        # A time gap after a warning: the reset is logged at info level from the same
        # throttled log, and the frame is still published.
        callback(_stand_in_image(node_module, frame(3), sec=500))
        assert wait_until(lambda: len(labels_pub.sent) == 3)
        assert any(level == "info" and "keyframe cache reset: time gap" in m
                   for level, m in node.logger.records)
    finally:
        node.destroy_node()
    assert not node._worker.is_alive()


def test_node_wiring_live_parameters(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(segmenter=tiny_segmenter)
    try:
        assert tiny_segmenter.pipeline_config.keyframe_interval == 5  # from config/accel.yaml
        (ok,) = node.set_parameters([param("keyframe_interval", 2)])
        assert ok.successful and tiny_segmenter.pipeline_config.keyframe_interval == 2
        (ok,) = node.set_parameters([param("overlay_alpha", 0.9)])
        assert ok.successful and node._processor.options.overlay_alpha == 0.9
        (refused,) = node.set_parameters([param("device", "cuda:3")])
        assert not refused.successful and "restart the node" in refused.reason
        (refused,) = node.set_parameters([param("keyframe_interval", 0)])
        assert not refused.successful and "keyframe_interval must be in [1, 1000]" in (
            refused.reason)
        assert tiny_segmenter.pipeline_config.keyframe_interval == 2
        assert node.parameters["device"] == "auto"
    finally:
        node.destroy_node()
        tiny_segmenter.pipeline_config.keyframe_interval = 5


def test_every_parameter_descriptor_matches_config(node_module, tiny_segmenter):
    """Allowed values, ranges and descriptions of the declared descriptors are config.py's
    (CHOICES, RANGES) through the parameter table; every number has a range (rclpy enforces
    it before the node's callback: keyframe_interval used to accept 2**63 - 1)."""
    node = node_module.AccelSegmentationNode(segmenter=tiny_segmenter)
    try:
        assert set(node.descriptors) == {spec.name for spec in PARAMETERS}
        for spec in PARAMETERS:
            descriptor = node.descriptors[spec.name]
            assert descriptor.description == spec.description + (
                " (live)" if spec.live else " (restart)")
            assert descriptor.read_only == (not spec.live) and descriptor.dynamic_typing
            choices = CHOICES.get(spec.name, ())
            if choices:
                assert descriptor.additional_constraints == f"one of {list(choices)}"
            allowed = RANGES.get(spec.name)
            ranges = descriptor.integer_range or descriptor.floating_point_range
            if allowed is None:
                assert ranges == [], spec.name
                assert spec.kind not in ("int", "float"), f"{spec.name} has no range"
                continue
            (declared,) = ranges
            assert (declared.from_value, declared.to_value) == (allowed.low, allowed.high)
            assert descriptor.additional_constraints == f"in {allowed}"
            assert (descriptor.integer_range != []) == (spec.kind == "int"), spec.name
        kf = node.descriptors["keyframe_interval"].integer_range[0]
        assert (kf.from_value, kf.to_value, kf.step) == (1, 1000, 1)
        assert "each in [16, 4096]" in node.descriptors["input_size"].additional_constraints
        assert "flownet" not in repr([vars(d) for d in node.descriptors.values()])
    finally:
        node.destroy_node()


def test_rejected_parameter_changes_are_shortened_and_throttled(node_module, tiny_segmenter):
    """A 1 MB palette used to give one 1,000,169-character log line, and a burst of bad
    requests one unthrottled warning each."""
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(segmenter=tiny_segmenter)
    try:
        huge = "x" * 1_000_000
        results = [node.set_parameters([param("palette", huge)])[0] for _ in range(300)]
        assert not any(r.successful for r in results)
        assert max(len(r.reason) for r in results) < 250
        warnings = [m for level, m in node.logger.records
                    if level == "warning" and "rejected parameter change" in m]
        assert len(warnings) == 1 and len(warnings[0]) < 300, [len(w) for w in warnings]
        (ok,) = node.set_parameters([param("palette", "camvid")])
        assert ok.successful and node._processor.options.palette == "camvid"
    finally:
        node.destroy_node()


def test_node_wiring_compressed_transport(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("input_transport", "compressed"),
                             param("image_topic", "camera/image_raw")],
    )
    try:
        (subscription,) = image_subscriptions(node)
        assert subscription.topic_name == "/camera/image_raw/compressed"
        assert subscription.msg_type is sys.modules["sensor_msgs.msg"].CompressedImage
    finally:
        node.destroy_node()


def test_node_refuses_invalid_startup_parameters(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    with pytest.raises(node_module.StartupError, match="palette 'rainbow'"):
        node_module.AccelSegmentationNode(
            segmenter=tiny_segmenter, parameter_overrides=[param("palette", "rainbow")]
        )


def test_node_wiring_several_cameras(node_module, tiny_segmenter):
    """image_topics: one subscription and one set of outputs per stream, one segmenter, one
    diagnostics status per stream; a bad frame counts for its own stream only."""
    param = sys.modules["rclpy.parameter"].Parameter
    topics = ["front/image", "/cams/left/image_raw", "rear"]
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("checkpoint", "none"), param("image_topics", topics)],
    )
    try:
        assert node.stream_names == ("front", "cams/left", "rear")
        assert tiny_segmenter.streams == ("front", "cams/left", "rear")
        assert [s.topic_name for s in image_subscriptions(node)] == topics
        for stream in node.stream_names:
            for output in ("labels", "color", "overlay", "scores", "stats"):
                assert f"~/{stream}/{output}" in node.publishers
        assert "~/labels" not in node.publishers
        callbacks = {s.topic_name: s.callback for s in image_subscriptions(node)}
        callbacks["front/image"](_stand_in_image(node_module, frame(0), sec=100))
        callbacks["rear"](_stand_in_image(node_module, frame(1), "bgr8", sec=200))
        bad = _stand_in_image(node_module, frame(2), sec=300)
        bad.encoding = "rgb9"
        callbacks["/cams/left/image_raw"](bad)
        front, rear = node.publishers["~/front/labels"], node.publishers["~/rear/labels"]
        assert wait_until(lambda: len(front.sent) == 1 and len(rear.sent) == 1)
        assert wait_until(lambda: node._processor.errors("cams/left").conversion == 1)
        assert front.sent[0].header.stamp.sec == 100 and rear.sent[0].header.stamp.sec == 200
        assert node.publishers["~/cams/left/labels"].sent == []
        assert node._processor.errors("front").conversion == 0
        assert any(m.startswith("stream cams/left: skipping frame") for _, m in
                   node.logger.records)
        stats = node.publishers["~/rear/stats"].sent[0]
        index = (json.loads(stats.data) if node_module.SegmentationStats is None
                 else vars(stats))["frame_index"]
        assert index == 0  # every stream counts its own frames

        node.timers[0].callback()  # the diagnostics timer: one status per stream
        statuses = node.publishers["/diagnostics"].sent[0].status
        assert [s.name for s in statuses] == [
            "accel_segmentation: front segmentation", "accel_segmentation: cams/left "
            "segmentation", "accel_segmentation: rear segmentation"]
        values = [{kv.key: kv.value for kv in s.values} for s in statuses]
        assert [v["stream"] for v in values] == ["front", "cams/left", "rear"]
        assert [v["frames_processed"] for v in values] == ["1", "0", "1"]
        assert [v["conversion_errors"] for v in values] == ["0", "1", "0"]
        assert statuses[1].level == b"\x02"  # its only frame failed: ERROR, for it alone
        assert json.loads(node.diagnostics_json("rear"))["values"]["topic"] == "rear"
    finally:
        node.destroy_node()
    assert not node._worker.is_alive()


def test_node_wiring_several_compressed_cameras_and_clashing_names(node_module,
                                                                     tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("input_transport", "compressed"),
                             param("image_topics", ["front/image", "rear/image"])],
    )
    try:
        assert [s.topic_name for s in image_subscriptions(node)] == [
            "/front/image/compressed", "/rear/image/compressed"]
    finally:
        node.destroy_node()
    with pytest.raises(node_module.StartupError, match="both give the stream name 'front'"):
        node_module.AccelSegmentationNode(
            segmenter=tiny_segmenter,
            parameter_overrides=[param("image_topics", ["front/image", "front/image_raw"])],
        )
    # An unset array (rcl's reading of `[]`) is one stream on image_topic, as before.
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("image_topics", None)])
    try:
        assert [s.topic_name for s in image_subscriptions(node)] == ["image"]
        assert tiny_segmenter.streams == ("default",) and "~/labels" in node.publishers
    finally:
        node.destroy_node()


# --- camera_info and label_info ----------------------------------------------------------------


def _stand_in_camera_info(height: int, width: int, sec: int = 1) -> Any:
    sensor, std = sys.modules["sensor_msgs.msg"], sys.modules["std_msgs.msg"]
    time_cls = sys.modules["builtin_interfaces.msg"].Time
    info = sensor.CameraInfo(height=height, width=width, distortion_model="plumb_bob",
                             d=[0.1, -0.2, 0.0, 0.0, 0.0])
    info.k = [200.0, 0.0, width / 2, 0.0, 200.0, height / 2, 0.0, 0.0, 1.0]
    info.header = std.Header(stamp=time_cls(sec=sec, nanosec=5), frame_id="calibration")
    return info


def _label_info(node_module: Any, msg: Any) -> dict[str, Any]:
    """A ~/label_info message's fields, from LabelInfo or its JSON fallback."""
    if node_module.LabelInfo is None:
        return json.loads(msg.data)
    fields = dict(vars(msg))
    fields["class_map"] = [{"class_id": c.class_id, "class_name": c.class_name}
                           for c in msg.class_map]
    fields["colors"] = list(msg.colors)
    return fields


def test_node_wiring_camera_info_follows_each_labels_message(node_module, tiny_segmenter):
    """camera_info beside the (resolved) image topic; nothing and one info line until one
    arrives; then the newest one with each labels message's header, a size mismatch warned
    about (throttled) and still passed on."""
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("image_topic", "cam/image_raw")],
        namespace="/robot")
    labels, infos = node.publishers["~/labels"], node.publishers["~/camera_info"]
    (image,) = image_subscriptions(node)
    (info_subscription,) = info_subscriptions(node).values()
    try:
        assert info_subscription.topic_name == "/robot/cam/camera_info"
        assert info_subscription.qos.reliability == "best_effort"  # takes either kind of driver
        assert infos.qos.reliability == labels.qos.reliability
        assert infos.qos.depth == 10 * labels.qos.depth == 1000  # small: a deeper history
        stats = node.publishers["~/stats"]  # published last: the frame's camera_info is done
        for sec in (100, 101):  # no camera_info yet: nothing, and one line however many frames
            image.callback(_stand_in_image(node_module, frame(sec), sec=sec))
            assert wait_until(lambda s=sec: len(stats.sent) == s - 99)
        assert infos.sent == []
        notes = [m for level, m in node.logger.records if "no camera_info" in m]
        assert notes == ["no camera_info on /robot/cam/camera_info yet: ~/camera_info follows "
                         "the labels once one arrives"]
        assert ("info", notes[0]) in node.logger.records

        calibration = _stand_in_camera_info(H, W)
        info_subscription.callback(calibration)
        for sec in (102, 103):
            image.callback(_stand_in_image(node_module, frame(sec), sec=sec))
            assert wait_until(lambda s=sec: len(infos.sent) == s - 101)
        for label_msg, info in zip(labels.sent[2:], infos.sent, strict=True):
            assert info.header is label_msg.header  # same stamp and frame_id
            assert (info.height, info.width, info.k) == (H, W, calibration.k)
            assert info.distortion_model == "plumb_bob" and info.d == calibration.d
        assert calibration.header.frame_id == "calibration"  # the received one is untouched
        assert not any(level == "warning" for level, _ in node.logger.records)

        info_subscription.callback(_stand_in_camera_info(2 * H, 2 * W))  # another resolution
        for sec in (104, 105):
            image.callback(_stand_in_image(node_module, frame(sec), sec=sec))
            assert wait_until(lambda s=sec: len(infos.sent) == s - 101)
        assert (infos.sent[-1].height, infos.sent[-1].width) == (2 * H, 2 * W)  # passed on
        assert infos.sent[-1].header.stamp.sec == 105
        warnings = [m for level, m in node.logger.records if level == "warning"]
        assert warnings == [f"camera_info describes {2 * W}x{2 * H} images but the image is "
                            f"{W}x{H}; passed on unchanged"]  # throttled: once per 5 s
    finally:
        node.destroy_node()


def test_node_wiring_camera_info_per_stream(node_module, tiny_segmenter):
    """Several cameras: each stream's camera_info beside its own topic, out on its own
    ~/<stream>/camera_info; compressed transport takes it beside the image, not the
    /compressed topic."""
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("image_topics", ["front/image", "/cams/left/image_raw"]),
                             param("input_transport", "compressed")])
    try:
        assert list(info_subscriptions(node)) == ["/front/camera_info", "/cams/left/camera_info"]
        assert {"~/front/camera_info", "~/cams/left/camera_info"} <= set(node.publishers)
        assert "~/camera_info" not in node.publishers
        assert any("stream front: subscribed to /front/image/compressed (CompressedImage) and "
                   "/front/camera_info (CameraInfo)" in m for _, m in node.logger.records)
    finally:
        node.destroy_node()


def test_node_wiring_label_info_at_start_and_on_palette_change(node_module, tiny_segmenter):
    """~/label_info: transient local, reliable, depth 1; published once at start-up and again
    only when a live change alters it (palette), as LabelInfo or its JSON fallback."""
    from accel_ros.palette import class_names, get_palette

    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(segmenter=tiny_segmenter)
    publisher = node.publishers["~/label_info"]
    try:
        assert (publisher.qos.durability, publisher.qos.reliability, publisher.qos.depth) == (
            "transient_local", "reliable", 1)
        (first,) = publisher.sent
        fields = _label_info(node_module, first)
        config = tiny_segmenter.model_config
        assert [c["class_name"] for c in fields["class_map"]] == list(
            class_names(config.num_classes, config.class_names))
        assert [c["class_id"] for c in fields["class_map"]] == list(range(11))
        assert fields["class_map"][0]["class_name"] == "sky"
        assert fields["palette"] == "camvid_cityscapes" and fields["ignore_id"] == 255
        assert fields["colors"] == get_palette("camvid_cityscapes").reshape(-1).tolist()
        assert fields["resize_mode"] == "pad" and fields["threshold"] == 0.0
        (ok,) = node.set_parameters([param("overlay_alpha", 0.3)])  # does not alter it
        assert ok.successful and len(publisher.sent) == 1
        (ok,) = node.set_parameters([param("palette", "camvid")])
        assert ok.successful and len(publisher.sent) == 2
        fields = _label_info(node_module, publisher.sent[1])
        assert fields["palette"] == "camvid"
        assert fields["colors"] == get_palette("camvid").reshape(-1).tolist()
        (ok,) = node.set_parameters([param("palette", "camvid")])  # unchanged: not again
        assert ok.successful and len(publisher.sent) == 2
    finally:
        node.destroy_node()


def _label_info_header(node_module: Any, msg: Any) -> tuple[str, int]:
    """(frame_id, stamp seconds) of a ~/label_info message, LabelInfo or JSON."""
    if node_module.LabelInfo is None:
        header = json.loads(msg.data)["header"]
        return header["frame_id"], header["stamp"]["sec"]
    return msg.header.frame_id, msg.header.stamp.sec


def test_node_and_segment_name_describe_and_draw_a_camera_alike(node_module, tiny_segmenter,
                                                               tmp_path):
    """One frame through the node and through `accel-ros segment` (to a bag, then to PNGs): the
    same output names per camera (io.topics), the same LabelInfo (fields, and the camera's
    frame_id once a frame came) and the same colour image and overlay for the same labels."""
    from test_replay import read_bag

    from accel_ros.io import video
    from accel_ros.io.topics import BAG_OUTPUTS, LABEL_INFO, NODE_OUTPUTS
    from accel_ros.replay import runner as replay
    from accel_ros.replay.sources import DEFAULT_TOPIC
    from accel_ros.stream.segmenter import DEFAULT_STREAM

    param = sys.modules["rclpy.parameter"].Parameter
    rgb = frame(7)
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("palette", "camvid"),
                                                       param("overlay_alpha", 0.3)])
    try:
        topics = set(node.publishers)
        infos = node.publishers["~/label_info"].sent
        assert _label_info_header(node_module, infos[0])[0] == ""  # no frame came yet
        image_subscriptions(node)[0].callback(_stand_in_image(node_module, rgb, sec=100))
        assert wait_until(lambda: len(node.publishers["~/stats"].sent) == 1)
        published = {kind: node.publishers[f"~/{kind}"].sent[0]
                     for kind in ("labels", "color", "overlay")}
    finally:
        node.destroy_node()
    assert {f"~/{kind}" for kind in (*NODE_OUTPUTS, LABEL_INFO)} <= topics
    assert len(infos) == 2  # again, with the camera's header
    assert _label_info_header(node_module, infos[1]) == ("camera", 100)
    node_info = _label_info(node_module, infos[1])

    folder = tmp_path / "frames"
    folder.mkdir()
    video.write_image_rgb(folder / "f.png", rgb)
    tiny_segmenter.configure_streams([DEFAULT_STREAM])
    tiny_segmenter.reset(stream=None)  # the node's keyframe is not the replay's
    replay.segment(folder, tmp_path / "out", tiny_segmenter, palette="camvid",
                   output_format="bag", frame_id="camera", quiet=True)
    bag = read_bag(tmp_path / "out")
    assert set(bag) == {DEFAULT_TOPIC} | {f"{DEFAULT_TOPIC}/{kind}" for kind in BAG_OUTPUTS}
    assert set(BAG_OUTPUTS) - {LABEL_INFO} <= set(NODE_OUTPUTS)
    (_, bag_info, _), = bag[f"{DEFAULT_TOPIC}/{LABEL_INFO}"]
    assert (bag_info.header.frame_id, bag_info.header.stamp.sec) == ("camera", 0)
    assert [(c.class_id, c.class_name) for c in bag_info.class_map] == [
        (c["class_id"], c["class_name"]) for c in node_info["class_map"]]
    assert list(bytes(bag_info.colors)) == list(node_info["colors"])
    for field in ("threshold", "ignore_id", "palette", "model_hash", "input_height",
                  "input_width", "resize_mode"):
        assert getattr(bag_info, field) == node_info[field], field
    assert node_info["palette"] == "camvid"

    # The same frame gives the same labels, so the same colour image and overlay.
    (_, labels, _), = bag[f"{DEFAULT_TOPIC}/labels"]
    (_, color, _), = bag[f"{DEFAULT_TOPIC}/color"]
    assert np.array_equal(image_to_array(labels), image_to_array(published["labels"]))
    assert np.array_equal(image_to_array(color), image_to_array(published["color"]))
    tiny_segmenter.reset(stream=None)
    replay.segment(folder, f"{tmp_path / 'overlays'}/", tiny_segmenter, palette="camvid",
                   overlay_alpha=0.3, quiet=True)
    assert np.array_equal(video.read_image_rgb(tmp_path / "overlays" / "f.png"),
                          image_to_array(published["overlay"]))


# --- the managed (lifecycle) node ---------------------------------------------------------------


def test_lifecycle_node_transitions(lifecycle_module, tiny_segmenter):
    """Unconfigured: nothing but the node. configure: parameters and model, no topics.
    activate: topics and worker. deactivate: nothing published, model kept. cleanup: model
    dropped. Live parameters reach the model whatever the state."""
    param = sys.modules["rclpy.parameter"].Parameter
    success = sys.modules["rclpy.lifecycle"].TransitionCallbackReturn.SUCCESS
    node = lifecycle_module.AccelSegmentationLifecycleNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("keyframe_interval", 3)])
    try:
        assert node.state == "unconfigured" and node.segmenter is None
        assert (node.parameters, node.publishers, node.subscriptions, node.timers) == (
            {}, {}, [], [])
        assert node.change_state("configure") is success and node.state == "inactive"
        assert node.segmenter is tiny_segmenter and set(node.parameters) == {
            spec.name for spec in PARAMETERS}
        assert tiny_segmenter.pipeline_config.keyframe_interval == 3
        assert (node.publishers, node.subscriptions, node.timers) == ({}, [], [])

        assert node.change_state("activate") is success and node.state == "active"
        first = node.publishers["~/labels"]
        assert len(node.publishers["~/label_info"].sent) == 1 and len(node.timers) == 1
        image_subscriptions(node)[0].callback(_stand_in_image(lifecycle_module, frame(0)))
        assert wait_until(lambda: len(first.sent) == 1)

        assert node.change_state("deactivate") is success and node.state == "inactive"
        assert (node.publishers, node.subscriptions, node.timers) == ({}, [], [])
        assert first.destroyed and not node._worker.is_alive()
        assert node.segmenter is tiny_segmenter  # the model stays
        (ok,) = node.set_parameters([param("keyframe_interval", 2)])  # live, while inactive
        assert ok.successful and tiny_segmenter.pipeline_config.keyframe_interval == 2

        assert node.change_state("activate") is success
        labels, stats = node.publishers["~/labels"], node.publishers["~/stats"]
        assert labels is not first and len(node.publishers["~/label_info"].sent) == 1
        callback = image_subscriptions(node)[0].callback
        for sec in (200, 201):
            callback(_stand_in_image(lifecycle_module, frame(sec), sec=sec))
            assert wait_until(lambda s=sec: len(stats.sent) == s - 199)
        ages = [(json.loads(m.data) if sys.modules["accel_ros.ros.node"].SegmentationStats is None
                 else vars(m))["keyframe_age"] for m in stats.sent]
        assert ages == [0, 1]  # the cache restarted at activation
        assert first.sent and len(first.sent) == 1  # nothing on the old one

        assert node.change_state("deactivate") is success
        assert node.change_state("cleanup") is success and node.state == "unconfigured"
        assert node.segmenter is None and node.publishers == {}
        assert node.change_state("configure") is success  # parameters kept, not redeclared
        assert tiny_segmenter.pipeline_config.keyframe_interval == 2
        assert node.change_state("activate") is success
        worker = node._worker
        assert node.change_state("shutdown") is success and node.state == "finalized"
        assert not worker.is_alive() and node.segmenter is None and node.publishers == {}
        records = [m for level, m in node.logger.records]
        assert "finalized (from active)" in records
        assert not any(level == "error" for level, _ in node.logger.records)
    finally:
        node.destroy_node()
        tiny_segmenter.pipeline_config.keyframe_interval = 5


@pytest.mark.parametrize("transitions", [[], ["configure"]], ids=["unconfigured", "inactive"])
def test_lifecycle_node_shuts_down_from_any_state(lifecycle_module, tiny_segmenter,
                                                  transitions):
    success = sys.modules["rclpy.lifecycle"].TransitionCallbackReturn.SUCCESS
    node = lifecycle_module.AccelSegmentationLifecycleNode(segmenter=tiny_segmenter)
    try:
        for transition in transitions:
            assert node.change_state(transition) is success
        assert node.change_state("shutdown") is success and node.state == "finalized"
        assert node.segmenter is None and node.publishers == {}
    finally:
        node.destroy_node()


def test_lifecycle_node_failed_configuration_stays_unconfigured(lifecycle_module,
                                                                tiny_segmenter):
    """A bad value or a checkpoint that cannot load fails configure with one error line: the
    node stays unconfigured and alive (a supervisor decides what next)."""
    param = sys.modules["rclpy.parameter"].Parameter
    failure = sys.modules["rclpy.lifecycle"].TransitionCallbackReturn.FAILURE
    node = lifecycle_module.AccelSegmentationLifecycleNode(
        segmenter=tiny_segmenter, parameter_overrides=[param("palette", "rainbow")])
    try:
        assert node.change_state("configure") is failure and node.state == "unconfigured"
        (error,) = [m for level, m in node.logger.records if level == "error"]
        assert error.startswith("cannot configure:") and "palette 'rainbow'" in error
    finally:
        node.destroy_node()
    node = lifecycle_module.AccelSegmentationLifecycleNode(
        parameter_overrides=[param("checkpoint", "/nonexistent/model.pt")])
    try:
        assert node.change_state("configure") is failure and node.state == "unconfigured"
        (error,) = [m for level, m in node.logger.records if level == "error"]
        assert "cannot build the segmenter" in error and node.segmenter is None
    finally:
        node.destroy_node()


def test_lifecycle_node_cleanup_frees_the_model(lifecycle_module, monkeypatch):
    """A segmenter the node built is gone after cleanup (nothing else holds it)."""
    import weakref

    from accel_ros.stream import build_segmenter

    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16)
    built = []

    def build(self):
        segmenter = build_segmenter(config, PipelineConfig(device="cpu"))
        built.append(weakref.ref(segmenter))
        return segmenter

    node_class = lifecycle_module.AccelSegmentationLifecycleNode
    monkeypatch.setattr(node_class, "_build_segmenter", build)
    success = sys.modules["rclpy.lifecycle"].TransitionCallbackReturn.SUCCESS
    node = node_class()
    try:
        for transition in ("configure", "activate", "deactivate", "cleanup"):
            assert node.change_state(transition) is success, transition
        gc.collect()
        assert len(built) == 1 and built[0]() is None
        assert node.change_state("configure") is success and len(built) == 2  # built again
        assert built[1]() is node.segmenter
    finally:
        node.destroy_node()


# --- launch file and rviz config -------------------------------------------------------------


def _launch_table(tree: ast.Module) -> ast.Tuple:
    (table,) = [
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODE_PARAMETERS"
    ]
    return table


def _launch_arguments() -> tuple[ast.Module, dict[str, str], set[str]]:
    """The launch file's AST, its NODE_PARAMETERS (name -> default) and every argument name."""
    tree = ast.parse((ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8"))
    table = _launch_table(tree)
    node_parameters = {row.elts[0].value: row.elts[1].value for row in table.elts}
    literal = {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"
        and isinstance(call.args[0], ast.Constant)
    }
    return tree, node_parameters, literal | set(node_parameters)


def test_every_launch_argument_is_a_declared_node_parameter():
    tree, node_parameters, arguments = _launch_arguments()
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    declared = {spec.name for spec in PARAMETERS}
    # Everything but the file itself and the rviz and lifecycle switches is a node parameter
    # of that name.
    assert arguments - set(node_parameters) == {"params_file", "use_rviz", "lifecycle",
                                                "autostart"}
    assert set(node_parameters) <= declared, set(node_parameters) - declared
    specs = {spec.name: spec for spec in PARAMETERS}
    for name, default in node_parameters.items():  # non-empty defaults must be valid values
        if default and specs[name].choices:
            assert default in specs[name].choices
    # Descriptions (allowed values included) come from the parameter table, not literals.
    assert "from accel_ros.ros.parameters import PARAMETER_SPECS" in (
        ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8")
    assert all(len(row.elts) == 2 for row in _launch_table(tree).elts)
    source = (ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8")
    assert '"accel_segmentation_node"' in source  # the console script of setup.py
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "accel_segmentation_node = accel_ros.ros.node:main" in setup
    assert 'NODE_NAME = "accel_segmentation"' in source
    # The parameters file applies to any node name and namespace.
    assert list(yaml.safe_load((ROOT / "config/accel.yaml").read_text())) == ["/**"]


def test_rviz_config_uses_relative_topics_remapped_by_the_launch_file():
    from accel_ros.ros.rviz import rviz_remappings

    config = yaml.safe_load((ROOT / "config" / "accel.rviz").read_text(encoding="utf-8"))
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Name"]: d["Topic"]["Value"] for d in displays}
    classes = {d["Name"]: d["Class"].removeprefix("rviz_default_plugins/") for d in displays}
    assert topics == {
        "Input": "image",  # remapped to image_topic by the launch file
        "Segmentation": "accel_segmentation/color",
        "Overlay": "accel_segmentation/overlay",
        # A Camera display finds accel_segmentation/camera_info beside its image topic.
        "Segmentation in 3D": "accel_segmentation/color",
    }
    assert classes == dict.fromkeys(topics, "Image") | {"Segmentation in 3D": "Camera"}
    # Off until the user's camera frame is in TF (the fixed frame is "camera").
    assert [d["Enabled"] for d in displays] == [True, True, True, False]
    assert not any(topic.startswith("/") for topic in topics.values())
    # The launch file points the view at the node's camera; with several, at the first one
    # (test/ros/test_launch.py runs both through `ros2 launch` with a stand-in rviz2).
    assert rviz_remappings("accel_segmentation", "/camera/image_raw") == [
        ("image", "/camera/image_raw")]
    assert rviz_remappings("accel_segmentation", "/camera/image_raw",
                           ["cams/front/image", "rear/image"]) == [
        ("image", "cams/front/image"),
        ("accel_segmentation/color", "accel_segmentation/cams/front/color"),
        ("accel_segmentation/overlay", "accel_segmentation/cams/front/overlay"),
        ("accel_segmentation/camera_info", "accel_segmentation/cams/front/camera_info")]
    assert "rviz_remappings(" in (ROOT / "launch" / "accel.launch.py").read_text()
    assert config["Visualization Manager"]["Global Options"]["Frame Rate"] == 30


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert "'.[test,ros-build]'" in ci and ci.endswith("python -m pytest -ra")
    assert f"{ci}\n" in readme


def test_model_and_tools_import_without_ros():
    """ROS is an extra (`.[ros]`): `pip install .` must give a working model and CLI."""
    import subprocess

    blocked = ["rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "rcl_interfaces",
               "lifecycle_msgs", "accel_ros_msgs", "launch", "launch_ros"]
    code = (
        f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        "import accel_ros.model, accel_ros.io.messages\n"
        "import accel_ros.ros.parameters, accel_ros.ros.processing, accel_ros.ros.diagnostics\n"
        "import accel_ros.ros.slots, accel_ros.ros.streams, accel_ros.ros.input_guard\n"
        "import accel_ros.ros.camera_info\n"
        "import accel_ros.stream.batching\n"
        "import accel_ros.ros.bag_player\n"
        "import accel_ros.cli.main\n"
        "try:\n    import accel_ros.ros.node\nexcept ImportError:\n    print('node needs ROS')\n"
        "try:\n    import accel_ros.ros.lifecycle_node\nexcept ImportError:\n"
        "    print('managed node needs ROS')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["node needs ROS", "managed node needs ROS"]
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    requires = next(
        kw.value for call in ast.walk(tree) if isinstance(call, ast.Call)
        for kw in call.keywords if kw.arg == "install_requires"
    )
    names = [elt.value for elt in requires.elts if isinstance(elt, ast.Constant)]
    assert names and not [n for n in names if n.startswith(("ros-", "colcon"))]
