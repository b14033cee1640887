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
import importlib
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.io.bridge import from_rgb8, image_to_array
from accel_ros.io.messages import STATS_MSG_TEXT
from accel_ros.ros.node_logic import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96


@pytest.fixture(scope="module")
def tiny_segmenter():
    import torch

    from accel_ros.model import build_segmenter

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


class _Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.records.append(("info", message))

    def warning(self, message: str) -> None:
        self.records.append(("warning", message))

    def error(self, message: str) -> None:
        self.records.append(("error", message))


class _Publisher:
    def __init__(self, msg_type: type, topic: str) -> None:
        self.msg_type, self.topic, self.sent = msg_type, topic, []

    def publish(self, msg: Any) -> None:
        assert isinstance(msg, self.msg_type), f"{self.topic}: wrong message type"
        self.sent.append(msg)


def _stand_in_modules(stats_class: type | None) -> dict[str, types.ModuleType]:
    """rclpy, rcl_interfaces, sensor_msgs, std_msgs, diagnostic_msgs: the parts node.py uses."""
    time_cls = _message("Time", sec=0, nanosec=0)
    header_cls = _message("Header", stamp=time_cls(), frame_id="")

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
            self._overrides = {p.name: p.value for p in kwargs.get("parameter_overrides", [])}
            self.parameters: dict[str, Any] = {}
            self.descriptors: dict[str, Any] = {}
            self.publishers: dict[str, _Publisher] = {}
            self.subscriptions: list[Any] = []
            self.timers: list[Any] = []
            self.parameter_callbacks: list[Any] = []
            self.logger = _Logger()
            self.destroyed = False
            self.context = types.SimpleNamespace(ok=lambda: True)
            self._namespace = kwargs.get("namespace", "")

        def resolve_topic_name(self, topic: str) -> str:
            return topic if topic.startswith("/") else f"{self._namespace}/{topic}"

        def declare_parameter(self, name: str, value: Any, descriptor: Any) -> Parameter:
            assert name not in self.parameters, f"{name} declared twice"
            self.descriptors[name] = descriptor
            self.parameters[name] = self._overrides.get(name, value)
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

        def get_logger(self) -> _Logger:
            return self.logger

        def get_clock(self) -> Clock:
            return Clock()

        def get_name(self) -> str:
            return self._name

        def destroy_node(self) -> None:
            self.destroyed = True

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
        "rclpy.parameter": module("rclpy.parameter", Parameter=Parameter),
        "rclpy.executors": module("rclpy.executors",
                                  ExternalShutdownException=type("ESE", (Exception,), {}),
                                  SingleThreadedExecutor=object),
        "rclpy.logging": module("rclpy.logging", get_logger=lambda name: _Logger()),
        "rclpy.signals": module("rclpy.signals", SignalHandlerOptions=enum(NO="no")),
        "rclpy.qos": module(
            "rclpy.qos",
            QoSProfile=lambda **kwargs: types.SimpleNamespace(**kwargs),
            HistoryPolicy=enum(KEEP_LAST="keep_last"),
            ReliabilityPolicy=enum(BEST_EFFORT="best_effort", RELIABLE="reliable"),
            DurabilityPolicy=enum(VOLATILE="volatile"),
        ),
        "rcl_interfaces": module("rcl_interfaces"),
        "rcl_interfaces.msg": module(
            "rcl_interfaces.msg",
            ParameterDescriptor=_message("ParameterDescriptor", name="", type=0,
                                         description="", additional_constraints="",
                                         read_only=False, dynamic_typing=False),
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
        modules["accel_ros_msgs.msg"] = module("accel_ros_msgs.msg",
                                               SegmentationStats=stats_class)
    return modules


def _stats_class() -> type:
    """A stand-in for the rosidl-generated class, with the fields of the .msg file."""
    fields = [line.split()[1] for line in STATS_MSG_TEXT.splitlines()
              if line.strip() and not line.startswith("#")]
    return _message("SegmentationStats", **dict.fromkeys(fields))


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
    return importlib.import_module("accel_ros.ros.node")


def _stand_in_image(mod: Any, rgb: np.ndarray, encoding: str = "rgb8", sec: int = 100) -> Any:
    sensor, std = sys.modules["sensor_msgs.msg"], sys.modules["std_msgs.msg"]
    time_cls = sys.modules["builtin_interfaces.msg"].Time
    fields = from_rgb8(rgb, encoding)
    fields["data"] = array.array("B", fields["data"].tobytes())  # what rclpy delivers
    header = std.Header(stamp=time_cls(sec=sec, nanosec=0), frame_id="camera")
    return sensor.Image(header=header, **fields)


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
        assert node.publishers["~/labels"].qos.depth == 10
        assert node.publishers["~/labels"].qos.reliability == "reliable"
        assert "one of ['dis'" in node.descriptors["flow_method"].additional_constraints
        (subscription,) = node.subscriptions
        assert subscription.topic_name == "image" and subscription.qos.depth == 5
        assert subscription.qos.reliability == "best_effort"
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
    callback = node.subscriptions[0].callback
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
        assert not refused.successful and "keyframe_interval must be >= 1" in refused.reason
        assert tiny_segmenter.pipeline_config.keyframe_interval == 2
        assert node.parameters["device"] == "auto"
    finally:
        node.destroy_node()
        tiny_segmenter.pipeline_config.keyframe_interval = 5


def test_node_wiring_compressed_transport(node_module, tiny_segmenter):
    param = sys.modules["rclpy.parameter"].Parameter
    node = node_module.AccelSegmentationNode(
        segmenter=tiny_segmenter,
        parameter_overrides=[param("input_transport", "compressed"),
                             param("image_topic", "camera/image_raw")],
    )
    try:
        (subscription,) = node.subscriptions
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
        assert [s.topic_name for s in node.subscriptions] == topics
        for stream in node.stream_names:
            for output in ("labels", "color", "overlay", "scores", "stats"):
                assert f"~/{stream}/{output}" in node.publishers
        assert "~/labels" not in node.publishers
        callbacks = {s.topic_name: s.callback for s in node.subscriptions}
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
        assert [s.topic_name for s in node.subscriptions] == [
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
        assert [s.topic_name for s in node.subscriptions] == ["image"]
        assert tiny_segmenter.streams == ("default",) and "~/labels" in node.publishers
    finally:
        node.destroy_node()


# --- launch file and rviz config -------------------------------------------------------------


def _launch_arguments() -> tuple[ast.Module, dict[str, str], set[str]]:
    """The launch file's AST, its NODE_PARAMETERS (name -> default) and every argument name."""
    tree = ast.parse((ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8"))
    (table,) = [
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODE_PARAMETERS"
    ]
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
    # Everything but the file itself and the rviz switch is a node parameter of that name.
    assert arguments - set(node_parameters) == {"params_file", "use_rviz"}
    assert set(node_parameters) <= declared, set(node_parameters) - declared
    specs = {spec.name: spec for spec in PARAMETERS}
    for name, default in node_parameters.items():  # non-empty defaults must be valid values
        if default and specs[name].choices:
            assert default in specs[name].choices
    source = (ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8")
    assert '"accel_segmentation_node"' in source  # the console script of setup.py
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "accel_segmentation_node = accel_ros.ros.node:main" in setup
    assert 'name="accel_segmentation"' in source
    # The parameters file applies to any node name and namespace.
    assert list(yaml.safe_load((ROOT / "config/accel.yaml").read_text())) == ["/**"]


def test_rviz_config_uses_relative_topics_remapped_by_the_launch_file():
    config = yaml.safe_load((ROOT / "config" / "accel.rviz").read_text(encoding="utf-8"))
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Name"]: d["Topic"]["Value"] for d in displays}
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays)
    assert topics == {
        "Input": "image",  # remapped to image_topic by the launch file
        "Segmentation": "accel_segmentation/color",
        "Overlay": "accel_segmentation/overlay",
    }
    assert not any(topic.startswith("/") for topic in topics.values())
    launch = (ROOT / "launch" / "accel.launch.py").read_text(encoding="utf-8")
    assert 'remappings=[("image", overrides.get("image_topic", "image"))]' in launch
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
               "accel_ros_msgs", "launch", "launch_ros"]
    code = (
        f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        "import accel_ros.model, accel_ros.ros.node_logic, accel_ros.io.messages\n"
        "import accel_ros.ros.bag_player\n"
        "import accel_ros.cli.main\n"
        "try:\n    import accel_ros.ros.node\nexcept ImportError:\n    print('node needs ROS')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "node needs ROS"
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    requires = next(
        kw.value for call in ast.walk(tree) if isinstance(call, ast.Call)
        for kw in call.keywords if kw.arg == "install_requires"
    )
    names = [elt.value for elt in requires.elts if isinstance(elt, ast.Constant)]
    assert names and not [n for n in names if n.startswith(("ros-", "colcon"))]
