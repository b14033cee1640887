"""`ros2 launch`, `ros2 run` and the `ros2` command line, as a ROS 2 user runs them.

The launch system and ros2cli come from a ROS 2 installation or, where there is none, from their
Jazzy sources installed into the venv (`../shared/ros2-cli-src/install.sh build/ros2-cli`, which
.ci/run runs). The environment is a user's after sourcing: the repository's colcon install over
composition_interfaces (which launch_ros imports). Each test has a DDS domain of its own, puts
frames in and waits for labels out, then stops the launch or run with SIGINT: exit status 0, no
`[ERROR]` line, and none of the processes it started left running. The `ros2` commands run
with `--no-daemon` where they take it, so that no ROS 2 daemon outlives the tests.

rviz2 is not installable here. Where a test needs it, a stand-in `rviz2` package takes its place:
it reads the `-d` configuration as rviz2 does and subscribes to every display's topic (after the
remappings the launch file gives it), with the display's message type and QoS, and reports what
each display received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ros_harness import (
    NODE,
    ROOT,
    STARTUP_TIMEOUT,
    H,
    NoReplyError,
    Probe,
    RosProcess,
    Session,
    W,
    camera_info_msg,
    domains_used,
    fresh_domain,
    image_msg,
    image_type,
    require,
    sourced_env,
    wait_for,
)

RVIZ_CONFIG = ROOT / "config" / "accel.rviz"
# Where .ci/run (and docs/development.md) installs the ROS 2 command line's message package.
ROS2_CLI_PREFIX = ROOT / "build" / "ros2-cli" / "install"
COMMAND_TIMEOUT = 90.0  # one `ros2` command: a Python start-up and a DDS discovery, CPU shared


@pytest.fixture(scope="session")
def ros2_env(colcon_install) -> dict[str, str]:
    """A user's environment after sourcing ROS 2 and the workspace, with `ros2` on PATH."""
    for module in ("launch", "launch_ros", "ros2cli", "ros2launch"):
        require(module)
    installs = [ROS2_CLI_PREFIX] if (ROS2_CLI_PREFIX / "setup.bash").is_file() else []
    # The venv of the ROS 2 wheels is an ament prefix too (std_msgs, ...), as README says.
    prefixes = [sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")]
    env = sourced_env(*installs, colcon_install, env=dict(
        os.environ, AMENT_PREFIX_PATH=os.pathsep.join(p for p in prefixes if p)))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    found = subprocess.run(["ros2", "pkg", "prefix", "composition_interfaces"], env=env,
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if found.returncode != 0:
        require("composition_interfaces")  # skips, or fails under CI=true, with the reason
    return env


def ros2(env: dict[str, str], domain: int, *args: str, repeatable: bool = True,
         timeout: float = COMMAND_TIMEOUT) -> str:
    """The output (stdout, then stderr) of `ros2 <args>` on DDS domain `domain`; fails on a
    non-zero exit.

    Without a daemon a command sees the graph it discovered in its first half second: "Node not
    found" on a busy machine means nothing was sent, and the command runs again. A
    `repeatable` command that gets no answer in time runs again too (a reply lost, see
    ros_harness.Probe.call); the others raise NoReplyError. All until `timeout`.
    """
    deadline = time.monotonic() + timeout
    env = dict(env, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    while True:
        left = deadline - time.monotonic()
        try:
            result = subprocess.run(["ros2", *args], env=env, capture_output=True, text=True,
                                    timeout=max(1.0, min(left, 30.0) if repeatable else left),
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            if not repeatable or time.monotonic() >= deadline:
                raise NoReplyError(f"`ros2 {' '.join(args)}` gave no answer in time") from None
            continue
        output = result.stdout + result.stderr
        if "Node not found" in output and time.monotonic() < deadline:
            continue
        assert result.returncode == 0, f"ros2 {' '.join(args)}:\n{output}"
        return output


def descendants(pid: int) -> set[int]:
    """The pids of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Ros2Command(RosProcess):
    """`ros2 launch ...` or `ros2 run ...` as a user starts it, in a process group of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, *, domain: int) -> None:
        super().__init__(["ros2", *args], env, log, domain=domain)
        self.started: set[int] = set()

    def note_processes(self) -> set[int]:
        """Remember every process the command has started so far (for `assert_stopped`)."""
        self.started |= descendants(self.proc.pid)
        return self.started

    def stop_cleanly(self, group: bool = False) -> None:
        """SIGINT (`group`: to the whole group, as Ctrl-C in a terminal): exit status 0, no
        `[ERROR]` line or traceback, and none of its processes left running."""
        self.note_processes()
        code = self.stop(signal.SIGINT, group=group)
        output = self.output()
        assert code == 0, f"exit status {code}:\n{output}"
        assert "[ERROR]" not in output and "Traceback" not in output, output
        assert "process has died" not in output, output
        wait_for(lambda: not [p for p in self.started if running(p)], 30.0,
                 f"the processes {sorted(self.started)} to end:\n{output}")


@pytest.fixture
def domain() -> int:
    return fresh_domain()


@pytest.fixture
def probe(rclpy_module, domain):
    probe = Probe(rclpy_module, domain)
    yield probe
    probe.close()


def launch(ros2_env: dict[str, str], domain: int, log: Path, *arguments: str,
           env: dict[str, str] | None = None) -> Ros2Command:
    return Ros2Command(["launch", "accel_ros", "accel.launch.py", *arguments], env or ros2_env,
                       log, domain=domain)


def labels_out(command: Ros2Command, probe: Probe, stats_class: type, frames: list,
               input_topic: str = "/camera/image_raw", node: str = NODE) -> dict[str, Any]:
    """Frames in on `input_topic` until one comes back on all four outputs of `node`; that
    frame's outputs."""
    session = Session(command, probe, node, input_topic, image_type(), stats_class)
    session.warm_up(lambda stamp: image_msg(frames[0], "rgb8", stamp))
    command.note_processes()
    out = session.send(image_msg(frames[1], "rgb8", session.clock.next()))
    assert (out["labels"].height, out["labels"].width) == (H, W)
    assert out["labels"].encoding == "mono8" and out["stats"].total_ms > 0
    return out


@contextlib.contextmanager
def camera(probe: Probe, image_topic: str, frames: list[np.ndarray],
           rate: float = 4.0) -> Iterator[None]:
    """A camera driver in a thread: frames on `image_topic` and a calibration on the
    camera_info beside it, at `rate` Hz, stamped with the wall clock."""
    images = probe.publisher(image_type(), image_topic)
    info = probe.publisher(type(camera_info_msg(H, W)), image_topic.rsplit("/", 1)[0]
                           + "/camera_info")
    stop = threading.Event()

    def run() -> None:
        index = 0
        while not stop.wait(1.0 / rate):
            msg = image_msg(frames[index % len(frames)], "rgb8", divmod(time.time_ns(), 10**9))
            calibration = camera_info_msg(H, W)
            calibration.header = msg.header
            info.publish(calibration)
            images.publish(msg)
            index += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# --- a stand-in for rviz2 ---------------------------------------------------------------------

FAKE_RVIZ = '''\
#!{python}
"""rviz2 stand-in: subscribes to every display of the -d configuration, as rviz2 would."""
import json, os, signal, sys, threading
import rclpy, yaml
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

config = yaml.safe_load(open(sys.argv[sys.argv.index("-d") + 1]))
rclpy.init(args=sys.argv)
node = rclpy.create_node("rviz")
lock, report = threading.Lock(), []
def camera_info_topic(image_topic):  # image_transport's rule, as rviz2's Camera display uses it
    return image_topic.rsplit("/", 1)[0] + "/camera_info" if "/" in image_topic else "camera_info"
KINDS = {{"rviz_default_plugins/Image": lambda t: [(t, Image)],
         "rviz_default_plugins/Camera":
             lambda t: [(t, Image), (camera_info_topic(t), CameraInfo)]}}
for display in config["Visualization Manager"]["Displays"]:
    topic = display["Topic"]
    policy = {{"Best Effort": ReliabilityPolicy.BEST_EFFORT}}.get(topic["Reliability Policy"],
                                                              ReliabilityPolicy.RELIABLE)
    for name, kind in KINDS.get(display["Class"], lambda t: [(t, None)])(topic["Value"]):
        entry = {{"display": display["Name"], "class": display["Class"], "name": name,
                 "type": kind and kind.__module__.split(".")[0] + "/msg/" + kind.__name__,
                 "topic": None, "received": 0}}
        report.append(entry)
        if kind is None:
            continue
        def count(msg, entry=entry):
            with lock:
                entry["received"] += 1
        entry["topic"] = node.create_subscription(
            kind, name, count, QoSProfile(depth=topic["Depth"], reliability=policy)).topic_name
def write():
    with lock:
        text = json.dumps(report)
    with open(os.environ["FAKE_RVIZ_REPORT"] + ".tmp", "w") as f:
        f.write(text)
    os.replace(os.environ["FAKE_RVIZ_REPORT"] + ".tmp", os.environ["FAKE_RVIZ_REPORT"])
node.create_timer(0.2, write)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
# Ctrl-C reaches it twice (the terminal's, then launch's): as the node does, it ignores the
# second once it is stopping, or that one kills it ("process has died [exit code -2]").
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
write()
'''


@pytest.fixture(scope="session")
def fake_rviz(tmp_path_factory) -> Path:
    """The prefix of a stand-in `rviz2` package (add it to AMENT_PREFIX_PATH)."""
    prefix = tmp_path_factory.mktemp("fake_rviz")
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").touch()
    executable = prefix / "lib" / "rviz2" / "rviz2"
    executable.parent.mkdir(parents=True)
    executable.write_text(FAKE_RVIZ.format(python=sys.executable))
    executable.chmod(0o755)
    return prefix


def with_rviz(ros2_env: dict[str, str], fake_rviz: Path, report: Path) -> dict[str, str]:
    return dict(ros2_env, FAKE_RVIZ_REPORT=str(report),
                AMENT_PREFIX_PATH=os.pathsep.join([str(fake_rviz),
                                                   ros2_env.get("AMENT_PREFIX_PATH", "")]))


def rviz_report(report: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError):
        return []


def assert_rviz_displays(report: Path, expected: dict[str, str], timeout: float = 60.0) -> None:
    """Every display of config/accel.rviz subscribed to the topic `expected` gives for its
    configured name, and received messages of its type there."""
    entries = wait_for(lambda: (r := rviz_report(report)) and all(e["received"] for e in r) and r,
                       timeout, f"every rviz display to receive a message: {rviz_report(report)}")
    displays = yaml.safe_load(RVIZ_CONFIG.read_text())["Visualization Manager"]["Displays"]
    assert {e["display"] for e in entries} == {d["Name"] for d in displays}
    assert {e["name"]: e["topic"] for e in entries} == expected, entries
    assert all(e["type"] in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo")
               for e in entries), entries


# --- ros2 launch ------------------------------------------------------------------------------


def test_default_launch_runs_without_rviz2(ros2_env, domain, probe, stats_class, frames,
                                           tmp_path):
    """`ros2 launch accel_ros accel.launch.py` with its defaults (the shipped model, rviz2
    asked for) on a computer without rviz2: one info line, the node segments
    /camera/image_raw; Ctrl-C in the terminal (SIGINT to the whole group) ends everything."""
    command = launch(ros2_env, domain, tmp_path / "launch.log")
    try:
        out = labels_out(command, probe, stats_class, frames)
        assert out["stats"].mode == "accel"
        output = command.output()
        assert output.count("rviz2 is not installed") == 1, output
        assert "model from checkpoint default" in output, output
        command.stop_cleanly(group=True)
    finally:
        command.kill()


def test_launch_with_several_cameras_and_rviz(ros2_env, fake_rviz, domain, probe, stats_class,
                                              tiny_checkpoint, frames, tmp_path):
    """`image_topics:=front/image,cams/left/image_raw`: one node, each camera's labels on
    ~/<stream>/labels; rviz2 (the stand-in) is started with config/accel.rviz pointed at the
    first camera, and every display receives what it shows."""
    report = tmp_path / "rviz.json"
    command = launch(ros2_env, domain, tmp_path / "launch.log",
                     "image_topics:=front/image,cams/left/image_raw",
                     f"checkpoint:={tiny_checkpoint}",
                     env=with_rviz(ros2_env, fake_rviz, report))
    try:
        for stream, topic in (("front", "/front/image"), ("cams/left", "/cams/left/image_raw")):
            labels_out(command, probe, stats_class, frames, topic, f"{NODE}/{stream}")
        assert "rviz2 is not installed" not in command.output()
        with camera(probe, "/front/image", frames):
            assert_rviz_displays(report, {
                "image": "/front/image",
                "accel_segmentation/color": "/accel_segmentation/front/color",
                "accel_segmentation/overlay": "/accel_segmentation/front/overlay",
                "accel_segmentation/camera_info": "/accel_segmentation/front/camera_info"})
        command.stop_cleanly()
    finally:
        command.kill()


def test_lifecycle_launch_with_autostart_and_rviz(ros2_env, fake_rviz, domain, probe,
                                                  stats_class, tiny_checkpoint, frames,
                                                  tmp_path):
    """`lifecycle:=true`: the managed node, configured and activated by the launch file, says
    `active` to `ros2 lifecycle get`; rviz2 (the stand-in) shows one camera's topics; Ctrl-C in
    the terminal ends both without "process has died"."""
    report = tmp_path / "rviz.json"
    command = launch(ros2_env, domain, tmp_path / "launch.log", "lifecycle:=true",
                     f"checkpoint:={tiny_checkpoint}",
                     env=with_rviz(ros2_env, fake_rviz, report))
    try:
        labels_out(command, probe, stats_class, frames)
        assert ros2(ros2_env, domain, "lifecycle", "get", NODE, "--no-daemon").startswith(
            "active")
        with camera(probe, "/camera/image_raw", frames):
            assert_rviz_displays(report, {
                "image": "/camera/image_raw",
                "accel_segmentation/color": "/accel_segmentation/color",
                "accel_segmentation/overlay": "/accel_segmentation/overlay",
                "accel_segmentation/camera_info": "/accel_segmentation/camera_info"})
        command.stop_cleanly(group=True)
    finally:
        command.kill()


def test_lifecycle_launch_driven_by_ros2_lifecycle_set(ros2_env, domain, probe, stats_class,
                                                       tiny_checkpoint, frames, tmp_path):
    """`lifecycle:=true autostart:=false`: unconfigured and silent until `ros2 lifecycle set`
    configures and activates it; then labels out; SIGINT to the launch process ends it."""
    command = launch(ros2_env, domain, tmp_path / "launch.log", "lifecycle:=true",
                     "autostart:=false", "use_rviz:=false", f"checkpoint:={tiny_checkpoint}")
    try:
        wait_for(lambda: ("accel_segmentation", "/") in
                 probe.node.get_node_names_and_namespaces(),
                 STARTUP_TIMEOUT, f"the managed node:\n{command.output()}")
        state = ros2(ros2_env, domain, "lifecycle", "get", NODE, "--no-daemon")
        assert state.startswith("unconfigured"), state
        assert "model from" not in command.output()
        for transition, goal in (("configure", "inactive"), ("activate", "active")):
            set_state(ros2_env, domain, transition, goal)
        labels_out(command, probe, stats_class, frames)
        command.stop_cleanly()
    finally:
        command.kill()


def set_state(env: dict[str, str], domain: int, transition: str, goal: str) -> None:
    """`ros2 lifecycle set <node> <transition>`, which says "Transitioning successful"; a
    reply lost on the way is told by the state the node settles in (a transition cannot be
    requested twice)."""
    try:
        output = ros2(env, domain, "lifecycle", "set", NODE, transition, "--no-daemon",
                      repeatable=False, timeout=STARTUP_TIMEOUT)
        assert "Transitioning successful" in output, output
    except NoReplyError:
        wait_for(lambda: ros2(env, domain, "lifecycle", "get", NODE, "--no-daemon").startswith(
            goal), STARTUP_TIMEOUT, f"{NODE} {goal} after {transition}")


# --- ros2 run and the ros2 command line --------------------------------------------------------


def test_ros2_run_with_ros2_param_topic_and_interface(ros2_env, domain, probe, stats_class,
                                                      tiny_checkpoint, frames, tmp_path):
    """`ros2 run accel_ros accel_segmentation_node`: frames in, labels out; `ros2 param get`,
    `set` (a live parameter, a read-only one, a value out of range) and `describe`; `ros2 topic
    hz` on the labels; `ros2 interface show` of the stats message; Ctrl-C ends it."""
    command = Ros2Command(["run", "accel_ros", "accel_segmentation_node", "--ros-args",
                           "-r", "image:=/camera/image_raw", "-p",
                           f"checkpoint:={tiny_checkpoint}"], ros2_env,
                          tmp_path / "run.log", domain=domain)
    try:
        labels_out(command, probe, stats_class, frames)

        def param(*args: str) -> str:
            return ros2(ros2_env, domain, "param", *args, "--no-daemon")

        assert param("get", NODE, "keyframe_interval").strip() == "Integer value is: 5"
        assert param("set", NODE, "keyframe_interval", "3").strip() == "Set parameter successful"
        assert param("get", NODE, "keyframe_interval").strip() == "Integer value is: 3"
        refused = param("set", NODE, "mode", "dff")
        assert refused.startswith("Setting parameter failed") and "read-only" in refused, refused
        refused = param("set", NODE, "keyframe_interval", "0")
        assert refused.startswith("Setting parameter failed"), refused
        assert param("get", NODE, "keyframe_interval").strip() == "Integer value is: 3"
        described = param("describe", NODE, "keyframe_interval", "mode")
        assert re.search(r"Parameter name: keyframe_interval\n  Type: integer\n"
                         r"  Description: .+\n  Constraints:\n    Min value: 1\n"
                         r"    Max value: 1000\n", described), described
        assert re.search(r"Parameter name: mode\n  Type: string\n  Description: .*accel.*\n"
                         r"  Constraints:\n    Read only: true\n", described), described

        rate = topic_hz(ros2_env, domain, probe, frames, f"{NODE}/labels", tmp_path / "hz.log")
        assert 0.5 < rate < 6.0, rate  # frames at 4 Hz; a busy CPU may drop some

        shown = ros2(ros2_env, domain, "interface", "show",
                     "accel_ros_msgs/msg/SegmentationStats")
        fields = [line.split()[1] for line in shown.splitlines()
                  if line and not line[0].isspace() and not line.startswith("#")]
        assert fields == list(stats_class.get_fields_and_field_types()), shown
        command.stop_cleanly(group=True)
    finally:
        command.kill()


def topic_hz(env: dict[str, str], domain: int, probe: Probe, frames: list[np.ndarray],
             topic: str, log: Path, rate: float = 4.0) -> float:
    """The rate `ros2 topic hz <topic>` measures over 8 messages while a camera sends frames
    at `rate` Hz."""
    hz = RosProcess(["ros2", "topic", "hz", topic, "--window", "8"], env, log, domain=domain)
    try:
        with camera(probe, "/camera/image_raw", frames, rate):
            wait_for(lambda: len(re.findall(r"average rate: ", hz.output())) >= 3,
                     COMMAND_TIMEOUT, f"`ros2 topic hz {topic}`:\n{hz.output()}")
        return float(re.findall(r"average rate: ([0-9.]+)", hz.output())[-1])
    finally:
        hz.stop(signal.SIGINT, timeout=30.0)


def test_no_ros2_daemon_was_left_running():
    """The `ros2` commands above ran with --no-daemon: no ROS 2 daemon on this session's
    domains."""
    pattern = re.compile(r"_ros2_daemon .*--ros-domain-id (\d+)")
    daemons = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, NotADirectoryError, UnicodeDecodeError):
            continue
        match = pattern.search(cmdline)
        if match and int(match.group(1)) in domains_used():
            daemons.append(cmdline)
    assert not daemons, daemons
