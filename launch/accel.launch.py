"""Launch the Accel segmentation node, optionally with rviz2.

    ros2 launch accel_ros accel.launch.py image_topic:=/camera/image_raw device:=cuda:0
    ros2 launch accel_ros accel.launch.py params_file:=/path/my.yaml use_rviz:=false
    ros2 launch accel_ros accel.launch.py image_topics:=front/image,left/image,right/image
    ros2 launch accel_ros accel.launch.py lifecycle:=true autostart:=false

Every argument except `params_file`, `use_rviz`, `lifecycle` and `autostart` is the node
parameter of the same name (NODE_PARAMETERS); an empty value keeps the parameters file's. Their
descriptions, allowed values included, come from the node's parameter table
(accel_ros.ros.parameters). `lifecycle:=true` starts the managed node
(`accel_segmentation_lifecycle_node`); `autostart` then configures and activates it from here,
or (false) leaves it unconfigured for a lifecycle manager.

`use_rviz` (default true) starts rviz2 with config/accel.rviz where rviz2 is installed; on a
computer without it (most robots) one info line says so and the node runs alone. With several
cameras rviz2 shows the first (accel_ros.ros.rviz). Everything that can fail is looked up
before any process starts, so a launch that fails leaves no node behind; and when the
segmentation node exits (a bad parameter value, say), the launch ends with it.
"""

from __future__ import annotations

import os
import signal
import threading

from ament_index_python.packages import (
    PackageNotFoundError,
    get_package_prefix,
    get_package_share_directory,
)
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from accel_ros.ros.parameters import PARAMETER_SPECS
from accel_ros.ros.rviz import rviz_remappings

PACKAGE = "accel_ros"
NODE_NAME = "accel_segmentation"
# Launch arguments passed to the node as parameters of the same name: (name, default).
NODE_PARAMETERS = (
    ("image_topic", "/camera/image_raw"),
    ("image_topics", ""),
    ("input_transport", ""),
    ("preset", ""),
    ("checkpoint", ""),
    ("device", ""),
)
# A launch argument is a string: how it becomes the parameter, where that needs saying.
_AS_STRING = {"image_topics": "comma-separated (front/image,left/image)"}


def _description(name: str) -> str:
    """The parameter's own description and allowed values."""
    spec = PARAMETER_SPECS[name]
    parts = [_AS_STRING.get(name, ""), spec.description, spec.constraints()]
    return "; ".join(part for part in parts if part)


def _flag(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1")


def _segmentation(context, parameters: list) -> list:
    """The node, or the managed node with (when `autostart`) its configure and activate."""
    common = dict(package=PACKAGE, name=NODE_NAME, output="screen", parameters=parameters)
    if not _flag(context, "lifecycle"):
        node = Node(executable="accel_segmentation_node", **common)
        return [node, _end_with(node)]
    node = LifecycleNode(executable="accel_segmentation_lifecycle_node", namespace="", **common)
    if not _flag(context, "autostart"):
        return [node, _end_with(node)]

    def transition(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    # Activate after the configuration only: a supervisor's later deactivate must hold.
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[transition(Transition.TRANSITION_ACTIVATE)]))
    return [node, _end_with(node), activate, transition(Transition.TRANSITION_CONFIGURE)]


def _end_with(node: Node) -> RegisterEventHandler:
    """End the launch when `node` exits: a node that cannot start (a bad parameter value) must
    not leave rviz2 running alone. Not when the launch is ending already: a second Shutdown
    event makes launch_ros fail ("Cannot shutdown a ROS adapter that is not running")."""

    def on_exit(event, context) -> list:
        return [] if context.is_shutdown else [Shutdown(reason=f"{NODE_NAME} exited")]

    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


def _rviz(context, overrides: dict) -> list:
    """rviz2 with config/accel.rviz, or one info line where rviz2 is not installed."""
    if not _flag(context, "use_rviz"):
        return []
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        return [LogInfo(msg="rviz2 is not installed: the segmentation runs without it "
                            "(use_rviz:=false hides this line)")]
    remappings = rviz_remappings(NODE_NAME, overrides.get("image_topic", "image"),
                                 overrides.get("image_topics", ()))
    config = os.path.join(get_package_share_directory(PACKAGE), "config", "accel.rviz")
    return [Node(package="rviz2", executable="rviz2", name="accel_rviz",
                 arguments=["-d", config], remappings=remappings)]


def _nodes(context, *args, **kwargs):  # OpaqueFunction passes extra args
    overrides = {}
    for name, _ in NODE_PARAMETERS:
        value = LaunchConfiguration(name).perform(context).strip()
        if value and name == "image_topics":  # a launch argument is a string: split it
            overrides[name] = [topic.strip() for topic in value.split(",") if topic.strip()]
        elif value:
            overrides[name] = value
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"params_file {params_file!r} is not a file")
    # Everything that can fail is decided before the node's process is started.
    viewer = _rviz(context, overrides)
    return _segmentation(context, [params_file, overrides]) + viewer


def _keep_sigint_for_launch() -> None:
    """Let SIGINT reach launch only through its own handler (signal.set_wakeup_fd). Python's
    default handler also raises KeyboardInterrupt in the main thread, and when that lands while
    launch reads its wakeup socket the signal is lost: on a busy CPU, SIGINT to `ros2 launch`
    was ignored and the node kept running. A handler that does nothing keeps the wakeup path
    (launch ignores KeyboardInterrupt anyway)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: None)


def generate_launch_description() -> LaunchDescription:
    _keep_sigint_for_launch()
    share = get_package_share_directory(PACKAGE)
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=_description(name))
        for name, default in NODE_PARAMETERS
    ]
    return LaunchDescription(
        [
            *arguments,
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "accel.yaml"),
                description="ROS 2 parameters file for the accel_segmentation node",
            ),
            DeclareLaunchArgument(
                "use_rviz", default_value="true",
                description="start rviz2 with config/accel.rviz where it is installed",
            ),
            DeclareLaunchArgument(
                "lifecycle", default_value="false",
                description="start the managed (lifecycle) node, accel_segmentation_lifecycle_node",
            ),
            DeclareLaunchArgument(
                "autostart", default_value="true",
                description="with lifecycle:=true, configure and activate it at once (false: "
                "leave it unconfigured for a lifecycle manager)",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
